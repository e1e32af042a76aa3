"""The recording core on its own: exchanges fed by hand into a list-backed sink."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import re
import threading
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsplit import record
from costsplit.config import Settings, Workspace
from costsplit.errors import ModelNotGranted
from costsplit.events import UsageEvent, fingerprint_key
from costsplit.record import Recorder, classify, recording_errors, region_of_host, scenario

FIXTURES = Path(__file__).parent / "fixtures" / "dashscope"
KEY = "sk-" + "0123456789abcdef" * 2  # real-looking, built so no key-shaped literal is committed
INTL = "https://dashscope-intl.aliyuncs.com"
CHAT = f"{INTL}/compatible-mode/v1/chat/completions"
NATIVE = f"{INTL}/api/v1/services/aigc/text-generation/generation"
VOLATILE = ("event_id", "started_at", "latency_us", "first_byte_us")


class ListSink(list):
    def append(self, event: UsageEvent) -> None:
        super().append(event)


def without_usage_null(data: bytes) -> bytes:
    """Stream bytes as Model Studio sends them when include_usage was not asked for: the one
    "usage":null member (and a comma) it adds to each line gone."""
    member = re.compile(rb'"usage":null,|,"usage":null')
    return b"".join(member.sub(b"", line, 1) for line in data.splitlines(keepends=True))


def stable(event: UsageEvent) -> dict:
    return {k: v for k, v in dataclasses.asdict(event).items() if k not in VOLATILE}


def recorder(settings: Settings | None = None, **kwargs) -> tuple[Recorder, ListSink]:
    sink = ListSink()
    return Recorder(sink, settings or Settings(), **kwargs), sink


def headers(**extra: str) -> list[tuple[str, str]]:
    return [
        ("Authorization", f"Bearer {KEY}"),
        ("Content-Type", "application/json"),
        *extra.items(),
    ]


def test_classify_and_regions():
    assert classify("/compatible-mode/v1/chat/completions") == ("openai-compatible", "chat", False)
    assert classify("/compatible-mode/v1/embeddings") == ("openai-compatible", "embedding", False)
    assert classify("/compatible-mode/v1/batches") == ("openai-compatible", "other", True)
    assert classify("/api/v1/services/aigc/multimodal-generation/generation") == (
        "dashscope",
        "multimodal",
        False,
    )
    assert classify("/api/v1/services/embeddings/text-embedding/text-embedding") == (
        "dashscope",
        "embedding",
        False,
    )
    assert region_of_host("dashscope.aliyuncs.com") == ("cn-beijing", "")
    assert region_of_host("dashscope-us.aliyuncs.com") == ("us-east-1", "")
    assert region_of_host("cn-hongkong.dashscope.aliyuncs.com") == ("cn-hongkong", "")
    assert region_of_host("ws-756pfhanyfvqhdkw.eu-central-1.maas.aliyuncs.com") == (
        "eu-central-1",
        "ws-756pfhanyfvqhdkw",
    )
    assert region_of_host("token-plan.ap-southeast-1.maas.aliyuncs.com") == ("ap-southeast-1", "")
    assert region_of_host("127.0.0.1") == ("", "")


def test_non_streamed_compatible_call_gives_one_whole_event():
    rec, sink = recorder(scenario="support-bot", tags={"team": "care"})
    body = orjson.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]})
    ex = rec.begin("POST", CHAT, headers(), body)
    assert (ex.rewrites_headers, ex.request_body) == (False, None)
    ex.response(200, [("content-type", "application/json"), ("x-request-id", "rid-1")])
    assert ex.chunk((FIXTURES / "openai_chat.json").read_bytes()) != b""
    assert ex.end() == b""
    ex.close()
    [event] = sink
    assert stable(event) == stable(
        UsageEvent(
            recorder="client",
            api_style="openai-compatible",
            endpoint="chat",
            host="dashscope-intl.aliyuncs.com",
            region="ap-southeast-1",
            key_fingerprint=fingerprint_key(KEY),
            key_hint="…cdef",
            scenario="support-bot",
            tags={"team": "care"},
            model_requested="qwen-plus",
            model_returned="qwen-plus",
            request_id="rid-1",
            http_status=200,
            usage_source="reported",
            input_tokens=3019,
            output_tokens=420,
            total_tokens=3439,
            cached_tokens=2048,
            reasoning_tokens=311,
        )
    )
    assert event.latency_us >= 0 and event.first_byte_us is not None


def test_scenario_precedence_and_header_removal():
    rec, sink = recorder(scenario="default", tags={"a": "1", "b": "1"})
    with scenario("ctx", b="2", c="2"):
        ex = rec.begin(
            "POST",
            CHAT,
            headers(**{"X-Costsplit-Scenario": "hdr", "X-Costsplit-Tag-C": "3"}),
            b'{"model":"qwen-flash"}',
        )
    assert ex.rewrites_headers
    assert ex.outgoing_headers(headers(**{"X-Costsplit-Scenario": "hdr"})) == headers()
    ex.error(TimeoutError("boom"))
    [event] = sink
    assert (event.scenario, event.tags) == ("hdr", {"a": "1", "b": "2", "c": "3"})
    assert (event.outcome, event.error_code, event.http_status) == (
        "network_error",
        "TimeoutError",
        None,
    )


def test_tag_values_are_recorded_as_text():
    rec, sink = recorder(tags={"build": 42})
    with scenario("nightly", run=7, dry=False):
        rec.begin("POST", CHAT, headers(), b'{"model":"qwen-flash"}').error(TimeoutError())
    [event] = sink
    assert event.tags == {"build": "42", "run": "7", "dry": "False"}


def test_closed_before_any_response_is_interrupted_with_the_input_estimate():
    # A proxy caller gone while the request is upstream: Model Studio may bill the call.
    rec, sink = recorder()
    body = orjson.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": "x" * 20}]})
    rec.begin("POST", CHAT, headers(), body).close()
    [event] = sink
    # 20 ASCII characters → 6 tokens.
    assert (event.outcome, event.error_code, event.http_status, event.usage_source) == (
        "interrupted",
        "",
        None,
        "estimated",
    )
    assert (event.input_tokens, event.output_tokens, event.total_tokens) == (6, 0, 6)


def test_a_request_body_with_leading_whitespace_is_read_as_json():
    rec, sink = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'\n  {"model":"qwen-flash","stream":true}')
    assert ex.request_body is not None  # a compatible stream: include_usage injected
    assert orjson.loads(ex.request_body)["stream_options"] == {"include_usage": True}
    ex.close()
    [event] = sink
    assert (event.model_requested, event.streamed) == ("qwen-flash", True)


def test_scenario_is_context_local_across_threads():
    rec, _ = recorder()
    seen = {}

    def call(name):
        with scenario(name):
            seen[name] = rec.begin("POST", CHAT, headers(), b"{}")

    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {name: ex.event.scenario for name, ex in seen.items()} == {"a": "a", "b": "b"}


def test_workspace_from_key_mapping_then_header_then_host():
    support = Workspace(id="ws-support", name="Support", region="ap-southeast-1",
                        key_fingerprints=(fingerprint_key(KEY),))  # fmt: skip
    rec, _ = recorder(Settings(workspaces=(support,)))
    assert rec.begin("POST", CHAT, headers(), b"{}").event.workspace_observed == "ws-support"
    rec, _ = recorder()
    ex = rec.begin("POST", CHAT, headers(**{"X-DashScope-WorkSpace": "llm-abc"}), b"{}")
    assert ex.event.workspace_observed == "llm-abc"
    host = "https://ws-756pfhanyfvqhdkw.cn-beijing.maas.aliyuncs.com/compatible-mode/v1/embeddings"
    ex = rec.begin("POST", host, headers(), b"{}")
    assert (ex.event.workspace_observed, ex.event.region) == ("ws-756pfhanyfvqhdkw", "cn-beijing")


def test_plan_keys_and_hosts():
    rec, _ = recorder()
    plan_key = [("Authorization", "Bearer sk-sp-0123456789abcdef")]
    assert rec.begin("POST", CHAT, plan_key, b"{}").event.billing_plan == "plan"
    plan_host = (
        "https://token-plan.cn-beijing.maas.aliyuncs.com/compatible-mode/v1/chat/completions"
    )
    event = rec.begin("POST", plan_host, headers(), b"{}").event
    assert (event.billing_plan, event.region, event.workspace_observed) == (
        "plan",
        "cn-beijing",
        "",
    )
    assert rec.begin("POST", CHAT, headers(), b"{}").event.billing_plan == "payg"


def test_grants_enforced_before_io():
    support = Workspace(
        id="ws-support",
        name="Support",
        region="ap-southeast-1",
        models=("qwen-plus",),
        key_fingerprints=(fingerprint_key(KEY),),
    )
    rec, sink = recorder(Settings(workspaces=(support,), enforce_grants=True))
    with pytest.raises(ModelNotGranted, match="qwen3-max"):
        rec.begin("POST", CHAT, headers(), b'{"model":"qwen3-max"}')
    [event] = sink
    assert (event.outcome, event.error_code, event.workspace_observed, event.http_status) == (
        "denied_local",
        "ModelNotGranted",
        "ws-support",
        None,
    )
    rec.begin("POST", CHAT, headers(), b'{"model":"qwen-plus"}')
    rec, sink = recorder(Settings(workspaces=(support,), enforce_grants=False))
    rec.begin("POST", CHAT, headers(), b'{"model":"qwen3-max"}').close()
    assert len(sink) == 1


def test_include_usage_injected_and_usage_chunk_removed_chunk_for_chunk():
    rec, sink = recorder()
    body = b'{"model":"qwen-flash","stream":true,"messages":[]}'
    ex = rec.begin("POST", CHAT, [*headers(), ("Content-Length", str(len(body)))], body)
    assert orjson.loads(ex.request_body) == {
        "model": "qwen-flash",
        "stream": True,
        "messages": [],
        "stream_options": {"include_usage": True},
    }
    assert ex.rewrites_headers
    sent = ex.outgoing_headers([*headers(), ("Content-Length", str(len(body)))])
    assert sent == [
        *headers(),
        ("Content-Length", str(len(ex.request_body))),
        ("Accept-Encoding", "identity"),
    ]
    ex.response(200, [("content-type", "text/event-stream")])
    events = (FIXTURES / "openai_chat_stream.sse").read_bytes().split(b"\n\n")
    chunks = [e + b"\n\n" for e in events if e]
    received = [ex.chunk(c) for c in chunks]
    # Without include_usage Model Studio sends no "usage" member at all: the injected
    # "usage":null goes too, and the usage-only chunk as a whole.
    assert received == [without_usage_null(c) if b'"choices":[]' not in c else b"" for c in chunks]
    assert all(b'"usage"' not in r for r in received)
    ex.end()
    [event] = sink
    assert (event.outcome, event.usage_source, event.input_tokens, event.output_tokens) == (
        "ok",
        "reported",
        58,
        9,
    )
    assert (event.streamed, event.model_returned) == (True, "qwen-flash")


def test_include_usage_is_spliced_in_and_the_caller_s_bytes_stay_as_written():
    rec, _ = recorder()
    body = b'{"model":"qwen-flash", "stream":true,"temperature":1e-1,"text":"caf\\u00e9"}'
    sent = rec.begin("POST", CHAT, headers(), body).request_body
    assert sent == b'{"stream_options":{"include_usage":true},' + body[1:]
    sse = headers(**{"X-DashScope-SSE": "enable"})  # streamed by header, the object empty
    sent = rec.begin("POST", CHAT, sse, b"{ }").request_body
    assert sent == b'{"stream_options":{"include_usage":true} }'
    # stream_options given, but as null or without include_usage: the body is written anew,
    # with one stream_options member
    for given_options in (b"null", b'{"continuous_usage_stats":false}'):
        body = b'{"model":"m","stream":true,"stream_options":' + given_options + b"}"
        sent = rec.begin("POST", CHAT, headers(), body).request_body
        assert sent.count(b'"stream_options"') == 1
        options = orjson.loads(sent)["stream_options"]
        assert options == {**(orjson.loads(given_options) or {}), "include_usage": True}


request_members = st.dictionaries(
    st.sampled_from(["model", "messages", "n", "temperature", "stream_options", "x"]),
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=4)
    | st.lists(st.text(max_size=3)),
    max_size=4,
)


@given(request_members, st.booleans(), st.sampled_from([b"", b" ", b"\n  "]))
def test_any_streamed_request_asks_for_usage_once_and_keeps_the_rest(members, indent, space):
    request = {**members, "stream": True}
    body = space + orjson.dumps(request, option=orjson.OPT_INDENT_2 if indent else 0)
    rec, _ = recorder()
    sent = rec.begin("POST", CHAT, headers(), body).request_body
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        assert sent is None  # not understood: left alone
        return
    assert sent.count(b'"stream_options"') == 1
    assert orjson.loads(sent) == {**request, "stream_options": {"include_usage": True}}


def test_usage_chunk_removed_across_odd_chunk_boundaries():
    rec, _ = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"qwen-flash","stream":true}')
    ex.response(200, [("content-type", "text/event-stream; charset=utf-8")])
    data = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    out = b"".join(ex.chunk(data[i : i + 7]) for i in range(0, len(data), 7)) + ex.end()
    usage_event = next(e for e in data.split(b"\n\n") if b'"choices":[]' in e) + b"\n\n"
    assert out == without_usage_null(data.replace(usage_event, b""))


STREAM_EVENTS = [
    e + b"\n\n" for e in (FIXTURES / "openai_chat_stream.sse").read_bytes().split(b"\n\n") if e
]
# The member where Model Studio writes it, at an object's end, twice, or alone in a line.
MEMBER_VARIANTS = [
    lambda e: e,
    lambda e: e.replace(b'"usage":null,', b"").replace(b"}\n\n", b',"usage":null}\n\n', 1),
    lambda e: e.replace(b'"usage":null,', b'"usage":null,"usage":null,'),
    lambda e: e.replace(b"\n\n", b'\n: {"usage":null}\n\n', 1),
]


@given(
    variants=st.lists(st.integers(0, len(MEMBER_VARIANTS) - 1), min_size=1, max_size=9),
    cuts=st.lists(st.integers(1, 300), max_size=12),
    whole_events=st.booleans(),
)
def test_stream_filter_gives_the_same_bytes_however_the_stream_is_cut(variants, cuts, whole_events):
    # Whole events one per chunk take the fast path; any other cut the line-by-line one.
    events = [
        MEMBER_VARIANTS[v](e) if b'"usage":null' in e else e
        for v, e in zip(variants * 9, STREAM_EVENTS, strict=False)
    ]
    events += STREAM_EVENTS[len(events) :]
    data = b"".join(events)
    if whole_events:
        chunks = events
    else:
        bounds = sorted({min(c * 7, len(data)) for c in cuts} | {0, len(data)})
        chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    rec, sink = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"qwen-flash","stream":true}')
    ex.response(200, [("content-type", "text/event-stream")])
    out = b"".join(ex.chunk(c) for c in chunks) + ex.end()
    usage_event = next(e for e in events if b'"choices":[]' in e)
    assert out == without_usage_null(data.replace(usage_event, b""))
    [event] = sink
    assert (event.outcome, event.input_tokens, event.output_tokens) == ("ok", 58, 9)


@given(
    st.lists(
        st.lists(st.sampled_from([b'"usage":null', b",", b"x", b'"', b"{}"]), max_size=8).map(
            lambda parts: b"data: " + b"".join(parts) + b"\n\n"
        ),
        min_size=1,
        max_size=4,
    )
)
def test_usage_null_members_go_however_commas_sit(events):
    rec, _ = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"qwen-flash","stream":true}')
    ex.response(200, [("content-type", "text/event-stream")])
    assert b"".join(ex.chunk(e) for e in events) + ex.end() == without_usage_null(b"".join(events))


USAGE_EVENT = next(e for e in STREAM_EVENTS if b'"choices":[]' in e)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-where-built", "python"])
def test_a_chunk_ending_one_byte_into_the_next_line_carries_that_byte(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(record, "filter_chunk", record.Exchange.filter)
    data = b"".join(STREAM_EVENTS)
    at = data.index(USAGE_EVENT)
    # "...}\n" | "\nd" | "ata: {usage-only}\n\n..." : the "d" starts the usage-only line
    chunks = [data[: at - 1], data[at - 1 : at + 1], data[at + 1 :]]
    rec, _ = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"qwen-flash","stream":true}')
    ex.response(200, [("content-type", "text/event-stream")])
    out = b"".join(ex.chunk(c) for c in chunks) + ex.end()
    assert out == without_usage_null(data.replace(USAGE_EVENT, b""))


# How a stream may end after its content: Model Studio's usual end first, then ends that only
# a whole parse reads right (no [DONE], an error, a usage unreadable or missing, another event
# or a field line before or after the usage).
STREAM_ENDS = [
    [USAGE_EVENT, b"data: [DONE]\n\n"],
    [USAGE_EVENT.replace(b"data: ", b"data:"), b"data:[DONE]\n\n"],
    [USAGE_EVENT],
    [USAGE_EVENT, b"data: [DONE]\n"],
    [
        USAGE_EVENT.replace(b'"usage":{', b'"error":{"code":"Throttling"},"usage":{'),
        b"data: [DONE]\n\n",
    ],
    [USAGE_EVENT.replace(b'"prompt_tokens":58', b'"prompt_tokens":"58"'), b"data: [DONE]\n\n"],
    [USAGE_EVENT.replace(b'"usage":{', b'"usage_":{'), b"data: [DONE]\n\n"],
    [b"event: error\n", USAGE_EVENT, b"data: [DONE]\n\n"],
    [USAGE_EVENT, b": ping\n\n", b"data: [DONE]\n\n"],
    [USAGE_EVENT, STREAM_EVENTS[1]],
    [USAGE_EVENT.replace(b"\n\n", b"\r\n\r\n"), b"data: [DONE]\n\n"],
    [b"data: [DONE]\n\n"],
]


@given(end=st.sampled_from(STREAM_ENDS), asked=st.booleans(), content=st.integers(1, 6))
def test_a_stream_gives_the_same_event_read_chunk_by_chunk_or_whole(end, asked, content):
    # Chunk by chunk, the usual end is read from its last event alone; whole, by the full parse.
    chunks = [e for e in STREAM_EVENTS if e != USAGE_EVENT][:content] + end
    options = b',"stream_options":{"include_usage":true}' if asked else b""
    events = []
    for pieces in (chunks, [b"".join(chunks)]):
        rec, sink = recorder()
        ex = rec.begin(
            "POST", CHAT, headers(), b'{"model":"qwen-flash","stream":true' + options + b"}"
        )
        ex.response(200, [("content-type", "text/event-stream")])
        for piece in pieces:
            ex.chunk(piece)
        ex.end()
        [event] = sink
        events.append(stable(event))
    assert events[0] == events[1]


ANSWER_USAGE = st.none() | st.fixed_dictionaries(
    {"prompt_tokens": st.integers(-1, 99), "completion_tokens": st.integers(0, 99)},
    optional={
        "total_tokens": st.integers(-1, 300) | st.floats(0, 9),
        "prompt_tokens_details": st.dictionaries(
            st.sampled_from(["cached_tokens", "cache_type", "image_tokens"]),
            st.integers(-1, 150) | st.just("ephemeral"),
        ),
        "plugins": st.just({"search": {"count": 1}}),
    },
)
ANSWER_EXTRAS = st.sampled_from(
    [{}, {"model": 5}, {"code": "x"}, {"request_id": "r-body"}, {"error": {"code": "E"}}, {"id": 7}]
)


@given(ANSWER_USAGE, ANSWER_EXTRAS, st.sampled_from(["chat", "native"]), st.booleans())
def test_an_answer_gives_the_same_event_with_or_without_the_compiled_fill(
    usage, extras, style, streamed
):
    # Non-streamed bodies and streams' usage events, compatible and native: the event does not
    # depend on which path filled it.
    answer = {"id": "chatcmpl-1", "model": "qwen-plus", "choices": [], **extras}
    if usage is not None:
        answer["usage"] = usage
    body = b'{"model":"qwen-plus","stream":true}' if streamed else b'{"model":"qwen-plus"}'
    data = orjson.dumps(answer)
    if streamed:
        data = b"".join(STREAM_EVENTS[:2]) + b"data: " + data + b"\n\ndata: [DONE]\n\n"
    events = []
    for compiled in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not compiled:
                patch.setattr(record, "fill_usual_end", lambda *args: False)
            rec, sink = recorder()
            ex = rec.begin("POST", CHAT if style == "chat" else NATIVE, headers(), body)
            content_type = "text/event-stream" if streamed else "application/json"
            ex.response(200, [("content-type", content_type), ("x-request-id", "r-header")])
            for piece in [data] if not streamed else data.split(b"\n\n")[:-1]:
                ex.chunk(piece + (b"\n\n" if streamed else b""))
            ex.end()
            [event] = sink
            events.append(stable(event))
    assert events[0] == events[1]


def test_caller_asked_for_usage_gets_it():
    rec, _ = recorder()
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    ex = rec.begin("POST", CHAT, headers(), body)
    assert ex.request_body is None
    ex.response(200, [("content-type", "text/event-stream")])
    data = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    assert ex.chunk(data) == data


def test_abandoned_compatible_stream_is_interrupted_with_estimates():
    rec, sink = recorder()
    message = {"role": "user", "content": "Summarise March spend."}
    body = orjson.dumps({"model": "qwen-flash", "stream": True, "messages": [message]})
    ex = rec.begin("POST", CHAT, headers(), body)
    ex.response(200, [("content-type", "text/event-stream")])
    events = (FIXTURES / "openai_chat_stream.sse").read_bytes().split(b"\n\n")
    for e in events[:3]:
        ex.chunk(e + b"\n\n")
    ex.close()
    [event] = sink
    # "Workspace" + " spend for March" = 25 ASCII characters → ceil(7.5) = 8 tokens;
    # the request text "Summarise March spend." = 22 characters → ceil(6.6) = 7 tokens.
    assert (event.outcome, event.usage_source) == ("interrupted", "estimated")
    assert (event.input_tokens, event.output_tokens, event.total_tokens) == (7, 8, 15)


def test_broken_native_stream_keeps_the_last_cumulative_usage():
    rec, sink = recorder()
    ex = rec.begin(
        "POST", NATIVE, headers(**{"X-DashScope-SSE": "enable"}), b'{"model":"qwen-plus"}'
    )
    assert ex.request_body is None
    ex.response(200, [("content-type", "text/event-stream;charset=UTF-8")])
    events = (FIXTURES / "native_text_stream.sse").read_bytes().split(b"\n\n")
    for e in events[:3]:
        ex.chunk(e + b"\n\n")
    ex.error(ConnectionResetError())
    [event] = sink
    assert (event.outcome, event.usage_source, event.output_tokens, event.reasoning_tokens) == (
        "interrupted",
        "estimated",
        14,
        10,
    )
    assert (event.model_requested, event.model_returned) == ("qwen-plus", "")


def test_caller_closing_after_done_is_ok():
    rec, sink = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"m","stream":true}')
    ex.response(200, [("content-type", "text/event-stream")])
    ex.chunk((FIXTURES / "openai_chat_stream.sse").read_bytes())
    ex.close()
    assert sink[0].outcome == "ok"


@pytest.mark.parametrize(
    ("status", "name", "outcome", "code", "request_id"),
    [
        (403, "openai_error_access_denied.json", "denied", "Model.AccessDenied",
         "5d2c8e91-04ab-9c7f-a3e6-1b9f0d27c8a4"),
        (403, "native_error_access_denied.json", "denied", "Model.AccessDenied",
         "c81f2a40-6e3d-9b57-a1c4-7f0e92d5b316"),
    ],
)  # fmt: skip
def test_error_envelopes(status, name, outcome, code, request_id):
    rec, sink = recorder()
    ex = rec.begin("POST", NATIVE, headers(), b'{"model":"qwen3-max"}')
    ex.response(status, [("content-type", "application/json"), ("x-request-id", "other")])
    ex.chunk((FIXTURES / name).read_bytes())
    ex.end()
    [event] = sink
    assert (event.outcome, event.error_code, event.request_id, event.http_status) == (
        outcome,
        code,
        request_id,
        status,
    )
    assert (event.usage_source, event.input_tokens) == ("missing", 0)


def test_recording_failures_are_counted_never_raised():
    class Broken:
        def append(self, event):
            raise OSError("disk full")

    rec = Recorder(Broken(), Settings())
    before = recording_errors()
    ex = rec.begin("POST", CHAT, headers(), b"{}")
    ex.response(200, [])
    assert ex.chunk(b"{}") == b"{}"
    ex.end()
    assert recording_errors() == before + 1


def test_gzip_body_is_decoded_for_parsing_only():
    rec, sink = recorder()
    ex = rec.begin("POST", CHAT, headers(), b'{"model":"qwen-plus"}')
    ex.response(200, [("content-type", "application/json"), ("content-encoding", "gzip")])
    compressed = gzip.compress((FIXTURES / "openai_chat.json").read_bytes())
    assert ex.chunk(compressed) == compressed
    ex.end()
    assert (sink[0].usage_source, sink[0].input_tokens) == ("reported", 3019)
