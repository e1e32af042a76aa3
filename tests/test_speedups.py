"""The compiled fast path of the stream filter gives what the Python filter gives, always."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsplit import record
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


def test_any_other_chunk_is_left_to_the_exchange():
    class Marked:
        carry, skip_blank = b"", False

        def filter(self, data: bytes) -> bytes:
            return b"python:" + data

    usual = EVENTS[1]
    assert speedups.filter_chunk(Marked(), usual) == usual.replace(b'"usage":null,', b"", 1)
    for other in (usual[:-1], usual + usual, b"", b"\n", usual.replace(b",", b" ")):
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


@given(
    events=st.lists(
        st.one_of(
            st.sampled_from(EVENTS),
            st.lists(st.sampled_from(PIECES), max_size=10).map(b"".join),
            st.binary(max_size=40),
        ),
        min_size=1,
        max_size=10,
    ),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_compiled_and_python_filters_agree_on_any_bytes_however_cut(events, cuts):
    data = b"".join(events)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = events if not cuts else [data[a:b] for a, b in itertools.pairwise(bounds)]
    compiled, python = filtering_exchange(), filtering_exchange()
    for chunk in chunks:
        assert speedups.filter_chunk(compiled, chunk) == Exchange.filter(python, chunk)
        assert (compiled.carry, compiled.skip_blank, compiled.filter_usage) == (
            python.carry,
            python.skip_blank,
            python.filter_usage,
        )
