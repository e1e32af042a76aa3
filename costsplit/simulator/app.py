"""The simulator's ASGI app: routes, then for every call key → workspace → model → grant checks.

`build_app(config)` returns a Starlette app serving both API styles. Each request is checked in
the order the real gateway does: faults (latency), the key (401, also for a key of another
region), the ``X-DashScope-WorkSpace`` header (403), the body (400), the model (404), the grant
(403), the per-model rate limit (429), injected 500s; then it is answered. Native SSE requests
whose parameters are invalid get HTTP 200 with an ``event:error`` (as captured), everything else
a JSON error body with its status.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from costsplit.simulator import compatible, native
from costsplit.simulator.config import SimulatorConfig, region_models
from costsplit.simulator.envelopes import (
    SimulatedError,
    internal_error,
    invalid_api_key,
    invalid_parameter,
    model_access_denied,
    model_not_found,
    rate_limited,
    workspace_access_denied,
)
from costsplit.simulator.faults import FAULT_HEADER, Faults, RateLimiter, SeededDraw, parse_faults
from costsplit.simulator.usage import plan_request

REQUEST_LOG_SIZE = 1000
_KINDS = {
    "chat": ("chat", "vision", "omni", "translation"),
    "embeddings": ("embedding",),
    "text-generation": ("chat", "translation"),
    "multimodal-generation": ("vision", "omni"),
    "text-embedding": ("embedding",),
}


@dataclass(frozen=True)
class SeenRequest:
    """A request as the simulator received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class SimulatorState:
    """What one running simulator remembers: seen prefixes, rate windows, received requests."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.models = region_models(config.region)
        self.limiter = RateLimiter(dict(config.rpm_limits))
        self.draw = SeededDraw(config.seed)
        # the latest requests only, so a long demo or benchmark run stays small
        self.requests: deque[SeenRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()

    def cache_hit(self, key: str | None) -> bool:
        """Whether this prefix was seen before; remembers it either way."""
        if key is None:
            return False
        with self._lock:
            hit = key in self._prefixes
            self._prefixes.add(key)
            return hit


class EventStream:
    """An SSE response that can wait before its first event and close abruptly mid-stream."""

    def __init__(self, events: list[bytes], headers: dict[str, str], faults: Faults) -> None:
        self.events = events
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        if self.faults.first_byte_ms:
            await asyncio.sleep(self.faults.first_byte_ms / 1000)
        for number, event in enumerate(self.events):
            if self.faults.cut_after is not None and number >= self.faults.cut_after:
                return  # never finish the body: the server drops the connection
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _json(body: dict[str, Any], status: int, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _api_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _answer(request: Request, api_style: str, endpoint: str) -> Any:
    state: SimulatorState = request.app.state.simulator
    config = state.config
    raw = await request.body()
    state.requests.append(SeenRequest(request.method, request.url.path, dict(request.headers), raw))
    request_id = str(uuid.uuid4())
    chat = endpoint == "chat"
    sse = api_style == "native" and request.headers.get("x-dashscope-sse", "").lower() == "enable"
    id_header = "x-request-id" if api_style == "compatible" else "X-Request-ID"
    headers = {id_header: request_id, "x-dashscope-call-gateway": "true"}

    def fail(error: SimulatedError) -> Response:
        if api_style == "native":
            return _json(error.native_body(request_id), error.status, headers)
        return _json(error.compatible_body(request_id, chat=chat), error.status, headers)

    try:
        faults = parse_faults(request.headers.get(FAULT_HEADER), config, state.draw)
    except SimulatedError as error:
        return fail(error)
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    try:
        body = _check(request, raw, state, endpoint)
        if faults.status:
            raise replace(internal_error(), status=faults.status)
    except SimulatedError as error:
        return fail(error)

    region = config.region
    try:
        if endpoint in ("embeddings", "text-embedding"):
            if api_style == "compatible":
                answer = compatible.embeddings_body(body, request_id)
            else:
                answer = native.embedding_body(body, request_id)
            return await _delayed(_json(answer, 200, headers), faults)
        block = config.cache_block
        plan = plan_request(
            body,
            api_style,
            endpoint,
            region=region,
            cache_block=block,
            answer_tokens=config.answer_tokens,
        )
        if state.cache_hit(plan.cache_key):
            plan = replace(plan, cached_tokens=(plan.prefix_tokens // block) * block)
        stream = sse or (api_style == "compatible" and body.get("stream") is True)
        if not stream:
            if chat:
                answer = compatible.chat_body(plan, request_id, int(time.time()), region)
            else:
                answer = native.generation_body(plan, body, endpoint, request_id, region)
            return await _delayed(_json(answer, 200, headers), faults)
        if chat:
            events = compatible.chat_events(
                plan, body, request_id, int(time.time()), region,
                stream_error_after=faults.stream_error_after,
            )  # fmt: skip
            content_type = "text/event-stream"
        else:
            events = native.generation_events(
                plan, body, endpoint, request_id, region,
                stream_error_after=faults.stream_error_after,
            )  # fmt: skip
            content_type = "text/event-stream;charset=UTF-8"
    except SimulatedError as error:
        if not sse:
            return fail(error)
        events, content_type = (
            native.error_events(error, request_id),
            "text/event-stream;charset=UTF-8",
        )
    return EventStream(events, {**headers, "content-type": content_type}, faults)


async def _delayed(response: Response, faults: Faults) -> Response:
    if faults.first_byte_ms:
        await asyncio.sleep(faults.first_byte_ms / 1000)
    return response


def _check(request: Request, raw: bytes, state: SimulatorState, endpoint: str) -> dict[str, Any]:
    """Key, workspace, body, model, grant, rate limit: the parsed body, or a SimulatedError."""
    config = state.config
    key = config.key(_api_key(request))
    if key is None or key.region != config.region:
        raise invalid_api_key()
    workspace = config.workspace(key.workspace)
    asked = request.headers.get("x-dashscope-workspace")
    if workspace is None or (asked and asked != workspace.id):
        raise workspace_access_denied()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_parameter(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_parameter("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_parameter("Model not specified.")
    info = state.models.get(model)
    if info is None:
        raise model_not_found()
    if not (workspace.grants(info.name) or workspace.grants(model)):
        raise model_access_denied()
    if info.kind not in _KINDS[endpoint]:
        raise invalid_parameter(f"Model {model} does not support this API (url error).")
    if not state.limiter.admit(info.name):
        raise rate_limited()
    return body


def _route(api_style: str, endpoint: str):
    async def endpoint_fn(request: Request) -> Any:
        return await _answer(request, api_style, endpoint)

    return endpoint_fn


def build_app(config: SimulatorConfig) -> Starlette:
    """The ASGI app for `config`; its state is in ``app.state.simulator``."""
    routes = [
        Route(
            "/compatible-mode/v1/chat/completions", _route("compatible", "chat"), methods=["POST"]
        ),
        Route(
            "/compatible-mode/v1/embeddings", _route("compatible", "embeddings"), methods=["POST"]
        ),
        Route(
            "/api/v1/services/aigc/text-generation/generation",
            _route("native", "text-generation"),
            methods=["POST"],
        ),
        Route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            _route("native", "multimodal-generation"),
            methods=["POST"],
        ),
        Route(
            "/api/v1/services/embeddings/text-embedding/text-embedding",
            _route("native", "text-embedding"),
            methods=["POST"],
        ),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = SimulatorState(config)
    return app
