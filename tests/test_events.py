"""The usage event: its JSON line holds the fields off their defaults, in COLUMNS order."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsplit.events import (
    COLUMNS,
    DEFAULTS,
    SCHEMA_VERSION,
    UsageEvent,
    fingerprint_key,
    key_hint,
    line_fields,
    new_event_id,
    utc_timestamp,
)


def test_the_json_line_holds_id_version_start_and_the_fields_off_their_default():
    line = UsageEvent(
        event_id="e1",
        started_at="2026-10-01T04:00:00.000001Z",
        recorder="proxy",
        scenario="",
        tags={"team": "a"},
        http_status=200,
        input_tokens=5,
        streamed=True,
    ).to_json_line()
    assert line == (
        b'{"event_id":"e1","schema_version":2,"started_at":"2026-10-01T04:00:00.000001Z",'
        b'"recorder":"proxy","scenario":"","tags":{"team":"a"},"streamed":true,'
        b'"http_status":200,"input_tokens":5}\n'
    )


def test_a_line_with_no_field_at_its_default_has_every_column_in_order():
    event = UsageEvent(
        event_id="e1",
        started_at="2026-10-01T04:00:00.000001Z",
        **{
            name: {"tags": {"k": "v"}, "plugins": {"search": 1}}.get(
                name,
                True if kind == "BOOLEAN" else 7 if kind in ("SMALLINT", "BIGINT") else "x",
            )
            for name, kind in COLUMNS.items()
            if name in DEFAULTS and name != "started_at"
        },
    )
    line = event.to_json_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(orjson.loads(line)) == list(COLUMNS)
    assert line_fields(line) == dataclasses.asdict(event) | {"schema_version": 2}


def test_a_first_format_line_reads_as_it_is():
    data = dict.fromkeys(COLUMNS, None) | {"event_id": "e1", "schema_version": 1, "tags": {}}
    assert line_fields(orjson.dumps(data)) == data


@given(
    st.builds(
        UsageEvent,
        event_id=st.text(min_size=1),
        started_at=st.text(),
        first_byte_us=st.none() | st.integers(0, 2**40),
        recorder=st.sampled_from(["client", "proxy", ""]),
        scenario=st.none() | st.text(max_size=3),
        tags=st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        streamed=st.booleans(),
        billing_plan=st.sampled_from(["payg", "plan"]),
        http_status=st.none() | st.integers(0, 599),
        error_code=st.text(max_size=3),
        input_tokens=st.integers(0, 2**40),
        cached_tokens=st.integers(0, 3),
        plugins=st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    )
)
def test_reading_a_line_gives_back_the_event(event):
    assert line_fields(event.to_json_line()) == dataclasses.asdict(event)


def test_the_defaults_are_an_unanswered_call_of_the_current_schema():
    line = UsageEvent(event_id="e1").to_json_line()
    assert line == b'{"event_id":"e1","schema_version":2,"started_at":""}\n'
    data = line_fields(line)
    assert data == {
        "event_id": "e1",
        "schema_version": SCHEMA_VERSION,
        "started_at": "",
        "latency_us": 0,
        "first_byte_us": None,
        "recorder": "client",
        "api_style": "openai-compatible",
        "endpoint": "chat",
        "host": "",
        "region": "",
        "key_fingerprint": "",
        "key_hint": "",
        "workspace_observed": "",
        "scenario": None,
        "tags": {},
        "model_requested": "",
        "model_returned": "",
        "request_id": "",
        "streamed": False,
        "batch": False,
        "billing_plan": "payg",
        "outcome": "ok",
        "http_status": None,
        "error_code": "",
        "usage_source": "missing",
        **dict.fromkeys(
            [
                "input_tokens",
                "output_tokens",
                "total_tokens",
                "cached_tokens",
                "cache_creation_tokens",
                "reasoning_tokens",
                "image_tokens",
                "audio_tokens",
                "video_tokens",
                "audio_output_tokens",
                "image_count",
            ],
            0,
        ),
        "cache_type": "",
        "plugins": {},
    }


def test_event_ids_are_uuid7_unique_and_time_ordered():
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i)
        for i in ids
    )
    later = new_event_id() if time.sleep(0.002) is None else ""
    assert later[:13] > ids[0][:13]  # the millisecond prefix orders them


def test_keys_are_kept_as_a_fingerprint_and_a_hint_only():
    assert fingerprint_key("sk-abc123456789") == fingerprint_key("  sk-abc123456789\n")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", fingerprint_key("sk-abc123456789"))
    assert key_hint("sk-abc123456789") == "…6789"
    assert key_hint("short") == ""


def test_utc_timestamp_has_microseconds_and_z():
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert utc_timestamp(1_790_000_000.25) == "2026-09-21T14:13:20.250000Z"


@given(st.floats(min_value=-1e10, max_value=2e11, allow_nan=False))
def test_utc_timestamp_formats_like_datetime(unix_seconds):
    expected = datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert utc_timestamp(unix_seconds) == expected


def test_utc_timestamp_now_is_the_current_time():
    before = time.time()
    stamp = datetime.strptime(utc_timestamp(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 0.001 <= stamp.timestamp() <= time.time() + 0.001


def test_a_forked_child_draws_other_event_ids_than_its_parent():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write_end, " ".join(new_event_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    parent = [new_event_id() for _ in range(50)]
    assert len(child) == 50
    # The time prefix may be shared; the 74 random bits must not be.
    assert not {i[14:] for i in child} & {i[14:] for i in parent}


def test_event_builder_makes_the_keyword_event():
    from costsplit.events import event_builder

    build = event_builder("started_at", "host", "tags", "streamed")
    built = build("2026-10-01T04:00:00.000001Z", "dashscope.aliyuncs.com", {"team": "a"}, True)
    expected = UsageEvent(
        event_id=built.event_id,
        started_at="2026-10-01T04:00:00.000001Z",
        host="dashscope.aliyuncs.com",
        tags={"team": "a"},
        streamed=True,
    )
    assert built == expected
    assert built.to_json_line() == expected.to_json_line()
    other = build("", "", {}, False)
    assert other.event_id != built.event_id and other.plugins is not built.plugins
    with pytest.raises(TypeError):
        event_builder("host", "no_such_field")
