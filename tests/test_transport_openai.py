"""Through the real openai SDK against the simulator: exact events, unchanged results."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket

import httpx2
import openai
import orjson
import pytest

import costsplit
from costsplit.config import Settings, Workspace, load_settings
from costsplit.events import UsageEvent, fingerprint_key, line_fields
from costsplit.simulator import SimulatorConfig, run_in_thread, usage_for
from costsplit.spool import spooled_lines
from costsplit.usage import estimate_tokens

KEY = "sk-sim-default-intl"
MESSAGES = [
    {"role": "system", "content": "You answer finance questions about model spend."},
    {"role": "user", "content": "Which workspace spent the most in March?"},
]
VOLATILE = ("event_id", "started_at", "latency_us", "first_byte_us", "request_id")


def spooled(settings: Settings) -> list[dict]:
    """Every event line in the spool, in order."""
    return [line_fields(line) for line in spooled_lines(settings.spool_dir)]


def stable(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in VOLATILE}


def expected(model: str, usage: dict, **fields) -> dict:
    """The whole event for a compatible-mode call on the Singapore simulator."""
    details = usage.get("prompt_tokens_details") or {}
    event = UsageEvent(
        api_style="openai-compatible",
        host="127.0.0.1",
        region="ap-southeast-1",
        key_fingerprint=fingerprint_key(KEY),
        key_hint="…intl",
        model_requested=model,
        model_returned=model,
        http_status=200,
        usage_source="reported",
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage.get("completion_tokens", 0),
        total_tokens=usage["total_tokens"],
        cached_tokens=details.get("cached_tokens", 0),
        reasoning_tokens=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
    )
    return stable({**dataclasses.asdict(event), **fields})


def without_ids(value):
    """A model_dump() without the per-response id and creation time."""
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return {k: v for k, v in value.items() if k not in ("id", "created")}


@pytest.fixture
def stack():
    """Closes the test's clients (warnings are errors: an unclosed socket fails the test)."""
    with contextlib.ExitStack() as opened:
        yield opened


def recorded_client(stack, base_url, settings, region, key=KEY, **kwargs) -> openai.OpenAI:
    http_client = costsplit.recording_client(settings, region=region)
    client = openai.OpenAI(api_key=key, base_url=base_url, http_client=http_client, **kwargs)
    return stack.enter_context(client)


def clients(simulator, stack, **kwargs):
    settings = load_settings()
    base_url = simulator.base_url + "/compatible-mode/v1"
    recorded = recorded_client(stack, base_url, settings, simulator.region, **kwargs)
    bare = openai.OpenAI(api_key=KEY, base_url=base_url, http_client=httpx2.Client(), **kwargs)
    return settings, recorded, stack.enter_context(bare)


def test_chat_non_streamed(simulator, stack):
    settings, recorded, bare = clients(simulator, stack)
    got = recorded.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    plain = bare.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    assert without_ids(got.model_dump()) == without_ids(plain.model_dump())
    usage = usage_for({"model": "qwen-plus", "messages": MESSAGES}, "compatible", "chat")
    [event] = spooled(settings)
    assert stable(event) == expected("qwen-plus", usage)
    assert event["request_id"] and event["latency_us"] > 0


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_streamed(simulator, stack, include_usage):
    settings, recorded, bare = clients(simulator, stack)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    args = {"model": "qwen-flash", "messages": MESSAGES, "stream": True, **options}
    got = [c.model_dump() for c in recorded.chat.completions.create(**args)]
    plain = [c.model_dump() for c in bare.chat.completions.create(**args)]
    assert without_ids(got) == without_ids(plain)
    assert any(c["choices"] == [] for c in got) is include_usage
    usage = usage_for({"model": "qwen-flash", "messages": MESSAGES}, "compatible", "chat")
    [event] = spooled(settings)
    assert stable(event) == expected("qwen-flash", usage, streamed=True)
    seen = simulator.requests[-2]  # the recorded call reached the server with include_usage
    assert orjson.loads(seen.body)["stream_options"] == {"include_usage": True}


def test_thinking_model_reasoning_tokens(simulator, stack):
    settings, recorded, _ = clients(simulator, stack)
    args = {"model": "qwen-plus", "messages": MESSAGES, "extra_body": {"enable_thinking": True}}
    list(recorded.chat.completions.create(stream=True, **args))
    body = {"model": "qwen-plus", "messages": MESSAGES, "enable_thinking": True}
    usage = usage_for(body, "compatible", "chat")
    [event] = spooled(settings)
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0
    assert stable(event) == expected("qwen-plus", usage, streamed=True)


def test_embeddings(simulator, stack):
    settings, recorded, bare = clients(simulator, stack)
    texts = ["March spend by workspace", "April forecast"]
    got = recorded.embeddings.create(model="text-embedding-v4", input=texts)
    plain = bare.embeddings.create(model="text-embedding-v4", input=texts)
    assert without_ids(got.model_dump()) == without_ids(plain.model_dump())
    usage = usage_for({"model": "text-embedding-v4", "input": texts}, "compatible", "embeddings")
    [event] = spooled(settings)
    assert stable(event) == expected("text-embedding-v4", usage, endpoint="embedding")


def test_async_non_streamed_and_streamed(simulator, stack):
    settings = load_settings()

    async def run():
        client = openai.AsyncOpenAI(
            api_key=KEY,
            base_url=simulator.base_url + "/compatible-mode/v1",
            http_client=costsplit.async_recording_client(settings, region=simulator.region),
        )
        async with client:
            with costsplit.scenario("async-bot", team="care"):
                await client.chat.completions.create(model="qwen-plus", messages=MESSAGES)
                stream = await client.chat.completions.create(
                    model="qwen-plus", messages=MESSAGES, stream=True
                )
                return [c async for c in stream]

    chunks = asyncio.run(run())
    assert all(c.choices for c in chunks)
    usage = usage_for({"model": "qwen-plus", "messages": MESSAGES}, "compatible", "chat")
    tagged = {"scenario": "async-bot", "tags": {"team": "care"}}
    assert [stable(e) for e in spooled(settings)] == [
        expected("qwen-plus", usage, **tagged),
        expected("qwen-plus", usage, streamed=True, **tagged),
    ]


def test_scenario_headers_are_recorded_and_removed(simulator, stack):
    settings, recorded, _ = clients(simulator, stack)
    recorded.chat.completions.create(
        model="qwen-plus",
        messages=MESSAGES,
        extra_headers={"X-Costsplit-Scenario": "invoice-bot", "X-Costsplit-Tag-Team": "finance"},
    )
    [event] = spooled(settings)
    assert (event["scenario"], event["tags"]) == ("invoice-bot", {"team": "finance"})
    assert not [h for h in simulator.requests[-1].headers if h.startswith("x-costsplit")]


def test_caller_stops_early_is_interrupted(simulator, stack):
    settings, recorded, _ = clients(simulator, stack)
    stream = recorded.chat.completions.create(model="qwen-plus", messages=MESSAGES, stream=True)
    with stream:
        received = [next(iter(stream)) for _ in range(3)]
    text = "".join(c.choices[0].delta.content or "" for c in received)
    [event] = spooled(settings)
    assert (event["outcome"], event["usage_source"]) == ("interrupted", "estimated")
    assert event["output_tokens"] == estimate_tokens(text) > 0
    prompt = "".join(m["content"] for m in MESSAGES)
    assert event["input_tokens"] == estimate_tokens(prompt)


def test_stream_cut_by_the_server_is_interrupted(simulator, stack):
    settings, recorded, _ = clients(simulator, stack, max_retries=0)
    with pytest.raises(openai.APIError):
        list(
            recorded.chat.completions.create(
                model="qwen-plus",
                messages=MESSAGES,
                stream=True,
                extra_headers={"X-Simulator-Fault": "cut-after=4"},
            )
        )
    [event] = spooled(settings)
    assert (event["outcome"], event["usage_source"], event["http_status"]) == (
        "interrupted",
        "estimated",
        200,
    )
    assert event["output_tokens"] > 0


@pytest.mark.parametrize(
    ("key", "model", "fault", "status", "outcome", "code"),
    [
        ("sk-sim-default-cn", "qwen-plus", "", 401, "http_error", "invalid_api_key"),
        ("sk-sim-support-intl", "qwen3-max", "", 403, "denied", "Model.AccessDenied"),
        (KEY, "qwen-nonexistent", "", 404, "http_error", "model_not_found"),
        (KEY, "qwen-plus", "status=500", 500, "http_error", "internal_error"),
    ],
)
def test_http_errors(simulator, stack, key, model, fault, status, outcome, code):
    settings = load_settings()
    base_url = simulator.base_url + "/compatible-mode/v1"
    client = recorded_client(stack, base_url, settings, simulator.region, key, max_retries=0)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model=model, messages=MESSAGES, extra_headers={"X-Simulator-Fault": fault}
        )
    [event] = spooled(settings)
    assert (event["http_status"], event["outcome"], event["error_code"]) == (status, outcome, code)
    assert (event["usage_source"], event["input_tokens"]) == ("missing", 0)
    assert event["request_id"]


def test_rate_limited_and_each_retry_is_its_own_event(stack):
    settings = load_settings()
    config = SimulatorConfig.default("ap-southeast-1", rpm_limits={"qwen-plus": 1})
    with run_in_thread(config) as simulator:
        base_url = simulator.base_url + "/compatible-mode/v1"
        client = recorded_client(stack, base_url, settings, simulator.region, max_retries=2)
        client.chat.completions.create(model="qwen-plus", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client.with_options(timeout=5).chat.completions.create(
                model="qwen-plus", messages=MESSAGES
            )
    events = spooled(settings)
    assert [(e["outcome"], e["http_status"], e["error_code"]) for e in events] == [
        ("ok", 200, ""),
        *[("http_error", 429, "limit_requests")] * 3,
    ]
    assert len({e["event_id"] for e in events}) == 4


def test_connect_error_is_a_network_error(stack):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings()
    base_url = f"http://127.0.0.1:{port}/compatible-mode/v1"
    client = recorded_client(stack, base_url, settings, "ap-southeast-1", max_retries=0, timeout=2)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    [event] = spooled(settings)
    assert (event["outcome"], event["http_status"], event["error_code"]) == (
        "network_error",
        None,
        "ConnectError",
    )


def test_model_not_granted_raises_before_io(simulator, stack):
    support = Workspace(
        id="ws-support0000000",
        name="Support",
        region="ap-southeast-1",
        models=("qwen-plus", "qwen-flash"),
        key_fingerprints=(fingerprint_key("sk-sim-support-intl"),),
    )
    settings = dataclasses.replace(load_settings(), workspaces=(support,), enforce_grants=True)
    base_url = simulator.base_url + "/compatible-mode/v1"
    client = recorded_client(stack, base_url, settings, simulator.region, "sk-sim-support-intl")
    before = len(simulator.requests)
    with pytest.raises(costsplit.ModelNotGranted, match="qwen3-max"):
        client.chat.completions.create(model="qwen3-max", messages=MESSAGES)
    assert len(simulator.requests) == before
    [event] = spooled(settings)
    assert (event["outcome"], event["workspace_observed"], event["model_requested"]) == (
        "denied_local",
        "ws-support0000000",
        "qwen3-max",
    )
