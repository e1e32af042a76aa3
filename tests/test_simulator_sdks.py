"""The real SDKs parse the simulator's answers and errors: openai (sync, async) and dashscope."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import dashscope
import openai
import pytest
from dashscope import Generation, MultiModalConversation, TextEmbedding

from costsplit.simulator import SimulatorConfig, run_in_thread, usage_for

KEY = "sk-sim-default-intl"
MESSAGES = [{"role": "user", "content": "Summarise March spend for the support workspace."}]
FAULT = "X-Simulator-Fault"


def client(sim, api_key=KEY):
    return openai.OpenAI(
        base_url=sim.base_url + "/compatible-mode/v1", api_key=api_key, max_retries=0
    )


def async_client(sim, api_key=KEY):
    return openai.AsyncOpenAI(
        base_url=sim.base_url + "/compatible-mode/v1", api_key=api_key, max_retries=0
    )


@pytest.fixture
def native_sdk(simulator, monkeypatch):
    """Point the dashscope SDK at the simulator for this test only."""
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.setattr(dashscope, "base_http_api_url", simulator.base_url + "/api/v1")
    return simulator


# --- openai SDK -----------------------------------------------------------------------------


def test_openai_sync_chat_sees_the_documented_usage(simulator):
    body = {"model": "qwen-plus", "messages": MESSAGES, "enable_thinking": True}
    with client(simulator) as sdk:
        answer = sdk.chat.completions.create(
            model="qwen-plus", messages=MESSAGES, extra_body={"enable_thinking": True}
        )
    assert answer.usage.model_dump(exclude_none=True) == usage_for(body, "compatible", "chat")
    assert answer.id == f"chatcmpl-{answer._request_id}"
    assert answer.choices[0].message.model_extra["reasoning_content"]


def test_openai_sync_stream_gets_usage_in_the_last_chunk(simulator):
    body = {"model": "qwen-flash", "messages": MESSAGES}
    with client(simulator) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="qwen-flash",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(exclude_none=True) == usage_for(body, "compatible", "chat")
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert len(text.split()) == chunks[-1].usage.completion_tokens


def test_openai_sync_embeddings_decode_base64_and_report_usage(simulator):
    body = {"model": "text-embedding-v4", "input": ["workspace", "scenario"]}
    with client(simulator) as sdk:
        answer = sdk.embeddings.create(model="text-embedding-v4", input=body["input"])
    assert [len(item.embedding) for item in answer.data] == [1024, 1024]
    assert answer.usage.model_dump() == usage_for(body, "compatible", "embeddings")


def test_openai_async_chat_stream_and_embeddings(simulator):
    body = {"model": "qwen-plus", "messages": MESSAGES}

    async def run():
        async with async_client(simulator) as sdk:
            answer = await sdk.chat.completions.create(model="qwen-plus", messages=MESSAGES)
            stream = await sdk.chat.completions.create(
                model="qwen-plus",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            vectors = await sdk.embeddings.create(model="text-embedding-v4", input="spend")
        return answer, chunks, vectors

    answer, chunks, vectors = asyncio.run(run())
    expected = usage_for(body, "compatible", "chat")
    assert answer.usage.model_dump(exclude_none=True) == expected
    assert chunks[-1].usage.model_dump(exclude_none=True) == expected
    assert vectors.usage.model_dump() == {"prompt_tokens": 2, "total_tokens": 2}


@pytest.mark.parametrize(
    ("api_key", "model", "headers", "error", "code"),
    [
        ("sk-unknown", "qwen-plus", {}, openai.AuthenticationError, "invalid_api_key"),
        ("sk-sim-default-cn", "qwen-plus", {}, openai.AuthenticationError, "invalid_api_key"),
        (
            "sk-sim-support-intl",
            "qwen3-max",
            {},
            openai.PermissionDeniedError,
            "Model.AccessDenied",
        ),
        (KEY, "qwen-nonexistent", {}, openai.NotFoundError, "model_not_found"),
        (KEY, "qwen-plus", {FAULT: "status=500"}, openai.InternalServerError, "internal_error"),
    ],
)
def test_openai_sdk_raises_the_right_error(simulator, api_key, model, headers, error, code):
    with client(simulator, api_key) as sdk, pytest.raises(error) as raised:
        sdk.chat.completions.create(model=model, messages=MESSAGES, extra_headers=headers)
    assert raised.value.code == code
    assert raised.value.response.json()["request_id"] == raised.value.request_id


def test_openai_sdk_bad_request_and_rate_limit():
    config = SimulatorConfig.default(rpm_limits={"qwen-plus": 2})
    with run_in_thread(config) as sim, client(sim) as sdk:
        with pytest.raises(openai.BadRequestError) as bad:  # a refused request counts too
            sdk.chat.completions.create(model="qwen-plus", messages=[])
        sdk.chat.completions.create(model="qwen-plus", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    assert (bad.value.code, limited.value.code) == ("invalid_parameter_error", "limit_requests")


# --- dashscope SDK --------------------------------------------------------------------------


def test_dashscope_generation_call_sees_the_documented_usage(native_sdk):
    body = {"model": "qwen-plus", "input": {"messages": MESSAGES}, "parameters": {}}
    response = Generation.call(model="qwen-plus", messages=MESSAGES, api_key=KEY)
    assert response.status_code == HTTPStatus.OK
    assert dict(response.usage) == usage_for(body, "native", "text-generation")
    assert response.output.text.split()[0]


def test_dashscope_generation_stream_ends_with_the_final_usage(native_sdk):
    parameters = {"result_format": "message", "incremental_output": True, "enable_thinking": True}
    body = {"model": "qwen-plus", "input": {"messages": MESSAGES}, "parameters": parameters}
    responses = list(
        Generation.call(
            model="qwen-plus", messages=MESSAGES, api_key=KEY, stream=True, **parameters
        )
    )
    assert {r.status_code for r in responses} == {HTTPStatus.OK}
    final = usage_for(body, "native", "text-generation")
    del final["prompt_tokens_details"]  # streams omit a zero cache count, as captured
    assert dict(responses[-1].usage) == final
    assert responses[-1].output.choices[0].finish_reason == "stop"


def test_dashscope_multimodal_and_embeddings(native_sdk):
    content = [{"image": "https://example.com/invoice.png"}, {"text": "Total?"}]
    messages = [{"role": "user", "content": content}]
    body = {"model": "qwen-vl-max", "input": {"messages": messages}}
    response = MultiModalConversation.call(model="qwen-vl-max", messages=messages, api_key=KEY)
    assert response.status_code == HTTPStatus.OK
    usage = usage_for(body, "native", "multimodal-generation")
    assert {k: response.usage[k] for k in usage} == usage
    vectors = TextEmbedding.call(model="text-embedding-v4", input=["a", "bb"], api_key=KEY)
    assert (vectors.status_code, dict(vectors.usage)) == (HTTPStatus.OK, {"total_tokens": 2})


@pytest.mark.parametrize(
    ("api_key", "model", "headers", "status", "code"),
    [
        ("sk-unknown", "qwen-plus", {}, 401, "InvalidApiKey"),
        ("sk-sim-default-cn", "qwen-plus", {}, 401, "InvalidApiKey"),
        ("sk-sim-support-intl", "qwen3-max", {}, 403, "Model.AccessDenied"),
        (KEY, "qwen-nonexistent", {}, 404, "ModelNotFound"),
        (KEY, "qwen-plus", {FAULT: "status=500"}, 500, "InternalError"),
    ],
)
def test_dashscope_sdk_reports_status_and_code(native_sdk, api_key, model, headers, status, code):
    response = Generation.call(model=model, messages=MESSAGES, api_key=api_key, headers=headers)
    assert (response.status_code, response.code) == (status, code)
    assert response.request_id


def test_dashscope_sdk_bad_request_rate_limit_and_stream_error(native_sdk):
    bad = Generation.call(model="qwen-plus", prompt="hi", api_key=KEY, result_format="json")
    assert (bad.status_code, bad.code) == (400, "InvalidParameter")
    stream = Generation.call(
        model="qwen-plus", messages=MESSAGES, api_key=KEY, stream=True,
        headers={FAULT: "stream-error=2"},
    )  # fmt: skip
    codes = [(r.status_code, r.code) for r in stream]
    assert codes[:2] == [(200, ""), (200, "")]
    assert codes[2][1] == "InternalError"


def test_dashscope_sdk_sees_429(monkeypatch):
    with run_in_thread(SimulatorConfig.default(rpm_limits={"qwen-flash": 1})) as sim:
        monkeypatch.setattr(dashscope, "base_http_api_url", sim.base_url + "/api/v1")
        first = Generation.call(model="qwen-flash", messages=MESSAGES, api_key=KEY)
        second = Generation.call(model="qwen-flash", messages=MESSAGES, api_key=KEY)
    assert (first.status_code, second.status_code, second.code) == (
        200,
        429,
        "Throttling.RateQuota",
    )
