"""The compiled fast paths give what their Python twins give: the stream filter, event ids."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import time
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costsplit import events, record, transport
from costsplit.config import Settings
from costsplit.record import Exchange, Recorder

speedups = pytest.importorskip(
    "costsplit._speedups", reason="costsplit/_speedups.c was not built at install (no C compiler)"
)

CHAT = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
STREAM = (Path(__file__).parent / "fixtures" / "dashscope" / "openai_chat_stream.sse").read_bytes()
EVENTS = [e + b"\n\n" for e in STREAM.split(b"\n\n") if e]


class Discard(list):
    def append(self, event) -> None:
        return


def filtering_exchange() -> Exchange:
    """An exchange whose request did not ask for usage: costsplit injected it, and filters."""
    recorder = Recorder(Discard(), Settings())
    exchange = recorder.begin(
        "POST", CHAT, [("Authorization", "Bearer sk-x")], b'{"model":"m","stream":true}'
    )
    exchange.response(200, [("content-type", "text/event-stream")])
    assert exchange.filtering
    return exchange


def test_the_package_uses_the_compiled_filter_where_it_was_built():
    assert record.filter_chunk is speedups.filter_chunk


def test_the_usual_chunk_loses_its_usage_null_member_in_c():
    chunk = EVENTS[1]
    assert b'"usage":null,' in chunk
    out = speedups.filter_chunk(filtering_exchange(), chunk)
    assert out == chunk.replace(b'"usage":null,', b"", 1)


def test_the_member_is_found_wherever_it_sits_in_the_line():
    # The compiled search tests 16 places at a time: the member at each place, in lines of
    # each length around those blocks, after look-alikes that share its first and last bytes.
    member = b'"usage":null'
    for size in range(len(member), 70):
        for at in range(size - len(member) + 1):
            line = b'"usage":nuxl' * (at // 12) + b"x" * (at % 12) + member + b","
            line += b'"l' * ((size - len(line)) // 2)
            chunk = b"data: " + line + b"\n\n"
            first = chunk.find(member)
            expected = chunk[:first] + chunk[first + len(member) + 1 :]
            assert speedups.filter_chunk(Marked(), chunk) == expected


class Marked:
    """A clean exchange whose Python filter marks what it was given."""

    carry, skip_blank = b"", False

    def filter(self, data: bytes) -> bytes:
        return b"python:" + data


def test_a_whole_event_without_the_member_passes_in_c_unless_it_holds_an_object():
    for event in (b"data: [DONE]\n\n", b"data:[DONE]\n\n", b": keep-alive\n\n", b"data: 7\n\n"):
        assert speedups.filter_chunk(Marked(), event) is event


def test_any_other_chunk_is_left_to_the_exchange():
    usual = EVENTS[1]
    assert speedups.filter_chunk(Marked(), usual) == usual.replace(b'"usage":null,', b"", 1)
    usage_only = next(e for e in EVENTS if b'"choices":[]' in e)
    for other in (
        usual[:-1],
        usual[:-1] + b"d",  # a line, then the first byte of the next
        usual + usual,
        b"",
        b"\n",
        usual.replace(b",", b" "),
        usage_only,  # parsed in Python: the event's end reads it again
        b"data:\t {}\n\n",
    ):
        assert speedups.filter_chunk(Marked(), other) == b"python:" + other
    carrying = Marked()
    carrying.carry = b"data: {"
    assert speedups.filter_chunk(carrying, usual) == b"python:" + usual
    skipping = Marked()
    skipping.skip_blank = True
    assert speedups.filter_chunk(skipping, usual) == b"python:" + usual
    with pytest.raises(TypeError, match="two arguments"):
        speedups.filter_chunk(usual)


PIECES = [b'"usage":null', b",", b"x", b'"', b"{}", b"\n", b"\r\n", b"data: ", b"\n\n", b"\0"]
# A stream's events: real ones, ones made of the pieces the filter looks for, and any bytes.
STREAM_PIECES = st.one_of(
    st.sampled_from(EVENTS),
    st.lists(st.sampled_from(PIECES), max_size=10).map(b"".join),
    st.binary(max_size=40),
)


CUTS = st.lists(st.integers(0, 600), max_size=8)  # where a stream's bytes are cut


def cut_into_chunks(events: list[bytes], cuts: list[int]) -> list[bytes]:
    """The events as they arrive: as they are without cuts, else their bytes cut at ``cuts``."""
    data = b"".join(events)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return events if not cuts else [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    events=st.lists(
        STREAM_PIECES,
        min_size=1,
        max_size=10,
    ),
    cuts=CUTS,
)
def test_compiled_and_python_filters_agree_on_any_bytes_however_cut(events, cuts):
    chunks = cut_into_chunks(events, cuts)
    compiled, python = filtering_exchange(), filtering_exchange()
    for chunk in chunks:
        assert speedups.filter_chunk(compiled, chunk) == Exchange.filter(python, chunk)
        assert (compiled.carry, compiled.skip_blank, compiled.filter_usage) == (
            python.carry,
            python.skip_blank,
            python.filter_usage,
        )


UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_compiled_event_ids_are_the_package_ids_laid_out_as_the_python_ones():
    assert events.new_event_id is speedups.new_event_id
    before = time.time_ns() // 1_000_000
    compiled, python = speedups.new_event_id(), events._new_event_id()
    after = time.time_ns() // 1_000_000
    for text in (compiled, python):
        assert UUID7.fullmatch(text)
        assert before <= int(text[:8] + text[9:13], 16) <= after  # the millisecond prefix
    assert uuid.UUID(compiled).version == 7


def test_compiled_event_ids_draw_from_the_seed_given():
    try:
        speedups.seed_event_ids(bytes(range(32)))
        first = [speedups.new_event_id()[14:] for _ in range(3)]  # past the time and version
        speedups.seed_event_ids(bytes(range(32)))
        again = [speedups.new_event_id()[14:] for _ in range(3)]
        speedups.seed_event_ids(bytes(range(1, 33)))
        other = [speedups.new_event_id()[14:] for _ in range(3)]
    finally:
        speedups.seed_event_ids(os.urandom(32))
    assert first == again
    assert not set(first) & set(other)
    with pytest.raises(ValueError, match="32 bytes"):
        speedups.seed_event_ids(b"short")


ESCAPES = st.sampled_from('\x00\x01\x1f\x7f"\\/\b\t\n\f\ré…😀')
TEXT = st.text(ESCAPES | st.characters(codec="utf-8"), max_size=12)  # what JSON escapes, and more
NUMBER = st.integers(-(2**63), 2**63 - 1)
ODD = st.none() | st.floats(allow_nan=False) | st.lists(NUMBER, max_size=2) | st.integers(2**64)


def value_of(field_type: str):
    """Values of the kind an event field holds."""
    if field_type.startswith("dict"):
        return st.dictionaries(TEXT, TEXT | NUMBER, max_size=3)
    if "int" in field_type:
        return NUMBER | st.none() if "None" in field_type else NUMBER
    if "bool" in field_type:
        return st.booleans()
    return TEXT | st.none() if "None" in field_type else TEXT


FIELDS = {field.name: str(field.type) for field in dataclasses.fields(events.UsageEvent)}
EVENT_VALUES = st.fixed_dictionaries({}, optional={n: value_of(t) for n, t in FIELDS.items()})


@given(EVENT_VALUES)
def test_compiled_and_python_event_lines_agree(values):
    event = events.UsageEvent(**values)
    assert speedups.event_line(event) == events._line_of(event) == event.to_json_line()


@given(EVENT_VALUES, st.sampled_from(sorted(FIELDS)), ODD | st.dictionaries(TEXT, ODD, max_size=2))
def test_a_value_the_compiled_writer_does_not_write_goes_to_the_python_one(values, name, odd):
    event = events.UsageEvent(**{**values, name: odd})
    try:
        expected = events._line_of(event)
    except (TypeError, orjson.JSONEncodeError):  # the Python writer refuses it: so does C
        assert speedups.event_line(event) is None
        return
    assert speedups.event_line(event) in (expected, None)
    assert event.to_json_line() == expected


def test_the_compiled_line_writer_is_the_package_s_and_steps_aside_for_subclasses():
    class Marked(events.UsageEvent):
        __slots__ = ()

    event = events.UsageEvent(started_at="2026-01-01T00:00:00.000000Z", tags={"team": "a\nb"})
    assert speedups.event_line(event) == events._line_of(event)
    assert speedups.event_line(Marked(started_at=event.started_at)) is None
    assert speedups.event_line("not an event") is None
    with pytest.raises(TypeError, match="not a __slots__ member"):
        speedups.set_event_fields(events.UsageEvent, ((b'"x":', property(), None, None, 0),))


HEADER_NAMES = st.sampled_from(
    [b"authorization", b"x-dashscope-sse", b"x-costsplit-tag-team", b"x-costsplit-", b"x-cost",
     b"user-agent", b"content-type", b"", "é".encode(), b"x-costsplit-\xff"]
)  # fmt: skip
HEADER_VALUES = st.binary(max_size=6) | st.sampled_from([b"Bearer k", b"enable", b""])


@given(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
def test_compiled_and_python_header_picks_agree(pairs):
    items = [(name.upper(), name, value) for name, value in pairs]  # as httpx parses them
    names, prefix = transport._REQUEST_NAMES, transport._OURS
    try:
        expected = transport._pick_headers(items, names, prefix)
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            speedups.pick_headers(items, names, prefix)
        return
    assert speedups.pick_headers(items, names, prefix) == expected


BODY_HEADER_NAMES = st.sampled_from([b"content-length", b"accept-encoding"])


@given(
    st.lists(st.tuples(HEADER_NAMES | BODY_HEADER_NAMES, HEADER_VALUES), max_size=8), st.booleans()
)
def test_compiled_and_python_header_drops_agree(pairs, new_body):
    items = [(name.upper(), name, value) for name, value in pairs]  # as httpx parses them
    names = transport._BODY_NAMES if new_body else frozenset()
    kept = speedups.drop_headers(items, names, transport._OURS)
    assert kept == transport._drop_headers(items, names, transport._OURS)
    assert all(any(item is original for original in items) for item in kept)  # not copies


def test_the_package_picks_headers_in_c_and_refuses_what_is_not_httpx_s_list():
    assert transport.pick_headers is speedups.pick_headers
    assert transport.drop_headers is speedups.drop_headers
    with pytest.raises(TypeError, match="drop_headers"):
        speedups.drop_headers([(b"a", b"b")], transport._REQUEST_NAMES, transport._OURS)
    with pytest.raises(TypeError):
        speedups.pick_headers([(b"a", b"b")], transport._REQUEST_NAMES, transport._OURS)
    with pytest.raises(TypeError):
        speedups.pick_headers((), transport._REQUEST_NAMES, transport._OURS)


@given(
    events=st.lists(
        STREAM_PIECES,
        min_size=0,
        max_size=12,
    ),
    cuts=CUTS,
    limit=st.integers(0, 14),
    filtering=st.booleans(),
)
def test_compiled_and_python_kept_chunks_agree(events, cuts, limit, filtering):
    chunks = cut_into_chunks(events, cuts)
    results = []
    for kept_chunks in (speedups.kept_chunks, transport._kept_chunks):
        exchange, kept = filtering_exchange(), []
        source = iter(chunks)
        passed = list(kept_chunks(source, kept.append, exchange if filtering else None, limit))
        state = (exchange.carry, exchange.skip_blank, exchange.filter_usage)
        results.append((passed, kept, state, list(source)))
    assert results[0] == results[1]


def test_the_package_keeps_chunks_in_c_and_passes_on_failures():
    assert transport.kept_chunks is speedups.kept_chunks

    def broken():
        yield b"data: 1\n\n"
        raise ConnectionError("cut")

    kept = []
    chunks = speedups.kept_chunks(broken(), kept.append, None, 5)
    assert next(chunks) == b"data: 1\n\n"
    with pytest.raises(ConnectionError, match="cut"):
        next(chunks)
    assert kept == [b"data: 1\n\n"]
    with pytest.raises(TypeError):
        speedups.kept_chunks([], kept.append, None, 1, extra=True)
    # A list's own append is done directly; any other keep is called.
    seen = []
    assert list(speedups.kept_chunks(iter([b"a", b"b"]), seen.append, None, 5)) == [b"a", b"b"]

    class Noted(list):
        def append(self, chunk):
            super().append(chunk.upper())

    noted = Noted()
    assert list(speedups.kept_chunks(iter([b"a", b"b"]), noted.append, None, 5)) == [b"a", b"b"]
    assert (seen, noted) == ([b"a", b"b"], [b"A", b"B"])

    def refuse(chunk):
        raise MemoryError("no room")

    with pytest.raises(MemoryError, match="no room"):
        next(speedups.kept_chunks(iter([b"a"]), refuse, None, 1))


# -- the usual end of a stream ------------------------------------------------------------

COUNT = (
    st.integers(-3, 3000)
    | st.integers(10**15 - 2, 10**19)
    | st.floats(-2, 3000, allow_nan=False)
    | st.booleans()
    | st.none()
    | st.sampled_from(["", "12"])
)
DETAIL_KEYS = [
    "cached_tokens", "cache_creation_input_tokens", "image_tokens", "audio_tokens",
    "video_tokens", "reasoning_tokens", "text_tokens", "cached_tokens\0",
]  # fmt: skip
DETAILS = (
    st.dictionaries(st.sampled_from(DETAIL_KEYS), COUNT, max_size=4).flatmap(
        lambda d: st.sampled_from([d, {**d, "cache_type": "ephemeral"}, {**d, "cache_type": 5}])
    )
    | COUNT
)
PLAIN_KEYS = ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens"]
DETAIL_OBJECTS = [
    "prompt_tokens_details", "completion_tokens_details",
    "input_tokens_details", "output_tokens_details",
]  # fmt: skip
USAGE = st.fixed_dictionaries(
    {},
    optional={
        **{key: COUNT for key in PLAIN_KEYS},
        **{key: DETAILS for key in DETAIL_OBJECTS},
        "image_count": COUNT,
        "plugins": st.just({"search": {"count": 1}}),
        "cached_tokens": COUNT,
        "prompt_tokens\0": COUNT,
    },
)
TEXT = st.sampled_from(["", "chatcmpl-1", "qwen-plus"])
PAYLOADS = st.fixed_dictionaries(
    {"choices": st.just([])},
    optional={
        "usage": USAGE | COUNT,
        "model": TEXT | COUNT,
        "id": TEXT | st.none(),
        "request_id": TEXT | COUNT,
        "error": st.sampled_from([{}, {"code": "Throttling"}, {"type": "x", "id": "e"}, "x"]),
        "code": TEXT | COUNT,
        "output": st.just({}),
    },
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-request-id": st.sampled_from(["", "r-header"]),
        "x-dashscope-request-id": st.sampled_from(["", "r-dashscope"]),
    },
)
# As Model Studio sends them (either style), with counts at and past the compiled path's edges.
INT = st.integers(0, 5000) | st.integers(-2, -1) | st.integers(10**15 - 2, 10**15 + 2)
PLAIN_DETAILS = st.dictionaries(
    st.sampled_from([*DETAIL_KEYS, "cache_type"]), INT | st.sampled_from(["ephemeral", ""])
)
PLAIN_USAGE = st.fixed_dictionaries(
    {"prompt_tokens": INT, "completion_tokens": INT},
    optional={
        "total_tokens": INT,
        "prompt_tokens_details": PLAIN_DETAILS,
        "completion_tokens_details": PLAIN_DETAILS,
    },
) | st.fixed_dictionaries(
    {"input_tokens": INT},
    optional={
        "output_tokens": INT,
        "total_tokens": INT,
        "input_tokens_details": PLAIN_DETAILS,
        "output_tokens_details": PLAIN_DETAILS,
    },
)
PLAIN_PAYLOADS = st.fixed_dictionaries(
    {"choices": st.just([]), "usage": PLAIN_USAGE, "model": TEXT, "id": TEXT},
    optional={"request_id": st.sampled_from(["", "r-body"])},
)


@settings(max_examples=400)
@given(PLAIN_PAYLOADS | PAYLOADS, HEADERS, st.sampled_from(["chat", "embedding"]))
def test_compiled_and_python_usual_ends_agree(payload, headers, endpoint):
    compiled, python = events.UsageEvent(event_id="e"), events.UsageEvent(event_id="e")
    filled = speedups.fill_usual_end(compiled, payload, headers, endpoint)
    expected = record._fill_usual_end(python, payload, headers, endpoint)
    if filled:  # the compiled path fills only what Python fills, and fills it alike
        assert expected and compiled == python
    else:  # anything else is left to Python, the event untouched
        assert compiled == events.UsageEvent(event_id="e")


def test_the_usual_end_of_model_studio_s_streams_is_filled_in_c():
    assert record.fill_usual_end is speedups.fill_usual_end
    usage = {
        "prompt_tokens": 3019,
        "completion_tokens": 420,
        "total_tokens": 3439,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_type": "ephemeral"},
        "completion_tokens_details": {"reasoning_tokens": 311},
    }
    payload = {"choices": [], "usage": usage, "model": "qwen-plus", "id": "chatcmpl-1"}
    event = events.UsageEvent()
    assert speedups.fill_usual_end(event, payload, {"x-request-id": "r-1"}, "chat")
    assert (event.request_id, event.model_returned, event.usage_source) == (
        "r-1",
        "qwen-plus",
        "reported",
    )
    assert (event.input_tokens, event.cached_tokens, event.cache_type) == (3019, 2048, "ephemeral")
    assert (event.output_tokens, event.reasoning_tokens, event.total_tokens) == (420, 311, 3439)
    with pytest.raises(TypeError, match="fill_usual_end"):
        speedups.fill_usual_end(event, payload, None, "chat")
