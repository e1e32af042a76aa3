"""Usage normalisation and stream parsing, on the reference fixtures and hand-built bodies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from costsplit.usage import (
    BodyFacts,
    StreamText,
    Usage,
    estimate_tokens,
    iter_events,
    load_json,
    may_be_object,
    normalise_usage,
    parse_body,
    parse_stream,
    request_text,
)

FIXTURES = Path(__file__).parent / "fixtures" / "dashscope"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_compatible_chat_thinking_with_cache():
    assert parse_body(fixture("openai_chat.json")) == BodyFacts(
        usage=Usage(
            input_tokens=3019,
            output_tokens=420,
            total_tokens=3439,
            cached_tokens=2048,
            reasoning_tokens=311,
        ),
        response_id="chatcmpl-3b7e1c52-8d4a-9f10-b6c2-5a0e7d91c4f8",
        model="qwen-plus",
    )


def test_native_text_with_cache():
    assert parse_body(fixture("native_text.json")) == BodyFacts(
        usage=Usage(input_tokens=3019, output_tokens=101, total_tokens=3120, cached_tokens=2048),
        request_id="f3acaa33-e248-97bb-96d5-cbeed34699e1",
    )


def test_native_multimodal_cached_tokens_at_top_level():
    facts = parse_body(fixture("native_multimodal.json"), "multimodal")
    assert facts.usage == Usage(
        input_tokens=1292,
        output_tokens=87,
        total_tokens=1379,
        cached_tokens=1152,
        image_tokens=1249,
    )


def test_native_multimodal_without_total_uses_input_plus_output():
    body = orjson.loads(fixture("native_multimodal.json"))
    del body["usage"]["total_tokens"]
    assert parse_body(orjson.dumps(body), "multimodal").usage.total_tokens == 1292 + 87


def test_cached_tokens_in_input_tokens_details():
    usage = {"input_tokens": 100, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 64}}
    assert normalise_usage(usage).cached_tokens == 64


def test_embeddings_both_styles_are_input_tokens():
    native = parse_body(fixture("native_embeddings.json"), "embedding")
    assert native.usage == Usage(input_tokens=14, total_tokens=14)
    assert native.request_id == "1773f7b2-2148-9f74-b335-b413e398a116"
    compatible = parse_body(fixture("openai_embeddings.json"), "embedding")
    assert compatible.usage == Usage(input_tokens=23, total_tokens=23)
    assert (compatible.model, compatible.response_id) == (
        "text-embedding-v4",
        "d2538ad0-30dd-9fcf-bcbd-06bbbce70d06",
    )


def test_plugins_image_count_audio_and_cache_creation():
    usage = {
        "input_tokens": 900,
        "output_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_input_tokens": 700},
        "output_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 25},
        "audio_tokens": 50,
        "plugins": {"search": {"count": 2, "strategy": "turbo"}, "code_interpreter": {"count": 1}},
    }
    assert normalise_usage(usage) == Usage(
        input_tokens=900,
        output_tokens=40,
        total_tokens=940,
        cached_tokens=100,
        cache_creation_tokens=700,
        reasoning_tokens=10,
        audio_tokens=50,
        audio_output_tokens=25,
        plugins={"search": 2, "code_interpreter": 1},
    )
    assert normalise_usage({"image_count": 1, "width": 1664, "height": 928}) == Usage(image_count=1)


def test_explicit_cache_hit_keeps_the_reported_cache_type():
    # An explicit-cache hit has no creation tokens: only cache_type tells it from an implicit
    # hit, and the two are priced differently (10% against 20% of input).
    compatible = {
        "prompt_tokens": 3000,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_type": "ephemeral"},
    }
    native = {
        "input_tokens": 3000,
        "output_tokens": 20,
        "input_tokens_details": {"cached_tokens": 2048, "cache_type": "ephemeral"},
    }
    expected = Usage(
        input_tokens=3000, output_tokens=20, total_tokens=3020, cached_tokens=2048,
        cache_type="ephemeral",
    )  # fmt: skip
    assert normalise_usage(compatible) == expected
    assert normalise_usage(native) == expected


def test_no_usage_and_junk():
    assert normalise_usage(None) is None
    assert normalise_usage({"foo": 1}) is None
    assert normalise_usage({"prompt_tokens": -5, "completion_tokens": True}) is None
    assert parse_body(b"not json") == BodyFacts()


def test_inconsistent_counts_are_clamped():
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 9},
    }
    assert normalise_usage(usage) == Usage(
        input_tokens=10, output_tokens=5, total_tokens=15, cached_tokens=10, reasoning_tokens=5
    )


def test_error_envelopes_of_both_styles():
    assert parse_body(fixture("openai_error_access_denied.json")) == BodyFacts(
        request_id="5d2c8e91-04ab-9c7f-a3e6-1b9f0d27c8a4",
        response_id="chatcmpl-5d2c8e91-04ab-9c7f-a3e6-1b9f0d27c8a4",
        error_code="Model.AccessDenied",
    )
    assert parse_body(fixture("native_error_access_denied.json")) == BodyFacts(
        request_id="c81f2a40-6e3d-9b57-a1c4-7f0e92d5b316", error_code="Model.AccessDenied"
    )
    no_code = b'{"error":{"message":"x","type":"invalid_request_error"}}'
    assert parse_body(no_code).error_code == "invalid_request_error"


def test_compatible_stream_fixture():
    assert parse_stream(fixture("openai_chat_stream.sse"), "openai-compatible") == BodyFacts(
        usage=Usage(input_tokens=58, output_tokens=9, total_tokens=67),
        response_id="chatcmpl-9c41d0e7-2f6b-9a3e-8d15-c7a2b0f46e19",
        model="qwen-flash",
        done=True,
    )


def test_native_stream_fixture_last_chunk_wins():
    assert parse_stream(fixture("native_text_stream.sse"), "dashscope") == BodyFacts(
        usage=Usage(input_tokens=16, output_tokens=18, total_tokens=34, reasoning_tokens=10),
        request_id="ab9f3446-9bbf-963e-9754-2d6543343d7e",
        done=True,
    )


def test_native_stream_without_blank_lines():
    data = fixture("native_text_stream.sse").replace(b"\n\n", b"\n")
    facts = parse_stream(data, "dashscope")
    assert (facts.usage.output_tokens, facts.done) == (18, True)


def test_native_stream_cut_after_three_chunks_is_not_done():
    data = b"".join(fixture("native_text_stream.sse").split(b"\n\n")[:3])
    facts = parse_stream(data.replace(b"}id:", b"}\n\nid:"), "dashscope")
    assert (facts.usage.output_tokens, facts.usage.reasoning_tokens, facts.done) == (14, 10, False)


def native_event(index: int, output: int, reason: str = "null") -> bytes:
    body = {
        "output": {
            "choices": [{"index": index, "message": {"content": "x"}, "finish_reason": reason}]
        },
        "usage": {"input_tokens": 8, "output_tokens": output, "total_tokens": 8 + output},
        "request_id": "r-1",
    }
    return b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:" + orjson.dumps(body) + b"\n\n"


def test_native_stream_n2_sums_the_last_usage_of_each_choice():
    steps = [(0, 1, "null"), (1, 1, "null"), (0, 5, "stop"), (1, 3, "null"), (1, 7, "stop")]
    data = b"".join(native_event(*step) for step in steps)
    facts = parse_stream(data, "dashscope", choices=2)
    assert facts.usage == Usage(input_tokens=8, output_tokens=12, total_tokens=20)
    assert facts.done


def test_native_error_event_in_a_200_stream():
    data = native_event(0, 3) + (
        b'id:2\nevent:error\n:HTTP_STATUS/400\ndata:{"code":"InvalidParameter",'
        b'"message":"Role must be user or assistant","request_id":"7671ecd8"}\n\n'
    )
    facts = parse_stream(data, "dashscope")
    assert (facts.error_code, facts.error_status, facts.done) == ("InvalidParameter", 400, False)
    assert facts.usage.output_tokens == 3


def test_iter_events_both_framings():
    events = list(iter_events(fixture("native_text_stream.sse")))
    assert [(e.event, e.status) for e in events] == [("result", 200)] * 5
    compatible = list(iter_events(fixture("openai_chat_stream.sse")))
    assert compatible[-1].data == b"[DONE]" and compatible[0].event == "message"


def test_estimates_from_stream_text_and_request():
    text = StreamText()
    text.feed(fixture("openai_chat_stream.sse"), "openai-compatible")
    answer = "Workspace spend for March is within budget."
    assert text.estimate(7) == Usage(
        input_tokens=7, output_tokens=estimate_tokens(answer), total_tokens=7 + 13
    )
    assert estimate_tokens(answer) == 13  # ceil(43 × 0.3)
    assert estimate_tokens("你好") == 2  # ceil(2 × 0.6)
    native = StreamText()
    native.feed(fixture("native_text_stream.sse"), "dashscope")
    assert native.estimate(0).reasoning_tokens == estimate_tokens("The user asks for a sum.")
    cumulative = StreamText(cumulative=True)
    cumulative.feed(native_event(0, 1) + native_event(0, 2), "dashscope")
    assert cumulative.content == {0: ["x"]}
    request = {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"}]}]}
    assert request_text(request) == "ab"
    assert request_text({"input": {"messages": [{"content": "hi"}], "texts": ["a"]}}) == "hia"


def consistent(usage: Usage | None) -> bool:
    if usage is None:
        return True
    values = dataclasses.asdict(usage)
    plugins = values.pop("plugins")
    assert type(values.pop("cache_type")) is str
    return (
        all(type(v) is int and v >= 0 for v in values.values())
        and all(type(v) is int and v >= 0 for v in plugins.values())
        and usage.cached_tokens + usage.cache_creation_tokens <= usage.input_tokens
        and usage.image_tokens + usage.audio_tokens + usage.video_tokens <= usage.input_tokens
        and usage.reasoning_tokens + usage.audio_output_tokens <= usage.output_tokens
        and usage.total_tokens >= usage.input_tokens + usage.output_tokens
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            [
                "usage", "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
                "total_tokens", "cached_tokens", "prompt_tokens_details", "input_tokens_details",
                "output_tokens_details", "completion_tokens_details", "reasoning_tokens",
                "image_tokens", "plugins", "count", "error", "code", "choices", "output",
                "index", "finish_reason", "request_id", "id", "model",
            ]
        ),
        children,
        max_size=6,
    ),
    max_leaves=30,
)  # fmt: skip


@given(json_values)
def test_any_json_gives_consistent_usage(value):
    body = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) if value == value else b"{}"
    for endpoint in ("chat", "embedding"):
        assert consistent(parse_body(body, endpoint).usage)
        assert consistent(normalise_usage(value, endpoint))


@given(json_values, st.sampled_from([b"", b" ", b"\n\t ", b"\r\n"]))
def test_a_payload_is_parsed_whenever_it_may_be_an_object(value, space):
    # ``may_be_object`` spares the parse of ``[DONE]`` and the like; it never skips an object.
    payload = space + (
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) if value == value else b"{}"
    )
    if isinstance(load_json(payload), dict):
        assert may_be_object(payload)
    assert not may_be_object(b"[DONE]")
    assert not may_be_object(b"")


@given(
    st.binary(max_size=400), st.sampled_from(["dashscope", "openai-compatible"]), st.integers(1, 3)
)
def test_any_bytes_as_a_stream_never_raise(data, style, n):
    assert consistent(parse_stream(data, style, choices=n).usage)
    text = StreamText()
    text.feed(data, style)
    assert consistent(text.estimate(0))


@given(st.integers(0, 1700), st.sampled_from(["native_text_stream.sse", "openai_chat_stream.sse"]))
def test_truncated_fixture_streams(cut, name):
    data = fixture(name)[:cut]
    style = "dashscope" if name.startswith("native") else "openai-compatible"
    facts = parse_stream(data, style)
    assert consistent(facts.usage)
    assert not facts.done or cut >= len(fixture(name)) - 20


def test_details_of_one_style_read_key_by_key_as_the_full_lookup():
    compatible = {
        "prompt_tokens": 900,
        "completion_tokens": 300,
        "total_tokens": 1200,
        "prompt_tokens_details": {"cached_tokens": 256, "audio_tokens": 40, "text_tokens": 860},
        "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": True},
    }
    assert normalise_usage(compatible) == Usage(
        900, 300, 1200, cached_tokens=256, audio_tokens=40, reasoning_tokens=200
    )
    native = {
        "input_tokens": 1000,
        "output_tokens": 20,
        "input_tokens_details": {"image_tokens": 800, "cache_type": "ephemeral", "x": 1},
        "output_tokens_details": "junk",
    }
    assert normalise_usage(native) == Usage(
        1000, 20, 1020, image_tokens=800, cache_type="ephemeral"
    )
