"""Errors in the real envelopes of both API styles, and the fault knobs (header and config)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from costsplit.simulator import SimulatorConfig, run_in_thread

FIXTURES = Path(__file__).parent / "fixtures"
CHAT = "/compatible-mode/v1/chat/completions"
TEXT = "/api/v1/services/aigc/text-generation/generation"
DOCS = "https://www.alibabacloud.com/help/en/model-studio/error-code"
MESSAGES = [{"role": "user", "content": "How much did support spend?"}]


_HTTP: list[httpx.Client] = []


@pytest.fixture(scope="module", autouse=True)
def http_client():
    """One client for the module: building an SSL context per request costs ~50 ms."""
    with httpx.Client(timeout=10) as client:
        _HTTP.append(client)
        yield client
        _HTTP.clear()


def key(name):
    return {"Authorization": f"Bearer {name}"}


def call(sim, style, model="qwen-plus", headers=None, content=None, **extra):
    """POST a chat (compatible) or text generation (native) request; returns the response."""
    headers = {**key("sk-sim-default-intl"), **(headers or {})}
    if style == "compatible":
        body = {"model": model, "messages": MESSAGES, **extra}
        path = CHAT
    else:
        body = {"model": model, "input": {"messages": MESSAGES}, "parameters": extra}
        path = TEXT
    data = content if content is not None else json.dumps(body).encode()
    return _HTTP[0].post(sim.base_url + path, content=data, headers=headers)


def expected(style, response, status, native_code, compat_code, compat_type, message, *, chat_id):
    """The whole error body the response must carry."""
    request_id = response.headers["x-request-id"]
    if style == "native":
        return {"code": native_code, "message": message, "request_id": request_id}
    body = {"error": {"message": message, "type": compat_type, "param": None, "code": compat_code}}
    if chat_id:
        body["id"] = f"chatcmpl-{request_id}"
    return {**body, "request_id": request_id}


STYLES = pytest.mark.parametrize("style", ["compatible", "native"])


@STYLES
@pytest.mark.parametrize("api_key", ["sk-unknown", "sk-sim-default-cn", None])
def test_unknown_missing_or_other_region_key_is_401(simulator, style, api_key):
    headers = key(api_key) if api_key else {"Authorization": ""}
    response = call(simulator, style, headers=headers)
    assert response.status_code == 401
    if style == "native":
        body = expected(style, response, 401, "InvalidApiKey", "", "", "Invalid API-key provided.",
                        chat_id=False)  # fmt: skip
    else:
        body = expected(style, response, 401, "", "invalid_api_key", "invalid_request_error",
                        f"Incorrect API key provided. For details, see: {DOCS}#apikey-error",
                        chat_id=False)  # fmt: skip
    assert response.json() == body


@STYLES
def test_model_not_granted_is_403_with_the_reference_body(simulator, style):
    """UNCERTAIN (reference §9.2): the compatible body is built by analogy, as the fixture is."""
    response = call(simulator, style, model="qwen3-max", headers=key("sk-sim-support-intl"))
    assert response.status_code == 403
    name = (
        "native_error_access_denied.json"
        if style == "native"
        else "openai_error_access_denied.json"
    )
    reference = json.loads((FIXTURES / name).read_text())
    assert response.json().keys() == reference.keys()
    assert response.json() == expected(
        style, response, 403, "Model.AccessDenied", "Model.AccessDenied", "Model.AccessDenied",
        "Model access denied.", chat_id=True,
    )  # fmt: skip


@STYLES
def test_granted_models_pass_and_a_foreign_workspace_header_is_refused(simulator, style):
    research = key("sk-sim-research-intl")
    assert call(simulator, style, model="qwen3-max", headers=research).status_code == 200
    response = call(
        simulator, style, headers={**research, "X-DashScope-WorkSpace": "ws-support0000000"}
    )
    assert response.status_code == 403
    assert response.json() == expected(
        style, response, 403, "Workspace.AccessDenied", "Workspace.AccessDenied",
        "Workspace.AccessDenied", "Workspace access denied.", chat_id=True,
    )  # fmt: skip


@STYLES
def test_unknown_model_is_404(simulator, style):
    response = call(simulator, style, model="qwen-imaginary")
    assert response.status_code == 404
    assert response.json() == expected(
        style, response, 404, "ModelNotFound", "model_not_found", "invalid_request_error",
        "Model not exist.", chat_id=True,
    )  # fmt: skip


@STYLES
def test_malformed_body_is_400(simulator, style):
    response = call(simulator, style, content=b"{not json")
    assert response.status_code == 400
    body = response.json()
    code = body["code"] if style == "native" else body["error"]["code"]
    assert code == ("InvalidParameter" if style == "native" else "invalid_parameter_error")
    missing = call(simulator, style, content=json.dumps({"model": "qwen-plus"}).encode())
    assert missing.status_code == 400


def test_native_stream_with_invalid_parameters_is_an_error_event_with_http_200(simulator):
    headers = {"X-DashScope-SSE": "enable"}
    response = call(
        simulator, "native", headers=headers, enable_thinking=True, result_format="text"
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    message = 'result_format must be "message" when enable_thinking is true.'
    assert response.text == (
        "id:1\nevent:error\n:HTTP_STATUS/400\ndata:"
        + json.dumps({"code": "InvalidParameter", "message": message, "request_id": request_id},
                     separators=(",", ":"))
        + "\n\n"
    )  # fmt: skip


@STYLES
def test_rpm_limit_is_429_per_model_over_all_keys(style):
    config = SimulatorConfig.default(rpm_limits={"qwen-plus": 2})
    with run_in_thread(config) as sim:
        support = key("sk-sim-support-intl")
        statuses = [call(sim, style, headers=h).status_code for h in ({}, support, {})]
        assert statuses == [200, 200, 429]
        assert call(sim, style, model="qwen-flash").status_code == 200
        response = call(sim, style)
    assert response.json() == expected(
        style, response, 429, "Throttling.RateQuota", "limit_requests", "limit_requests",
        "Requests rate limit exceeded, please try again later." if style == "native" else
        f"You exceeded your current requests list. For details, see: {DOCS}#rate-limit",
        chat_id=True,
    )  # fmt: skip


@STYLES
def test_status_fault_is_a_500_internal_error(simulator, style):
    response = call(simulator, style, headers={"X-Simulator-Fault": "status=500"})
    assert response.status_code == 500
    assert response.json() == expected(
        style, response, 500, "InternalError", "internal_error", "internal_error",
        "An internal error has occured, please try again later or contact service support.",
        chat_id=True,
    )  # fmt: skip


def test_unknown_fault_is_refused(simulator):
    response = call(simulator, "compatible", headers={"X-Simulator-Fault": "explode"})
    assert response.status_code == 400


def test_error_rate_is_seeded_and_repeatable():
    config = SimulatorConfig.default(error_rate=0.5, seed=3)
    runs = []
    for _ in range(2):
        with run_in_thread(config) as sim:
            runs.append([call(sim, "native").status_code for _ in range(10)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


def read_stream(sim, style, fault):
    """(events received, error) for a streamed call with the given fault header."""
    headers = {**key("sk-sim-default-intl"), "X-Simulator-Fault": fault}
    if style == "compatible":
        body = {"model": "qwen-plus", "messages": MESSAGES, "stream": True}
        path = CHAT
    else:
        body = {"model": "qwen-plus", "input": {"messages": MESSAGES}}
        path, headers = TEXT, {**headers, "X-DashScope-SSE": "enable"}
    received, error = b"", None
    with _HTTP[0].stream("POST", sim.base_url + path, json=body, headers=headers) as response:
        try:
            for part in response.iter_bytes():
                received += part
        except httpx.RemoteProtocolError as exc:
            error = exc
    return [e for e in received.decode().split("\n\n") if e], error


@STYLES
def test_cut_after_closes_the_stream_abruptly(simulator, style):
    events, error = read_stream(simulator, style, "cut-after=3")
    assert len(events) == 3
    assert isinstance(error, httpx.RemoteProtocolError)


def test_cut_after_from_the_config_applies_to_every_stream():
    with run_in_thread(SimulatorConfig.default(cut_after=2)) as sim:
        events, error = read_stream(sim, "native", "")
    assert (len(events), type(error)) == (2, httpx.RemoteProtocolError)


def test_stream_error_fault_sends_a_native_error_event_after_n_results(simulator):
    events, error = read_stream(simulator, "native", "stream-error=2")
    assert error is None and len(events) == 3
    head, data = events[2].split("\ndata:")
    assert head == "id:3\nevent:error\n:HTTP_STATUS/500"
    assert json.loads(data)["code"] == "InternalError"


def test_stream_error_fault_in_compatible_mode_sends_an_error_object(simulator):
    """UNCERTAIN (reference §9.3): the real in-stream body is unknown; ours is the envelope."""
    events, error = read_stream(simulator, "compatible", "stream-error=1")
    assert error is None and len(events) == 2
    assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "internal_error"


def test_latency_and_first_byte_delays(simulator):
    started = time.perf_counter()
    assert call(simulator, "native", headers={"X-Simulator-Fault": "latency-ms=150"}).is_success
    assert time.perf_counter() - started >= 0.15
    headers = {**key("sk-sim-default-intl"), "X-Simulator-Fault": "first-byte-ms=200"}
    body = {"model": "qwen-plus", "messages": MESSAGES, "stream": True}
    started = time.perf_counter()
    url = simulator.base_url + CHAT
    with _HTTP[0].stream("POST", url, json=body, headers=headers) as response:
        headers_at = time.perf_counter() - started
        next(response.iter_bytes())
        first_byte_at = time.perf_counter() - started
    assert headers_at < 0.2 <= first_byte_at
