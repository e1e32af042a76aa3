"""Ingest: every complete spool line reaches the table exactly once, whatever happens."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from costsplit.cli import main
from costsplit.config import Settings, load_settings
from costsplit.errors import DatabaseLocked
from costsplit.events import COLUMNS, UsageEvent, new_event_id
from costsplit.ingest import IngestResult, ingest_spool
from costsplit.store import connect

RECORDER = """
import os, sys
from pathlib import Path
from costsplit.events import UsageEvent, utc_timestamp
from costsplit.spool import Spool

spool_dir, count, ack = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spool = Spool(Path(spool_dir), 0.05)
ack_fd = os.open(ack, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if ack != "-" else -1
print("ready", flush=True)
for i in range(count):
    event = UsageEvent(started_at=utc_timestamp(), model_requested="qwen-plus", input_tokens=i)
    spool.append(event)
    if ack_fd >= 0:  # written only once append has returned: an acknowledged event
        os.write(ack_fd, event.event_id.encode() + b"\\n")
spool.close()
"""

INGEST = """
from costsplit.config import load_settings
from costsplit.ingest import ingest_spool
print("ready", flush=True)
ingest_spool(load_settings())
"""

HOLD_DATABASE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


def settings_for(home: Path) -> Settings:
    return load_settings(environ={"COSTSPLIT_HOME": str(home)}, cwd=home)


def start(code: str, *args: str, home: Path | None = None, stdin=None) -> subprocess.Popen:
    env = {**os.environ, **({"COSTSPLIT_HOME": str(home)} if home else {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stdin=stdin, env=env
    )
    assert proc.stdout.readline() == b"ready\n"
    proc.stdout.close()  # nothing more is printed; an open pipe would outlive the test
    return proc


def table(settings: Settings) -> list[tuple]:
    columns = ", ".join("event_id::VARCHAR" if c == "event_id" else c for c in COLUMNS)
    with connect(settings.database) as con:
        return con.execute(f"SELECT {columns} FROM events ORDER BY event_id").fetchall()


def event_ids(settings: Settings) -> list[str]:
    with connect(settings.database) as con:
        return [
            r[0]
            for r in con.execute(
                "SELECT event_id::VARCHAR FROM events ORDER BY event_id"
            ).fetchall()
        ]


def write_segment(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def event(i: int, **fields) -> UsageEvent:
    return UsageEvent(
        event_id=f"0190a000-0000-7000-8000-{i:012d}",
        started_at=f"2026-10-01T04:00:{i % 60:02d}.000001Z",
        model_requested="qwen-plus",
        input_tokens=100 + i,
        output_tokens=i,
        total_tokens=100 + 2 * i,
        tags={"team": "support"} if i % 2 else {},
        plugins={"search": 1} if i % 3 == 0 else {},
        **fields,
    )


# -- the basics ---------------------------------------------------------------------------------


def test_ingest_moves_events_and_removes_closed_segments(costsplit_home):
    settings = settings_for(costsplit_home)
    events = [event(i) for i in range(5)]
    write_segment(settings.spool_dir, "1-1-a.jsonl", b"".join(e.to_json_line() for e in events))
    assert ingest_spool(settings) == IngestResult(
        ingested=5, duplicates=0, rejected=0, quarantined=0
    )
    rows = table(settings)
    assert [dict(zip(COLUMNS, row, strict=True))["event_id"] for row in rows] == [
        e.event_id for e in events
    ]
    first = dict(zip(COLUMNS, rows[1], strict=True))
    assert (first["tags"], first["plugins"], first["input_tokens"]) == (
        '{"team":"support"}',
        "{}",
        101,
    )
    assert list(settings.spool_dir.glob("*.jsonl")) == []
    assert ingest_spool(settings) == IngestResult()
    with connect(settings.database) as con:
        log = con.execute(
            "SELECT ingested, duplicates, rejected, quarantined FROM ingest_log"
        ).fetchall()
    assert log == [(5, 0, 0, 0), (0, 0, 0, 0)]


def test_no_spool_folder_is_nothing_to_do(costsplit_home):
    assert ingest_spool(settings_for(costsplit_home)) == IngestResult()


def test_duplicates_in_a_batch_and_against_the_table_are_dropped(costsplit_home):
    settings = settings_for(costsplit_home)
    a, b, c = (event(i).to_json_line() for i in range(3))
    write_segment(settings.spool_dir, "1-1-a.jsonl", a + b)
    assert ingest_spool(settings).ingested == 2
    write_segment(settings.spool_dir, "2-1-a.jsonl", b + c + c)
    write_segment(settings.spool_dir, "3-1-a.jsonl", a + c)
    assert ingest_spool(settings) == IngestResult(
        ingested=1, duplicates=4, rejected=0, quarantined=0
    )
    assert event_ids(settings) == [event(i).event_id for i in range(3)]


def test_an_open_segment_is_read_from_where_ingest_stopped(costsplit_home):
    settings = settings_for(costsplit_home)
    from costsplit.spool import Spool

    spool = Spool(settings.spool_dir)
    spool.append(event(0))
    assert ingest_spool(settings).ingested == 1
    spool.append(event(1))
    spool.append(event(2))
    assert ingest_spool(settings) == IngestResult(ingested=2)
    assert spool.segment.exists()  # still open: kept
    spool.close()
    assert ingest_spool(settings) == IngestResult()
    assert list(settings.spool_dir.glob("*.jsonl")) == []
    assert event_ids(settings) == [event(i).event_id for i in range(3)]


def test_a_killed_writers_reserved_zero_tail_is_not_lines(costsplit_home):
    """A writer killed before its first line leaves only reserved zeros; one killed later, its
    lines and then zeros: ingest takes the lines, quarantines nothing and removes both."""
    settings = settings_for(costsplit_home)
    lines = event(0).to_json_line() + event(1).to_json_line()
    write_segment(settings.spool_dir, "1-1-empty.jsonl", bytes(1024 * 1024))
    write_segment(settings.spool_dir, "1-1-lines.jsonl", lines + bytes(1024 * 1024 - len(lines)))
    assert ingest_spool(settings) == IngestResult(ingested=2)
    assert list(settings.spool_dir.glob("*.jsonl")) == []
    assert event_ids(settings) == [event(0).event_id, event(1).event_id]


def test_a_torn_line_waits_while_open_and_is_quarantined_once_closed(costsplit_home):
    settings = settings_for(costsplit_home)
    line0, line1 = event(0).to_json_line(), event(1).to_json_line()
    path = write_segment(settings.spool_dir, "1-1-a.jsonl", line0 + line1[:20])
    holder = os.open(path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the writer is alive
    assert ingest_spool(settings) == IngestResult(ingested=1)
    os.write(holder, line1[20:])  # the writer finishes its line
    assert ingest_spool(settings) == IngestResult(ingested=1)
    os.write(holder, line0[:30])
    os.close(holder)  # ... and dies mid-write
    assert ingest_spool(settings) == IngestResult(ingested=0, quarantined=1)
    assert not path.exists()
    rejected = settings.spool_dir / "rejected" / "1-1-a.rejected.jsonl"
    assert [orjson.loads(x) for x in rejected.read_bytes().splitlines()] == [
        {
            "segment": "1-1-a.jsonl",
            "offset": len(line0) + len(line1),
            "reason": "torn last line: the writer stopped mid-write",
            "line": line0[:30].decode(),
        }
    ]
    assert event_ids(settings) == [event(0).event_id, event(1).event_id]


def test_malformed_lines_are_rejected_with_their_reason(costsplit_home):
    settings = settings_for(costsplit_home)
    good = [event(i).to_json_line() for i in range(3)]
    ids = [event(i).event_id.encode() for i in range(10, 14)]
    bad = [
        b"not json\n",
        b'{"event_id": "%s", "schema_version": 1, "input_tokens": "many"}\n' % ids[1],
        b'{"schema_version": 1, "model_requested": "qwen-plus"}\n',
        b'{"event_id": "%s", "schema_version": 9}\n' % ids[2],
        b"[1, 2]\n",
        b'{"event_id": "%s", "schema_version": 1, "started_at": "yesterday"}\n' % ids[3],
        b'{"event_id": "x4", "schema_version": 2}\n',
    ]
    lines = [good[0], bad[0], bad[1], good[1], b"\n", bad[2], bad[3], bad[4], bad[5], bad[6]]
    lines.append(good[2])
    write_segment(settings.spool_dir, "1-1-a.jsonl", b"".join(lines))
    write_segment(settings.spool_dir, "2-1-a.jsonl", event(7).to_json_line())
    assert ingest_spool(settings) == IngestResult(
        ingested=4, duplicates=0, rejected=7, quarantined=0
    )
    assert event_ids(settings) == [event(i).event_id for i in (0, 1, 2, 7)]
    records = [
        orjson.loads(x)
        for x in (settings.spool_dir / "rejected" / "1-1-a.rejected.jsonl")
        .read_bytes()
        .splitlines()
    ]
    offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    assert [(r["offset"], r["line"], r["reason"]) for r in records] == [
        (offsets[1], "not json", "invalid JSON (column 1)"),
        (offsets[2], bad[1][:-1].decode(), "input_tokens: 'many' is not BIGINT"),
        (offsets[5], bad[2][:-1].decode(), "missing event_id"),
        (offsets[6], bad[3][:-1].decode(), "unknown schema_version 9 (this costsplit reads 1, 2)"),
        (offsets[7], "[1, 2]", "not a JSON object but list"),
        (offsets[8], bad[5][:-1].decode(), "started_at: 'yesterday' is not TIMESTAMPTZ"),
        (offsets[9], bad[6][:-1].decode(), "event_id 'x4' is not a UUID"),
    ]
    assert ingest_spool(settings) == IngestResult()  # the segment is gone, nothing counted twice


def test_tags_and_plugins_are_kept_as_json_objects_as_given(costsplit_home):
    settings = settings_for(costsplit_home)
    odd = dataclasses.replace(
        event(1), tags={'a"b': "c\\d", "é": "✓", "": ""}, plugins={"s": -(2**63), "t": 2**63 - 1}
    )
    good = [event(0).to_json_line(), odd.to_json_line()]
    head = '{"event_id": "0190a000-0000-7000-8000-0000000000%02d", "schema_version": 2, '
    # Values of another type are kept as given: a tag never costs a billed call its row.
    other_types = ['"tags": {"team": 1, "on": null}}', '"plugins": {"search": "2"}}']
    not_objects = ['"tags": ["team"]}', '"tags": "team"}', '"plugins": [1]}']
    lines = [(head % (10 + i) + rest + "\n").encode() for i, rest in enumerate(other_types)]
    bad = [(head % (20 + i) + rest + "\n").encode() for i, rest in enumerate(not_objects)]
    write_segment(settings.spool_dir, "1-1-a.jsonl", b"".join(good + lines + bad))
    assert ingest_spool(settings) == IngestResult(ingested=4, rejected=3)
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table(settings)]
    assert [(r["tags"], r["plugins"]) for r in rows] == [
        ("{}", '{"search":1}'),
        (
            '{"a\\"b":"c\\\\d","é":"✓","":""}',
            '{"s":-9223372036854775808,"t":9223372036854775807}',
        ),
        ('{"team":1,"on":null}', "{}"),
        ("{}", '{"search":"2"}'),
    ]
    rejected = settings.spool_dir / "rejected" / "1-1-a.rejected.jsonl"
    assert [orjson.loads(x)["reason"] for x in rejected.read_bytes().splitlines()] == [
        "tags: ['team'] is not an object",
        "tags: 'team' is not an object",
        "plugins: [1] is not an object",
    ]


def test_the_cli_prints_the_counts(costsplit_home):
    settings = settings_for(costsplit_home)
    write_segment(settings.spool_dir, "1-1-a.jsonl", event(0).to_json_line() * 2 + b"{\n")
    result = CliRunner().invoke(main, ["ingest"])
    assert (result.exit_code, result.output) == (
        0,
        "ingested 1, duplicates 1, rejected 1, quarantined 0\n",
    )
    result = CliRunner().invoke(main, ["ingest", "--json"])
    assert result.output == '{"ingested": 0, "duplicates": 0, "rejected": 0, "quarantined": 0}\n'


# A line exactly as this version of the spool writes it, kept byte for byte: a spool written
# before an upgrade must still be ingested by the versions after it.
FIRST_FORMAT_LINE = (
    '{"event_id":"0190a000-0000-7000-8000-00000000abcd","schema_version":1,'
    '"started_at":"2026-10-01T04:00:00.000001Z","latency_us":812345,"first_byte_us":20100,'
    '"recorder":"client","api_style":"openai-compatible","endpoint":"chat",'
    '"host":"dashscope-intl.aliyuncs.com","region":"ap-southeast-1",'
    '"key_fingerprint":"sha256:0123456789abcdef","key_hint":"\u2026abcd",'
    '"workspace_observed":"ws-support0000000","scenario":"support-bot",'
    '"tags":{"team":"support"},"model_requested":"qwen-plus","model_returned":"qwen-plus",'
    '"request_id":"req-1","streamed":true,"batch":false,"billing_plan":"payg","outcome":"ok",'
    '"http_status":200,"error_code":"","usage_source":"reported","input_tokens":1200,'
    '"output_tokens":300,"total_tokens":1500,"cached_tokens":200,"cache_creation_tokens":0,'
    '"cache_type":"","reasoning_tokens":0,"image_tokens":0,"audio_tokens":0,"video_tokens":0,'
    '"audio_output_tokens":0,"image_count":0,"plugins":{"search":2}}\n'
).encode()


def test_a_line_of_the_first_spool_format_is_ingested_whole(costsplit_home):
    settings = settings_for(costsplit_home)
    write_segment(settings.spool_dir, "1-1-a.jsonl", FIRST_FORMAT_LINE)
    assert ingest_spool(settings) == IngestResult(ingested=1)
    (row,) = table(settings)
    assert dict(zip(COLUMNS, row, strict=True)) == {
        "event_id": "0190a000-0000-7000-8000-00000000abcd",
        "schema_version": 1,
        "started_at": datetime(2026, 10, 1, 4, 0, 0, 1, tzinfo=UTC),
        "latency_us": 812345,
        "first_byte_us": 20100,
        "recorder": "client",
        "api_style": "openai-compatible",
        "endpoint": "chat",
        "host": "dashscope-intl.aliyuncs.com",
        "region": "ap-southeast-1",
        "key_fingerprint": "sha256:0123456789abcdef",
        "key_hint": "…abcd",
        "workspace_observed": "ws-support0000000",
        "scenario": "support-bot",
        "tags": '{"team":"support"}',
        "model_requested": "qwen-plus",
        "model_returned": "qwen-plus",
        "request_id": "req-1",
        "streamed": True,
        "batch": False,
        "billing_plan": "payg",
        "outcome": "ok",
        "http_status": 200,
        "error_code": "",
        "usage_source": "reported",
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "cached_tokens": 200,
        "cache_creation_tokens": 0,
        "cache_type": "",
        "reasoning_tokens": 0,
        "image_tokens": 0,
        "audio_tokens": 0,
        "video_tokens": 0,
        "audio_output_tokens": 0,
        "image_count": 0,
        "plugins": '{"search":2}',
    }


def first_format(e: UsageEvent) -> bytes:
    """The line a version-1 recorder wrote: every field, defaults included."""
    fields = dataclasses.asdict(e) | {"schema_version": 1}
    return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


def stored(e: UsageEvent, version: int) -> dict:
    fields = dataclasses.asdict(e) | {"schema_version": version}
    # tags and plugins are kept as the line's JSON objects, compact
    json_text = {name: orjson.dumps(fields[name]).decode() for name in ("tags", "plugins")}
    return fields | json_text | {"started_at": datetime.fromisoformat(e.started_at)}


def test_lines_of_both_formats_give_the_same_rows_in_one_batch(costsplit_home):
    settings = settings_for(costsplit_home)
    events = [
        event(i, http_status=200 if i % 2 else None, streamed=i % 4 == 0, recorder="proxy")
        for i in range(10)
    ]
    write_segment(settings.spool_dir, "1-1-a.jsonl", b"".join(map(first_format, events[:4])))
    write_segment(
        settings.spool_dir, "2-1-a.jsonl", b"".join(e.to_json_line() for e in events[4:8])
    )
    mixed = first_format(events[8]) + events[9].to_json_line()
    write_segment(settings.spool_dir, "3-1-a.jsonl", mixed)
    assert events[9].to_json_line().count(b'":') < first_format(events[9]).count(b'":') / 2
    assert ingest_spool(settings) == IngestResult(ingested=10)
    versions = [1, 1, 1, 1, 2, 2, 2, 2, 1, 2]
    assert [dict(zip(COLUMNS, row, strict=True)) for row in table(settings)] == [
        stored(e, v) for e, v in zip(events, versions, strict=True)
    ]


def test_a_null_is_kept_in_a_first_format_line_and_means_the_default_in_a_later_one(
    costsplit_home,
):
    settings = settings_for(costsplit_home)
    old = orjson.loads(first_format(event(1)))
    new = orjson.loads(event(2).to_json_line())
    lines = [orjson.dumps(line | {"error_code": None, "tags": None}) + b"\n" for line in (old, new)]
    write_segment(settings.spool_dir, "1-1-a.jsonl", b"".join(lines))
    assert ingest_spool(settings) == IngestResult(ingested=2)
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table(settings)]
    assert [(r["error_code"], r["tags"]) for r in rows] == [(None, None), ("", "{}")]


def test_ids_already_in_the_table_are_counted_and_leave_no_trace(costsplit_home):
    settings = settings_for(costsplit_home)
    a, b, c = (event(i).to_json_line() for i in range(3))
    write_segment(settings.spool_dir, "1-1-a.jsonl", a + b)
    assert ingest_spool(settings) == IngestResult(ingested=2)
    write_segment(settings.spool_dir, "2-1-a.jsonl", b + c)  # one new, one seen before
    assert ingest_spool(settings) == IngestResult(ingested=1, duplicates=1)
    write_segment(settings.spool_dir, "3-1-a.jsonl", a + c)  # all seen before
    assert ingest_spool(settings) == IngestResult(ingested=0, duplicates=2)
    assert [r[0] for r in table(settings)] == [event(i).event_id for i in range(3)]
    with connect(settings.database) as con:
        log = con.execute("SELECT ingested, duplicates FROM ingest_log").fetchall()
    assert log == [(2, 0), (1, 1), (0, 2)]


def test_a_backlog_is_committed_in_groups_of_bounded_size(costsplit_home):
    settings = settings_for(costsplit_home)
    lines = [event(i).to_json_line() for i in range(6)]
    size = len(lines[0])
    write_segment(settings.spool_dir, "1-1-a.jsonl", lines[0] + lines[1])
    write_segment(settings.spool_dir, "2-1-a.jsonl", lines[2] + lines[1])  # a repeat, later group
    write_segment(settings.spool_dir, "3-1-a.jsonl", lines[3] + lines[3])  # a repeat, same file
    write_segment(settings.spool_dir, "4-1-a.jsonl", lines[4] + lines[5] + b'{"torn')
    result = ingest_spool(settings, max_batch_bytes=2 * size + 10)
    assert result == IngestResult(ingested=6, duplicates=2, rejected=0, quarantined=1)
    assert event_ids(settings) == [event(i).event_id for i in range(6)]
    with connect(settings.database) as con:
        log = con.execute(
            "SELECT ingested, duplicates, rejected, quarantined FROM ingest_log"
        ).fetchall()
    assert log == [(2, 0, 0, 0), (1, 1, 0, 0), (1, 1, 0, 0), (2, 0, 0, 1)]
    assert list(settings.spool_dir.glob("*.jsonl")) == []


def test_an_empty_hidden_segment_left_by_a_dead_writer_is_removed_once_stale(costsplit_home):
    settings = settings_for(costsplit_home)
    folder = settings.spool_dir
    folder.mkdir(parents=True)
    old = time.time() - 3600
    stale = folder / ".1-1-dead.jsonl.new"
    fresh = folder / ".2-1-young.jsonl.new"
    locked = folder / ".3-1-alive.jsonl.new"
    written = folder / ".4-1-odd.jsonl.new"
    for path in (stale, fresh, locked):
        path.write_bytes(b"")
    written.write_bytes(event(0).to_json_line())
    for path in (stale, locked, written):
        os.utime(path, (old, old))
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a writer between its create and its rename
    try:
        assert ingest_spool(settings) == IngestResult()
        assert sorted(p.name for p in folder.iterdir()) == [
            ".2-1-young.jsonl.new",
            ".3-1-alive.jsonl.new",
            ".4-1-odd.jsonl.new",
        ]
    finally:
        os.close(holder)


# -- the database held by another process -------------------------------------------------------


def test_a_locked_database_fails_cleanly_and_leaves_the_spool_untouched(costsplit_home):
    settings = settings_for(costsplit_home)
    write_segment(settings.spool_dir, "1-1-a.jsonl", event(0).to_json_line() + b'{"torn')
    before = {p.name: p.read_bytes() for p in settings.spool_dir.iterdir()}
    settings.database.parent.mkdir(parents=True, exist_ok=True)
    holder = start(HOLD_DATABASE, str(settings.database), stdin=subprocess.PIPE)
    try:
        with pytest.raises(DatabaseLocked, match=r"is locked by another process \(PID \d+\)"):
            ingest_spool(settings, lock_timeout=0.2)
        cli = subprocess.run(
            [Path(sys.executable).parent / "costsplit", "ingest", "--wait", "0.2"],
            capture_output=True,
            env={**os.environ, "COSTSPLIT_HOME": str(costsplit_home)},
            cwd=costsplit_home,
        )
        assert cli.returncode == 1
        assert cli.stdout == b""
        assert cli.stderr.decode().count("\n") == 1
        assert cli.stderr.startswith(b"costsplit: error: ")
        assert b"nothing is lost" in cli.stderr
        assert {p.name: p.read_bytes() for p in settings.spool_dir.iterdir()} == before
    finally:
        holder.stdin.close()
        holder.wait()
    assert ingest_spool(settings) == IngestResult(ingested=1, quarantined=1)


# -- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_record_at_once_and_every_event_arrives_once(costsplit_home):
    settings = settings_for(costsplit_home)
    writers = [start(RECORDER, str(settings.spool_dir), "50000", "-") for _ in range(4)]
    # ingest while they write: open segments are read up to their last complete line
    ingest_spool(settings)
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    ingest_spool(settings)
    with connect(settings.database) as con:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events"
        ).fetchone()
    assert (rows, distinct) == (200_000, 200_000)
    assert list(settings.spool_dir.glob("*.jsonl")) == []


@pytest.mark.slow
def test_recorders_killed_at_random_moments_lose_nothing_acknowledged(costsplit_home):
    settings = settings_for(costsplit_home)
    rng = random.Random(20261001)
    ack = costsplit_home / "acknowledged.txt"
    for round_ in range(12):
        writer = start(RECORDER, str(settings.spool_dir), "10000000", str(ack))
        time.sleep(rng.uniform(0.0, 0.25))  # the random moment of the kill
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if round_ % 3 == 0:
            ingest_spool(settings)
    ingest_spool(settings)
    acknowledged = [x for x in ack.read_bytes().split(b"\n")[:-1]]  # a torn last ack is not one
    ids = event_ids(settings)
    assert len(ids) == len(set(ids))  # nothing doubled
    assert {a.decode() for a in acknowledged} <= set(ids)  # nothing acknowledged lost
    assert len(acknowledged) > 12
    assert list(settings.spool_dir.glob("*.jsonl")) == []


def make_spool(folder: Path, count: int) -> None:
    template = event(1).to_json_line()
    for s in range(3):
        ids = [new_event_id() for _ in range(count // 3)]
        data = b"".join(template.replace(event(1).event_id.encode(), i.encode()) for i in ids)
        write_segment(folder, f"{s}-1-seg.jsonl", data + data[: len(template) * 100])  # repeats


@pytest.mark.slow
def test_ingest_killed_mid_run_then_run_again_gives_the_same_table(tmp_path):
    reference, killed = settings_for(tmp_path / "reference"), settings_for(tmp_path / "killed")
    make_spool(reference.spool_dir, 60_000)
    shutil.copytree(reference.spool_dir, killed.spool_dir)
    first = ingest_spool(reference)
    assert (first.ingested, first.duplicates) == (60_000, 300)
    assert ingest_spool(reference) == IngestResult()  # run twice: nothing new
    rng = random.Random(7)
    for _ in range(3):
        proc = start(INGEST, home=tmp_path / "killed")
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ingest_spool(killed)
    columns = ", ".join(COLUMNS)
    with connect(killed.database) as con:
        con.execute(f"ATTACH '{reference.database}' AS reference (READ_ONLY)")
        differences = con.execute(
            f"""
            SELECT count(*) FROM (
                (SELECT {columns} FROM events EXCEPT ALL SELECT {columns} FROM reference.events)
                UNION ALL
                (SELECT {columns} FROM reference.events EXCEPT ALL SELECT {columns} FROM events)
            )
            """
        ).fetchone()[0]
        (rows,) = con.execute("SELECT count(*) FROM events").fetchone()
    assert (differences, rows) == (0, 60_000)


# -- the property ---------------------------------------------------------------------------------

POOL = [event(i) for i in range(6)]
VERSIONS = [1, 2, 2, 1, 2, 2]  # lines of both formats meet in one spool
LINES = [
    first_format(e) if v == 1 else e.to_json_line() for e, v in zip(POOL, VERSIONS, strict=True)
]

segment_plan = st.tuples(
    st.lists(st.integers(0, len(POOL) - 1), max_size=8),  # the lines, repeats allowed
    st.one_of(
        st.none(), st.tuples(st.integers(0, len(POOL) - 1), st.integers(1, 10_000), st.booleans())
    ),  # torn tail: cut short, or whole but for zeros where its copy had not reached yet
    st.sampled_from([0, 1, 4095, 70_000]),  # zero bytes the writer reserved past its lines
)


def torn_tail(line: bytes, cut: int, zero_head: bool) -> bytes:
    if zero_head:  # a copy that wrote its end first and was stopped before its start
        return bytes(1 + cut % 40) + line[1 + cut % 40 :]
    return line[: 1 + cut % (len(line) - 1)]  # never the whole line


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plans=st.lists(segment_plan, min_size=1, max_size=4),
    schedule=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30),
)
def test_any_interleaving_repetition_and_tearing_gives_the_distinct_complete_events(
    tmp_path, plans, schedule
):
    """Segments grow line by line in any interleaving, with ingests between; then all close.

    A segment written through the spool's map has a zero tail reserved past its lines; a
    writer killed mid-copy leaves a line that may hold zeros anywhere.
    """
    home = tmp_path / f"h{new_event_id()}"
    settings = settings_for(home)
    settings.spool_dir.mkdir(parents=True)
    fds, written, offsets = [], [0] * len(plans), [0] * len(plans)
    for s, (lines, _, reserve) in enumerate(plans):
        fd = os.open(settings.spool_dir / f"{s}-1-p.jsonl", os.O_WRONLY | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if reserve:
            os.ftruncate(fd, sum(len(LINES[i]) for i in lines) + len(LINES[0]) + reserve)
        fds.append(fd)

    def write(s: int, data: bytes) -> None:
        os.pwrite(fds[s], data, offsets[s])
        offsets[s] += len(data)

    def step(s: int) -> None:
        lines, _, _ = plans[s]
        if written[s] < len(lines):
            write(s, LINES[lines[written[s]]])
            written[s] += 1

    for s, run_ingest in schedule:
        step(s % len(plans))
        if run_ingest:
            ingest_spool(settings)
    for s, (lines, torn, _) in enumerate(plans):
        while written[s] < len(lines):
            step(s)
        if torn is not None:
            write(s, torn_tail(LINES[torn[0]], torn[1], torn[2]))
        os.close(fds[s])
    ingest_spool(settings)
    expected = sorted({i for lines, _, _ in plans for i in lines})
    assert [dict(zip(COLUMNS, row, strict=True)) for row in table(settings)] == [
        stored(POOL[i], VERSIONS[i]) for i in expected
    ]
    assert list(settings.spool_dir.glob("*.jsonl")) == []
    with connect(settings.database) as con:
        (quarantined,) = con.execute("SELECT sum(quarantined) FROM ingest_log").fetchone()
    assert quarantined == sum(1 for _, torn, _ in plans if torn is not None)
    shutil.rmtree(home)
