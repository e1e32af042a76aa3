"""The simulator answers both API styles with the reference shapes and deterministic usage.

Shapes are compared with the reference payloads copied into ``tests/fixtures/`` (same keys,
same nesting, same JSON types); numbers are compared with `usage_for`.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
from pathlib import Path

import httpx
import pytest

from costsplit.errors import ConfigError
from costsplit.simulator import SimulatorConfig, run_in_thread, usage_for

FIXTURES = Path(__file__).parent / "fixtures"
INTL = {"Authorization": "Bearer sk-sim-default-intl"}
CN = {"Authorization": "Bearer sk-sim-default-cn"}
SSE = {"X-DashScope-SSE": "enable"}
CHAT = "/compatible-mode/v1/chat/completions"
EMBED = "/compatible-mode/v1/embeddings"
TEXT = "/api/v1/services/aigc/text-generation/generation"
MULTI = "/api/v1/services/aigc/multimodal-generation/generation"
NATIVE_EMBED = "/api/v1/services/embeddings/text-embedding/text-embedding"
# a system prompt of 1,204 characters: 301 + 4 = 305 tokens, a cacheable prefix of 256
SYSTEM = {"role": "system", "content": "You split Model Studio costs by workspace. " * 28}


def shape(value):
    """Keys, nesting and JSON types of a payload, values dropped (lists: their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


_HTTP: list[httpx.Client] = []


@pytest.fixture(scope="module", autouse=True)
def http_client():
    """One client for the module: building an SSL context per request costs ~50 ms."""
    with httpx.Client(timeout=10) as client:
        _HTTP.append(client)
        yield client
        _HTTP.clear()


def post(sim, path, body, headers=INTL, **kwargs):
    return _HTTP[0].post(sim.base_url + path, json=body, headers=headers, **kwargs)


def compat_events(text):
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def native_events(text):
    """(id, event, status, data) per native SSE event, checking the captured framing."""
    events = []
    for block in text.strip("\n").split("\n\n"):
        match = re.fullmatch(r"id:(\d+)\nevent:(\w+)\n:HTTP_STATUS/(\d+)\ndata:(\{.*\})", block)
        assert match, block
        events.append((int(match[1]), match[2], int(match[3]), json.loads(match[4])))
    return events


def chat(content="hello there", **extra):
    return {"model": "qwen-plus", "messages": [{"role": "user", "content": content}], **extra}


def native(content="hello there", model="qwen-plus", **parameters):
    messages = [{"role": "user", "content": content}]
    return {"model": model, "input": {"messages": messages}, "parameters": parameters}


# --- configuration --------------------------------------------------------------------------


def test_default_world_is_the_agreed_contract():
    config = SimulatorConfig.default("ap-southeast-1")
    assert [(ws.id, ws.models) for ws in config.workspaces] == [
        ("ws-default0000000", None),
        ("ws-support0000000", ("qwen-plus", "qwen-flash", "text-embedding-v4")),
        ("ws-research000000", ("qwen3-max", "qwen-plus", "qwen-vl-max", "qwen3-vl-plus")),
    ]
    assert [(k.key, k.workspace, k.region) for k in config.keys] == [
        ("sk-sim-default-intl", "ws-default0000000", "ap-southeast-1"),
        ("sk-sim-support-intl", "ws-support0000000", "ap-southeast-1"),
        ("sk-sim-research-intl", "ws-research000000", "ap-southeast-1"),
        ("sk-sim-default-cn", "ws-default0000000", "cn-beijing"),
        ("sk-sim-support-cn", "ws-support0000000", "cn-beijing"),
        ("sk-sim-research-cn", "ws-research000000", "cn-beijing"),
    ]
    assert SimulatorConfig.default("cn-beijing").keys[0].key == "sk-sim-default-cn"


def test_example_toml_loads_with_its_documented_values():
    path = Path(__file__).parents[1] / "config" / "simulator.toml"
    config = SimulatorConfig.from_toml(path)
    assert (config.region, config.seed, dict(config.rpm_limits)) == (
        "ap-southeast-1",
        7,
        {"qwen3-max": 600},
    )
    assert [ws.id for ws in config.workspaces] == [
        ws.id for ws in SimulatorConfig.default().workspaces
    ]
    assert config.key("sk-sim-default-cn").region == "cn-beijing"
    assert config.answer_tokens == (16, 63)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[simulator]\nregion = "mars-1"\n', "simulator.region 'mars-1' has no model list"),
        ("[simulator]\nlatency_ms = 'slow'\n", "simulator.latency_ms must be a number"),
        ("[simulator]\nspeed = 1\n", "unknown simulator keys ['speed']"),
        ("[simulator]\nanswer_tokens = [9, 3]\n", "answer_tokens must be [fewest, most]"),
        ("[simulator]\nanswer_tokens = 40\n", "answer_tokens must be [fewest, most]"),
        ('[[keys]]\nkey = "sk-x"\nworkspace = "ws-none"\n', "keys[0] needs key and a workspace"),
        ("[simulator\n", "Expected ']'"),
    ],
)
def test_bad_toml_is_named_by_file_and_key(tmp_path, text, message):
    from costsplit.errors import ConfigError

    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path))) as raised:
        SimulatorConfig.from_toml(path)
    assert message in str(raised.value)


# --- deterministic usage --------------------------------------------------------------------


def test_usage_rules_give_exact_numbers():
    body = chat("x" * 40, seed=5)  # 10 text tokens + 4 per message + 3 per request
    assert usage_for(body, "compatible", "chat") == {
        "prompt_tokens": 17,
        "completion_tokens": 21,  # 16 + 5 % 48
        "total_tokens": 38,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    thinking = chat("x" * 40, seed=5, enable_thinking=True, max_tokens=10)
    assert usage_for(thinking, "compatible", "chat") == {
        "prompt_tokens": 17,
        "completion_tokens": 39,  # answer capped at 10, reasoning 24 + 5 % 40
        "total_tokens": 56,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 29},
    }
    assert usage_for(
        native("x" * 40, model="qwen-mt-plus", seed=5), "native", "text-generation"
    ) == {
        "input_tokens": 17,
        "output_tokens": 21,
        "total_tokens": 38,
    }
    assert usage_for({"model": "m", "input": ["abcd", "abcde"]}, "compatible", "embeddings") == {
        "prompt_tokens": 3,
        "total_tokens": 3,
    }


def test_answer_length_is_a_knob_that_max_tokens_still_caps():
    body = chat("x" * 40, seed=5)
    long = usage_for(body, "compatible", "chat", answer_tokens=(800, 800))
    assert (long["completion_tokens"], long["total_tokens"]) == (800, 817)
    ranged = usage_for(body, "compatible", "chat", answer_tokens=(100, 109))
    assert ranged["completion_tokens"] == 105  # 100 + 5 % 10
    capped = chat("x" * 40, seed=5, max_tokens=30)
    assert (
        usage_for(capped, "compatible", "chat", answer_tokens=(800, 800))["completion_tokens"] == 30
    )


def test_long_answers_stream_in_four_token_chunks():
    config = SimulatorConfig.default(answer_tokens=(800, 800))
    with run_in_thread(config) as sim:
        events = compat_events(post(sim, CHAT, chat(stream=True)).text)
    # the role chunk, 800 tokens 4 a chunk, the finish chunk, [DONE]
    assert len(events) == 1 + 200 + 1 + 1
    with pytest.raises(ConfigError, match="answer_tokens"):
        SimulatorConfig.default(answer_tokens=(0, 5))


# --- compatible mode ------------------------------------------------------------------------


def test_compatible_chat_matches_the_reference_with_thinking_and_cache(simulator):
    body = chat(enable_thinking=True)
    body["messages"].insert(0, SYSTEM)
    first = post(simulator, CHAT, body)
    second = post(simulator, CHAT, body)
    assert shape(second.json()) == shape(fixture("openai_chat.json"))
    assert first.json()["usage"] == usage_for(body, "compatible", "chat")
    assert second.json()["usage"] == usage_for(body, "compatible", "chat", cache_hit=True)
    assert second.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 256}
    # UNCERTAIN (reference §9.4): the id equals x-request-id on errors; assumed on success too
    assert second.json()["id"] == "chatcmpl-" + second.headers["x-request-id"]


def test_compatible_stream_matches_the_reference_with_include_usage(simulator):
    body = chat(stream=True, stream_options={"include_usage": True})
    response = post(simulator, CHAT, body)
    assert response.headers["content-type"] == "text/event-stream"
    events = compat_events(response.text)
    expected = compat_events((FIXTURES / "openai_chat_stream.sse").read_text())
    assert events[-1] == expected[-1] == "[DONE]"
    ours, theirs = [json.loads(e) for e in events[:-1]], [json.loads(e) for e in expected[:-1]]
    for index in (0, 1, -2, -1):  # role chunk, content chunk, finish chunk, usage chunk
        assert shape(ours[index]) == shape(theirs[index])
    assert ours[-1]["choices"] == [] and ours[-1]["usage"] == usage_for(body, "compatible", "chat")
    assert all(chunk["usage"] is None for chunk in ours[:-1])
    text = "".join(c["choices"][0]["delta"]["content"] for c in ours[:-1])
    assert text == post(simulator, CHAT, chat()).json()["choices"][0]["message"]["content"]


def test_compatible_stream_without_include_usage_has_no_usage(simulator):
    chunks = [
        json.loads(e) for e in compat_events(post(simulator, CHAT, chat(stream=True)).text)[:-1]
    ]
    assert all("usage" not in chunk and len(chunk["choices"]) == 1 for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_compatible_embeddings_match_the_reference_in_float_and_base64(simulator):
    body = {"model": "text-embedding-v4", "input": ["cost centre", "workspace"], "dimensions": 8}
    floats = post(simulator, EMBED, body).json()
    assert shape(floats) == shape(fixture("openai_embeddings.json"))
    assert (
        floats["usage"]
        == usage_for(body, "compatible", "embeddings")
        == {
            "prompt_tokens": 6,  # ceil(11 / 4) + ceil(9 / 4)
            "total_tokens": 6,
        }
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", floats["id"])
    packed = post(simulator, EMBED, {**body, "encoding_format": "base64"}).json()
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)


# --- native mode ----------------------------------------------------------------------------


def test_native_text_matches_the_reference_and_echoes_the_request_id(simulator):
    body = native(result_format="message")
    body["input"]["messages"].insert(0, SYSTEM)
    post(simulator, TEXT, body)
    response = post(simulator, TEXT, body)
    assert shape(response.json()) == shape(fixture("native_text.json"))
    assert response.json()["usage"] == usage_for(body, "native", "text-generation", cache_hit=True)
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_native_text_result_format_text(simulator):
    answer = post(simulator, TEXT, native(seed=1)).json()
    assert shape(answer) == {
        "output": {"finish_reason": "str", "text": "str"},
        "usage": {
            "input_tokens": "number",
            "output_tokens": "number",
            "total_tokens": "number",
            "prompt_tokens_details": {"cached_tokens": "number"},
        },
        "request_id": "str",
    }
    assert len(answer["output"]["text"].split()) == answer["usage"]["output_tokens"] == 17


def test_native_stream_matches_the_captured_framing_with_thinking(simulator):
    body = native(enable_thinking=True, incremental_output=True, result_format="message")
    events = native_events(post(simulator, TEXT, body, headers={**INTL, **SSE}).text)
    reference = native_events((FIXTURES / "native_text_stream.sse").read_text())
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    assert {(e[1], e[2]) for e in events} == {("result", 200)}
    assert shape(events[0][3]) == shape(reference[0][3])
    assert shape(events[-1][3]) == shape(reference[-1][3])
    reasons = [e[3]["output"]["choices"][0]["finish_reason"] for e in events]
    assert reasons == ["null"] * (len(events) - 1) + ["stop"]
    outputs = [e[3]["usage"]["output_tokens"] for e in events]
    assert outputs == sorted(outputs)  # cumulative, never a delta
    final = usage_for(body, "native", "text-generation")
    assert final == {**events[-1][3]["usage"], "prompt_tokens_details": {"cached_tokens": 0}}


def test_native_stream_without_incremental_output_repeats_the_text(simulator):
    events = native_events(post(simulator, TEXT, native(seed=3), headers={**INTL, **SSE}).text)
    texts = [e[3]["output"]["text"] for e in events]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert texts[-1] == post(simulator, TEXT, native(seed=3)).json()["output"]["text"]


def test_native_stream_with_two_choices_reports_usage_per_choice(simulator):
    body = native(n=2, seed=4, result_format="message", incremental_output=True)
    events = native_events(post(simulator, TEXT, body, headers={**INTL, **SSE}).text)
    last = {}
    for *_, data in events:
        (choice,) = data["output"]["choices"]
        last[choice["index"]] = data["usage"]
    assert sorted(last) == [0, 1]
    total = usage_for(body, "native", "text-generation")
    assert last[0]["input_tokens"] == last[1]["input_tokens"] == total["input_tokens"]
    assert last[0]["output_tokens"] + last[1]["output_tokens"] == total["output_tokens"] == 41


def test_native_multimodal_singapore_matches_the_reference(simulator):
    content = [{"image": "https://example.com/bill.png"}, {"text": "What is the total?"}]
    body = {"model": "qwen-vl-max", "input": {"messages": [{"role": "user", "content": content}]}}
    answer = post(simulator, MULTI, body).json()
    assert shape(answer) == shape(fixture("native_multimodal.json"))
    assert answer["usage"] == usage_for(body, "native", "multimodal-generation")
    assert answer["usage"]["image_tokens"] == 1024


@pytest.mark.parametrize(
    ("model", "cached"),
    [("qwen-vl-max", {"prompt_tokens_details": {"cached_tokens": 256}}),
     ("qwen3-vl-plus", {"cached_tokens": 256})],
)  # fmt: skip
def test_native_multimodal_beijing_has_no_total_and_its_own_cache_field(
    simulator_cn, model, cached
):
    system = {"role": "system", "content": [{"text": SYSTEM["content"]}]}
    user = {"role": "user", "content": [{"image": "https://example.com/a.png"}, {"text": "Sum?"}]}
    body = {"model": model, "input": {"messages": [system, user]}, "parameters": {"seed": 2}}
    post(simulator_cn, MULTI, body, headers=CN)
    usage = post(simulator_cn, MULTI, body, headers=CN).json()["usage"]
    assert usage == {"input_tokens": 1337, "output_tokens": 18, "image_tokens": 1024, **cached}
    assert usage == usage_for(
        body, "native", "multimodal-generation", region="cn-beijing", cache_hit=True
    )


def test_native_embeddings_match_the_reference(simulator):
    body = {
        "model": "text-embedding-v4",
        "input": {"texts": ["a", "bb"]},
        "parameters": {"dimension": 4},
    }
    answer = post(simulator, NATIVE_EMBED, body).json()
    assert shape(answer) == shape(fixture("native_embeddings.json"))
    assert answer["usage"] == {"total_tokens": 2}


# --- implicit cache and model list ----------------------------------------------------------


def test_implicit_cache_needs_a_repeated_long_prefix_on_a_canonical_model(simulator):
    def cached(model, system=SYSTEM):
        body = {"model": model, "messages": [system, {"role": "user", "content": "hi"}]}
        details = post(simulator, CHAT, body).json()["usage"].get("prompt_tokens_details")
        return details and details["cached_tokens"]

    assert [cached("qwen-plus"), cached("qwen-plus")] == [0, 256]
    assert [cached("qwen-plus-latest"), cached("qwen-plus-latest")] == [None, None]  # alias
    short = {"role": "system", "content": "Be brief."}
    assert [cached("qwen-flash", short), cached("qwen-flash", short)] == [0, 0]


def test_model_list_is_the_regions_price_book_with_aliases(simulator, simulator_cn):
    def status(sim, model, headers):
        return post(sim, CHAT, {**chat(), "model": model}, headers=headers).status_code

    assert status(simulator, "qwen3-max-2026-01-23", INTL) == 200
    assert status(simulator, "qwen-long", INTL) == 404  # mainland only
    assert status(simulator_cn, "qwen-long", CN) == 200
    assert status(simulator, "gpt-4o", INTL) == 404


def test_compatible_vision_chat_reports_text_and_image_tokens(simulator):
    content = [
        {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}},
        {"type": "text", "text": "Describe the chart."},  # 19 characters: 5 tokens
    ]
    body = {"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": content}], "seed": 0}
    usage = post(simulator, CHAT, body).json()["usage"]
    assert usage == {
        "prompt_tokens": 1036,
        "completion_tokens": 16,
        "total_tokens": 1052,
        "prompt_tokens_details": {"text_tokens": 12, "image_tokens": 1024, "cached_tokens": 0},
        "completion_tokens_details": {"text_tokens": 16},
    }


def test_requests_are_kept_as_received(simulator):
    post(simulator, CHAT, chat(), headers={**INTL, "X-Costsplit-Scenario": "triage"})
    (seen,) = simulator.requests
    assert (seen.method, seen.path, seen.json()) == ("POST", CHAT, chat())
    assert seen.headers["x-costsplit-scenario"] == "triage"


def test_cli_simulate_prints_its_base_url_and_serves(tmp_path):
    import subprocess
    import sys

    run_cli = "from costsplit.cli import main; main()"
    command = [sys.executable, "-c", run_cli, "simulate", "--region", "cn-beijing"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            base_url = process.stdout.readline().decode().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
            response = httpx.post(base_url + CHAT, json=chat(), headers=CN)
            assert response.status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=10)
