"""Error bodies exactly as Model Studio sends them, in both API styles (reference §2.4, §3.6, §4).

A handler raises `SimulatedError`; the app renders it as the native body
``{"code", "message", "request_id"}`` or the compatible body
``{"error": {"message", "type", "param", "code"}, ["id",] "request_id"}`` with the HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DOCS = "https://www.alibabacloud.com/help/en/model-studio/error-code"


@dataclass
class SimulatedError(Exception):
    """An error answer: HTTP status, native code, compatible code and type, message."""

    status: int
    native_code: str
    compat_code: str
    compat_type: str
    message: str
    compat_message: str | None = None
    # the gateway refuses a bad key before the chat service: those bodies carry no "id"
    chat_id: bool = True

    def native_body(self, request_id: str) -> dict[str, Any]:
        return {"code": self.native_code, "message": self.message, "request_id": request_id}

    def compatible_body(self, request_id: str, *, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "error": {
                "message": self.compat_message or self.message,
                "type": self.compat_type,
                "param": None,
                "code": self.compat_code,
            }
        }
        if chat and self.chat_id:
            body["id"] = f"chatcmpl-{request_id}"
        body["request_id"] = request_id
        return body


def invalid_api_key() -> SimulatedError:
    """401: an unknown key, or a key of another region."""
    return SimulatedError(
        401,
        "InvalidApiKey",
        "invalid_api_key",
        "invalid_request_error",
        "Invalid API-key provided.",
        f"Incorrect API key provided. For details, see: {_DOCS}#apikey-error",
        chat_id=False,
    )


def model_access_denied() -> SimulatedError:
    """403: the key's workspace is not granted this model."""
    return SimulatedError(
        403,
        "Model.AccessDenied",
        "Model.AccessDenied",
        "Model.AccessDenied",
        "Model access denied.",
    )


def workspace_access_denied() -> SimulatedError:
    """403: the X-DashScope-WorkSpace header names a workspace the key does not belong to."""
    return SimulatedError(
        403,
        "Workspace.AccessDenied",
        "Workspace.AccessDenied",
        "Workspace.AccessDenied",
        "Workspace access denied.",
    )


def model_not_found() -> SimulatedError:
    """404: the model is not served in this region (nor is it an alias)."""
    return SimulatedError(
        404, "ModelNotFound", "model_not_found", "invalid_request_error", "Model not exist."
    )


def invalid_parameter(message: str) -> SimulatedError:
    """400: a malformed or invalid request body."""
    return SimulatedError(
        400, "InvalidParameter", "invalid_parameter_error", "invalid_request_error", message
    )


def rate_limited() -> SimulatedError:
    """429: the model's requests-per-minute limit is used up."""
    return SimulatedError(
        429,
        "Throttling.RateQuota",
        "limit_requests",
        "limit_requests",
        "Requests rate limit exceeded, please try again later.",
        f"You exceeded your current requests list. For details, see: {_DOCS}#rate-limit",
    )


def internal_error() -> SimulatedError:
    """500: a server-side failure (fault injection)."""
    return SimulatedError(
        500,
        "InternalError",
        "internal_error",
        "internal_error",
        "An internal error has occured, please try again later or contact service support.",
    )
