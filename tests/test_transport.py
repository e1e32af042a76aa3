"""The httpx recording transport: native calls on the simulator, reference fixtures replayed."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import duckdb
import httpx
import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import costsplit
from costsplit.config import load_settings
from costsplit.events import UsageEvent, fingerprint_key, line_fields
from costsplit.ingest import ingest_spool
from costsplit.simulator import usage_for
from costsplit.spool import spooled_lines
from costsplit.transport import RecordingTransport, _already_read
from costsplit.transport_httpx2 import Httpx2RecordingTransport

FIXTURES = Path(__file__).parent / "fixtures" / "dashscope"
KEY = "sk-sim-default-intl"
INTL = "https://dashscope-intl.aliyuncs.com"
NATIVE_PATHS = {
    "text-generation": "/api/v1/services/aigc/text-generation/generation",
    "multimodal-generation": "/api/v1/services/aigc/multimodal-generation/generation",
    "text-embedding": "/api/v1/services/embeddings/text-embedding/text-embedding",
}
VOLATILE = ("event_id", "started_at", "latency_us", "first_byte_us")


class ListSink(list):
    def append(self, event: UsageEvent) -> None:
        super().append(event)


def stable(event: UsageEvent) -> dict:
    return {k: v for k, v in dataclasses.asdict(event).items() if k not in VOLATILE}


def spooled(settings) -> list[dict]:
    return [line_fields(line) for line in spooled_lines(settings.spool_dir)]


# -- native calls against the simulator -----------------------------------------------------


def native_call(simulator, endpoint: str, body: dict, *, stream: bool = False, fault: str = ""):
    settings = load_settings()
    headers = {"Authorization": f"Bearer {KEY}"}
    if stream:
        headers["X-DashScope-SSE"] = "enable"
    if fault:
        headers["X-Simulator-Fault"] = fault
    with costsplit.recording_httpx_client(settings, region=simulator.region) as client:
        url = simulator.base_url + NATIVE_PATHS[endpoint]
        with client.stream("POST", url, json=body, headers=headers) as response:
            received = response.read()
    [event] = spooled(settings)
    return event, received


def wire_numbers(usage: dict) -> dict:
    details = usage.get("input_tokens_details") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return {
        "input_tokens": usage.get("input_tokens", usage.get("total_tokens")),
        "output_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get(
            "total_tokens", usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
        ),
        "cached_tokens": cached or usage.get("cached_tokens", details.get("cached_tokens", 0)),
        "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0),
        "image_tokens": usage.get("image_tokens", details.get("image_tokens", 0)),
    }


def event_numbers(event: dict) -> dict:
    return {k: event[k] for k in wire_numbers({})}


TEXT = {
    "model": "qwen-plus",
    "input": {"messages": [{"role": "user", "content": "Split March spend by workspace."}]},
    "parameters": {"result_format": "message"},
}
IMAGE = {
    "model": "qwen-vl-max",
    "input": {
        "messages": [
            {
                "role": "user",
                "content": [{"image": "https://example.com/bill.png"}, {"text": "Total?"}],
            }
        ]
    },
}
EMBED = {"model": "text-embedding-v4", "input": {"texts": ["spend", "budget by team"]}}


@pytest.mark.parametrize(
    ("endpoint", "body", "kind"),
    [("text-generation", TEXT, "chat"), ("multimodal-generation", IMAGE, "multimodal"),
     ("text-embedding", EMBED, "embedding")],
)  # fmt: skip
def test_native_non_streamed(simulator, endpoint, body, kind):
    event, received = native_call(simulator, endpoint, body)
    wire = orjson.loads(received)
    assert wire["usage"] == usage_for(body, "native", endpoint, region=simulator.region)
    assert event_numbers(event) == wire_numbers(wire["usage"])
    assert (event["api_style"], event["endpoint"], event["outcome"]) == ("dashscope", kind, "ok")
    assert (event["model_requested"], event["model_returned"]) == (body["model"], "")
    assert event["request_id"] == wire["request_id"]
    assert event["usage_source"] == "reported"


@pytest.mark.parametrize("incremental", [True, False])
def test_native_stream(simulator, incremental):
    body = {**TEXT, "parameters": {"result_format": "message", "incremental_output": incremental}}
    event, received = native_call(simulator, "text-generation", body, stream=True)
    usage = usage_for(body, "native", "text-generation", region=simulator.region)
    assert event_numbers(event) == wire_numbers(usage)
    assert (event["streamed"], event["outcome"], event["usage_source"]) == (True, "ok", "reported")
    assert received.count(b"data:") > 3


def test_native_stream_error_event_in_a_200_stream(simulator):
    event, _ = native_call(simulator, "text-generation", TEXT, stream=True, fault="stream-error=2")
    # The status is the event's own ``:HTTP_STATUS/<code>`` line (the simulator sends 500).
    assert (event["outcome"], event["http_status"], event["error_code"]) == (
        "http_error",
        500,
        "InternalError",
    )
    assert event["output_tokens"] > 0  # usage of the result events before the error


def test_native_stream_cut_by_the_server(simulator):
    settings = load_settings()
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-SSE": "enable"}
    headers["X-Simulator-Fault"] = "cut-after=3"
    url = simulator.base_url + NATIVE_PATHS["text-generation"]
    with (
        costsplit.recording_httpx_client(settings, region=simulator.region) as client,
        pytest.raises(httpx.HTTPError),
        client.stream("POST", url, json=TEXT, headers=headers) as response,
    ):
        response.read()
    [event] = spooled(settings)
    assert (event["outcome"], event["usage_source"]) == ("interrupted", "estimated")
    assert event["output_tokens"] > 0


def test_async_native(simulator):
    settings = load_settings()

    async def run():
        async with costsplit.async_recording_httpx_client(settings, region=simulator.region) as c:
            url = simulator.base_url + NATIVE_PATHS["text-generation"]
            response = await c.post(url, json=TEXT, headers={"Authorization": f"Bearer {KEY}"})
            return response.json()

    wire = asyncio.run(run())
    [event] = spooled(settings)
    assert event_numbers(event) == wire_numbers(wire["usage"])


# -- what the caller reads of a stream ------------------------------------------------------


def without_usage_null(data: bytes) -> bytes:
    """Stream bytes as Model Studio sends them when include_usage was not asked for: the one
    "usage":null member (and a comma) it adds to each line gone."""
    member = re.compile(rb'"usage":null,|,"usage":null')
    return b"".join(member.sub(b"", line, 1) for line in data.splitlines(keepends=True))


def same_call_bytes(data: bytes) -> bytes:
    """Stream bytes without what differs between two calls (response id, creation second)."""
    data = re.sub(rb'"id":"chatcmpl-[0-9a-f-]+"', b'"id":"ID"', data)
    return re.sub(rb'"created":[0-9]+', b'"created":0', data)


@pytest.mark.parametrize("lib", [httpx, httpx2])
def test_stream_bytes_are_identical_with_and_without_costsplit(simulator, lib):
    """A caller that did not ask for usage reads, chunk for chunk and line for line, what it
    reads without costsplit: no usage-only chunk and no "usage":null member (both appear
    because costsplit injects include_usage), though the event has the usage."""
    settings = load_settings()
    url = simulator.base_url + COMPATIBLE_CHAT
    body = {"model": "qwen-flash", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    if lib is httpx:
        recording = costsplit.recording_httpx_client(settings, region=simulator.region)
    else:
        recording = costsplit.recording_client(settings, region=simulator.region)
    read = {}
    with recording, lib.Client() as bare:
        for name, client in (("bare", bare), ("recorded", recording)):
            with client.stream("POST", url, json=body, headers=headers) as response:
                raw = [same_call_bytes(chunk) for chunk in response.iter_raw()]
            with client.stream("POST", url, json=body, headers=headers) as response:
                lines = [same_call_bytes(line.encode()) for line in response.iter_lines()]
            read[name] = (raw, lines)
    assert read["recorded"] == read["bare"]
    raw, lines = read["bare"]
    assert b"usage" not in b"".join(raw) and raw[-1] == b"data: [DONE]\n\n"
    assert lines[-2:] == [b"data: [DONE]", b""]
    seen = simulator.requests[-1]  # the recorded call reached the server with include_usage
    assert orjson.loads(seen.body)["stream_options"] == {"include_usage": True}
    usage = usage_for(body, "compatible", "chat")
    events = spooled(settings)
    assert [(e["outcome"], e["usage_source"]) for e in events] == [("ok", "reported")] * 2
    assert [e["input_tokens"] for e in events] == [usage["prompt_tokens"]] * 2
    assert [e["output_tokens"] for e in events] == [usage["completion_tokens"]] * 2


@pytest.mark.parametrize("lib", [httpx, httpx2])
def test_the_request_leaves_with_its_headers_but_ours_and_those_of_a_new_body(simulator, lib):
    settings = load_settings()
    url = simulator.base_url + COMPATIBLE_CHAT
    body = {"model": "qwen-flash", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Accept-Encoding": "gzip",
        "X-Stainless-Lang": "python",
        "X-Costsplit-Scenario": "nightly",
        "X-Costsplit-Tag-Team": "finance",
    }
    if lib is httpx:
        recording = costsplit.recording_httpx_client(settings, region=simulator.region)
    else:
        recording = costsplit.recording_client(settings, region=simulator.region)
    with recording, lib.Client() as bare:
        for client in (bare, recording):
            with client.stream("POST", url, json=body, headers=headers) as response:
                response.read()
    direct, recorded = list(simulator.requests)[-2:]
    assert len(recorded.body) == len(direct.body) + len(b',"stream_options":{"include_usage":true}')
    expected = {
        name: value
        for name, value in direct.headers.items()
        if not name.startswith("x-costsplit-") and name not in ("content-length", "accept-encoding")
    }
    expected |= {"content-length": str(len(recorded.body)), "accept-encoding": "identity"}
    assert recorded.headers == expected
    assert list(recorded.headers) == list(expected)  # the caller's order, the new ones last
    assert [(e["scenario"], e["tags"]) for e in spooled(settings)] == [
        ("nightly", {"team": "finance"})
    ]


@pytest.mark.parametrize("lib", [httpx, httpx2])
def test_an_inner_transport_reads_the_new_body_as_content_as_stream_and_read(lib):
    seen = []

    class Inner(lib.BaseTransport):  # reads ``content`` first, as MockTransport does not
        def handle_request(self, request):
            seen.append((request.content, b"".join(request.stream), request.read()))
            return lib.Response(200, json={"choices": []})

    transport = (RecordingTransport if lib is httpx else Httpx2RecordingTransport)(
        Inner(), sink=ListSink(), settings=load_settings()
    )
    with lib.Client(transport=transport) as client:
        client.post(INTL + COMPATIBLE_CHAT, json={"model": "m", "stream": True})
    [(content, streamed, read)] = seen
    assert (
        content
        == streamed
        == read
        == (b'{"stream_options":{"include_usage":true},"model":"m","stream":true}')
    )


# -- reference fixtures replayed through the transport ---------------------------------------


def replay(name: str, path: str, request: dict, *, status: int = 200, headers=None):
    content = (FIXTURES / name).read_bytes()
    content_type = "text/event-stream" if name.endswith(".sse") else "application/json"

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, content=content, headers={"content-type": content_type, **(headers or {})}
        )

    sink = ListSink()
    transport = RecordingTransport(httpx.MockTransport(serve), sink=sink, settings=load_settings())
    with httpx.Client(transport=transport) as client:
        response = client.post(
            INTL + path, json=request, headers={"Authorization": f"Bearer {KEY}"}
        )
    [event] = sink
    return stable(event), response


def expected(**fields) -> dict:
    base = UsageEvent(
        host="dashscope-intl.aliyuncs.com",
        region="ap-southeast-1",
        key_fingerprint=fingerprint_key(KEY),
        key_hint="…intl",
        http_status=200,
        usage_source="reported",
    )
    return stable(dataclasses.replace(base, **fields))


COMPATIBLE_CHAT = "/compatible-mode/v1/chat/completions"


def test_fixture_openai_chat():
    event, _ = replay("openai_chat.json", COMPATIBLE_CHAT, {"model": "qwen-plus"})
    assert event == expected(
        model_requested="qwen-plus", model_returned="qwen-plus",
        request_id="chatcmpl-3b7e1c52-8d4a-9f10-b6c2-5a0e7d91c4f8",
        input_tokens=3019, output_tokens=420, total_tokens=3439,
        cached_tokens=2048, reasoning_tokens=311,
    )  # fmt: skip


def test_fixture_openai_chat_stream_caller_without_include_usage():
    request = {"model": "qwen-flash", "stream": True}
    event, response = replay("openai_chat_stream.sse", COMPATIBLE_CHAT, request)
    assert event == expected(
        model_requested="qwen-flash", model_returned="qwen-flash", streamed=True,
        request_id="chatcmpl-9c41d0e7-2f6b-9a3e-8d15-c7a2b0f46e19",
        input_tokens=58, output_tokens=9, total_tokens=67,
    )  # fmt: skip
    assert b'"choices":[]' not in response.content and response.content.endswith(b"[DONE]\n\n")


def test_fixture_openai_embeddings():
    request = {"model": "text-embedding-v4", "input": ["a", "b"]}
    event, _ = replay("openai_embeddings.json", "/compatible-mode/v1/embeddings", request)
    assert event == expected(
        endpoint="embedding", model_requested="text-embedding-v4",
        model_returned="text-embedding-v4", request_id="d2538ad0-30dd-9fcf-bcbd-06bbbce70d06",
        input_tokens=23, total_tokens=23,
    )  # fmt: skip


def test_fixture_openai_error_access_denied():
    event, response = replay(
        "openai_error_access_denied.json", COMPATIBLE_CHAT, {"model": "qwen3-max"}, status=403,
        headers={"x-request-id": "5d2c8e91-04ab-9c7f-a3e6-1b9f0d27c8a4"},
    )  # fmt: skip
    assert response.status_code == 403
    assert event == expected(
        model_requested="qwen3-max", http_status=403, outcome="denied",
        error_code="Model.AccessDenied", request_id="5d2c8e91-04ab-9c7f-a3e6-1b9f0d27c8a4",
        usage_source="missing",
    )  # fmt: skip


def test_fixture_native_text():
    event, _ = replay("native_text.json", NATIVE_PATHS["text-generation"], {"model": "qwen-plus"})
    assert event == expected(
        api_style="dashscope", model_requested="qwen-plus",
        request_id="f3acaa33-e248-97bb-96d5-cbeed34699e1",
        input_tokens=3019, output_tokens=101, total_tokens=3120, cached_tokens=2048,
    )  # fmt: skip


def test_fixture_native_text_stream():
    request = {"model": "qwen3-max", "parameters": {"incremental_output": True}}
    event, _ = replay("native_text_stream.sse", NATIVE_PATHS["text-generation"], request)
    assert event == expected(
        api_style="dashscope", model_requested="qwen3-max", streamed=True,
        request_id="ab9f3446-9bbf-963e-9754-2d6543343d7e",
        input_tokens=16, output_tokens=18, total_tokens=34, reasoning_tokens=10,
    )  # fmt: skip


def test_fixture_native_multimodal():
    path = NATIVE_PATHS["multimodal-generation"]
    event, _ = replay("native_multimodal.json", path, {"model": "qwen-vl-max"})
    assert event == expected(
        api_style="dashscope", endpoint="multimodal", model_requested="qwen-vl-max",
        request_id="06a8f3bb-d871-9db4-857d-2c6eeac819bc",
        input_tokens=1292, output_tokens=87, total_tokens=1379,
        cached_tokens=1152, image_tokens=1249,
    )  # fmt: skip


def test_fixture_native_embeddings():
    path = NATIVE_PATHS["text-embedding"]
    event, _ = replay("native_embeddings.json", path, {"model": "text-embedding-v4"})
    assert event == expected(
        api_style="dashscope", endpoint="embedding", model_requested="text-embedding-v4",
        request_id="1773f7b2-2148-9f74-b335-b413e398a116", input_tokens=14, total_tokens=14,
    )  # fmt: skip


def test_fixture_native_error_access_denied():
    path = NATIVE_PATHS["text-generation"]
    event, _ = replay("native_error_access_denied.json", path, {"model": "qwen3-max"}, status=403)
    assert event == expected(
        api_style="dashscope", model_requested="qwen3-max", http_status=403, outcome="denied",
        error_code="Model.AccessDenied", request_id="c81f2a40-6e3d-9b57-a1c4-7f0e92d5b316",
        usage_source="missing",
    )  # fmt: skip


# -- never raise, never inconsistent -----------------------------------------------------------


def consistent(event: UsageEvent) -> bool:
    counts = [getattr(event, name) for name in costsplit.events.TOKEN_COLUMNS]
    return (
        all(type(v) is int and v >= 0 for v in counts)
        and event.cached_tokens + event.cache_creation_tokens <= event.input_tokens
        and event.image_tokens + event.audio_tokens + event.video_tokens <= event.input_tokens
        and event.reasoning_tokens + event.audio_output_tokens <= event.output_tokens
        and event.total_tokens >= event.input_tokens + event.output_tokens
    )


SSE_SAMPLES = [
    (FIXTURES / n).read_bytes() for n in ("openai_chat_stream.sse", "native_text_stream.sse")
]


@hsettings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(SSE_SAMPLES), st.integers(0, 1700)).map(lambda t: t[0][: t[1]]),
        st.tuples(st.sampled_from(SSE_SAMPLES), st.integers(1, 64)).map(
            lambda t: t[0].replace(b"1", b"-" * (t[1] % 3) + b"9")
        ),
    ),
    path=st.sampled_from([COMPATIBLE_CHAT, NATIVE_PATHS["text-generation"]]),
    content_type=st.sampled_from(["text/event-stream", "application/json"]),
    status=st.sampled_from([200, 403, 500]),
    chunk=st.integers(1, 97),
)
def test_any_body_never_raises_and_counts_stay_consistent(body, path, content_type, status, chunk):
    def serve(request: httpx.Request) -> httpx.Response:
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        return httpx.Response(status, stream=httpx.ByteStream(b"".join(pieces)),
                              headers={"content-type": content_type})  # fmt: skip

    sink = ListSink()
    transport = RecordingTransport(httpx.MockTransport(serve), sink=sink, settings=load_settings())
    with httpx.Client(transport=transport) as client:
        response = client.post(INTL + path, json={"model": "m", "stream": True})
    [event] = sink
    assert consistent(event)
    # include_usage was injected: a 200 compatible stream loses what that added.
    filtered = path == COMPATIBLE_CHAT and content_type == "text/event-stream" and status == 200
    if b'"choices":[]' not in body and b'"choices": []' not in body:
        assert response.content == (without_usage_null(body) if filtered else body)


# -- keys never written ------------------------------------------------------------------------


def test_no_key_in_spool_or_database(simulator):
    settings = load_settings()
    keys = [
        "sk-" + "7f3a9c2e5b8d41f6a0c3e9b2d5f8a1c4",
        "sk-ws-" + "3e1b9d7a5c2f48e6b0a4d8c2e6f1a3b5",
    ]
    for key in keys:
        with costsplit.recording_httpx_client(settings, region=simulator.region) as client:
            client.post(simulator.base_url + NATIVE_PATHS["text-generation"], json=TEXT,
                        headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=(FIXTURES / "native_text.json").read_bytes())

    transport = RecordingTransport(httpx.MockTransport(serve), settings=settings)
    with httpx.Client(transport=transport) as client:
        client.post(INTL + NATIVE_PATHS["text-generation"], json=TEXT,
                    headers={"Authorization": f"Bearer {keys[0]}"})  # fmt: skip
    spool_bytes = b"".join(p.read_bytes() for p in settings.spool_dir.glob("*.jsonl"))
    assert spool_bytes.count(b'"event_id"') == 3
    ingest_spool(settings)
    with duckdb.connect(str(settings.database), read_only=True) as con:
        rows = con.execute("SELECT * FROM events").fetchall()
    assert len(rows) == 3
    database_bytes = settings.database.read_bytes()
    for key in keys:
        middle = key[8:-8].encode()
        for haystack in (spool_bytes, database_bytes, repr(rows).encode()):
            assert key.encode() not in haystack and middle not in haystack
    hints = {value for row in rows for value in row if isinstance(value, str) and value[:1] == "…"}
    assert hints == {"…" + key[-4:] for key in keys}


@pytest.mark.parametrize("lib", [httpx, httpx2])
def test_a_response_already_read_is_told_from_a_stream_without_raising(lib):
    class Watched(lib.Response):
        """Notes a read of its ``__dict__``, which would turn its attributes into a plain
        dict, slow to read for the rest of the response's life."""

        dict_read = False

        @property
        def __dict__(self):
            type(self).dict_read = True
            return {}

    class Unread:  # a response type that raises for an unread body
        __slots__ = ()

        @property
        def content(self):
            raise lib.ResponseNotRead()

    class Odd(lib.Response):
        def __getattr__(self, name):
            raise RuntimeError(f"no {name} here")

    assert _already_read(Watched(200, content=b"{}"))
    assert not _already_read(Watched(200, stream=lib.ByteStream(b"{}")))
    assert not Watched.dict_read
    assert not _already_read(Unread())
    assert not _already_read(Odd(200, stream=lib.ByteStream(b"{}")))


def test_header_items_decode_as_httpx_does():
    from costsplit.transport import header_items

    for lib in (httpx, httpx2):
        plain = lib.Headers({"Authorization": "Bearer k", "X-Costsplit-Scenario": "nightly"})
        assert header_items(plain) == [
            ("authorization", "Bearer k"),
            ("x-costsplit-scenario", "nightly"),
        ]
        utf8 = lib.Headers([(b"X-Costsplit-Scenario", "résumé".encode())])
        assert header_items(utf8) == [("x-costsplit-scenario", "résumé")]
        latin1 = lib.Headers([(b"X-Costsplit-Tag-Team", "é".encode("latin-1"))])
        assert header_items(latin1) == [("x-costsplit-tag-team", "é")]


def test_only_the_headers_the_core_reads_are_decoded():
    from costsplit.transport import _OURS, _REQUEST_NAMES, header_items

    for lib in (httpx, httpx2):
        many = [
            ("User-Agent", "OpenAI/Python"),
            ("X-Stainless-Lang", "python"),
            ("Authorization", "Bearer k"),
            ("X-DashScope-WorkSpace", "ws-1"),
            ("X-Costsplit-Tag-Team", "support"),
            ("Content-Type", "application/json"),
        ]
        expected = [
            ("authorization", "Bearer k"),
            ("x-dashscope-workspace", "ws-1"),
            ("x-costsplit-tag-team", "support"),
        ]
        assert header_items(lib.Headers(many), _REQUEST_NAMES, _OURS) == expected
        # a non-ASCII value sends the headers through httpx's own decoding, same selection
        utf8 = lib.Headers([*many, ("X-Costsplit-Scenario", "résumé".encode())])
        assert header_items(utf8, _REQUEST_NAMES, _OURS) == [
            *expected,
            ("x-costsplit-scenario", "résumé"),
        ]
