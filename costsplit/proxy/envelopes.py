"""The proxy's own error answers, in the envelope of the API style the caller speaks.

A compatible-mode client (the OpenAI SDKs) reads ``{"error": {message, type, param, code},
"request_id"}``; a native client (the DashScope SDKs) reads ``{"code", "message",
"request_id"}`` (reference §2.4, §3.6). Where Model Studio has a code for the same condition
(``BadRequest.TooLarge``) the native answer uses it; the rest are the proxy's own codes, and
every answer carries ``X-Costsplit-Proxy-Error: <code>`` so a person can tell the proxy's
errors from Model Studio's.
"""

from __future__ import annotations

import uuid

import orjson

from costsplit.proxy.routes import NATIVE

# compatible code -> (native code, compatible type)
CODES = {
    "unknown_route": ("UnknownRoute", "invalid_request_error"),
    "unknown_path": ("UnknownPath", "invalid_request_error"),
    "request_too_large": ("BadRequest.TooLarge", "invalid_request_error"),
    "headers_too_large": ("BadRequest.HeadersTooLarge", "invalid_request_error"),
    "model_not_granted": ("Model.AccessDenied", "Model.AccessDenied"),
    "upstream_unreachable": ("UpstreamUnreachable", "upstream_error"),
    "upstream_timeout": ("UpstreamTimeout", "upstream_error"),
    "upstream_error": ("UpstreamError", "upstream_error"),
}

ERROR_HEADER = "X-Costsplit-Proxy-Error"


def error_body(style: str, code: str, message: str, request_id: str | None = None) -> bytes:
    """The JSON body of a proxy error in ``style`` (``dashscope`` or ``openai-compatible``)."""
    request_id = request_id or str(uuid.uuid4())
    native_code, compat_type = CODES[code]
    if style == NATIVE:
        body = {"code": native_code, "message": message, "request_id": request_id}
    else:
        body = {
            "error": {"message": message, "type": compat_type, "param": None, "code": code},
            "request_id": request_id,
        }
    return orjson.dumps(body)
