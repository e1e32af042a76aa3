"""The spool: one O_APPEND segment per process, one write per event, a lock while open."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import orjson
import pytest

from costsplit.config import load_settings
from costsplit.errors import SpoolError
from costsplit.events import UsageEvent
from costsplit.spool import Spool, open_spool


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_append_writes_one_json_line_per_event(tmp_path):
    events = [
        UsageEvent(event_id=f"e{i}", model_requested="qwen-plus", input_tokens=i) for i in range(3)
    ]
    with Spool(tmp_path / "spool") as spool:
        for event in events:
            spool.append(event)
        (segment,) = segments(tmp_path / "spool")
        assert segment == spool.segment
        assert segment.read_bytes() == b"".join(e.to_json_line() for e in events)
    lines = segment.read_bytes().splitlines()
    assert [orjson.loads(line)["event_id"] for line in lines] == ["e0", "e1", "e2"]


def test_the_segment_is_named_by_time_pid_and_randomness(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(UsageEvent())
        started_ns, pid, random = spool.segment.stem.split("-")
    assert abs(int(started_ns) - time.time_ns()) < 60 * 10**9
    assert int(pid) == os.getpid()
    assert len(random) == 8


def test_no_segment_until_the_first_append(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert spool.segment is None
    spool.close()
    assert not (tmp_path / "spool").exists()


def test_the_segment_is_locked_while_open_and_free_once_closed(tmp_path):
    spool = Spool(tmp_path, fsync_interval=0.01)
    spool.append(UsageEvent())
    segment = spool.segment
    assert is_locked(segment)
    spool.close()
    assert not is_locked(segment)


def test_append_after_close_raises_spool_error(tmp_path):
    spool = Spool(tmp_path)
    spool.close()
    with pytest.raises(SpoolError, match="is closed"):
        spool.append(UsageEvent())


@pytest.mark.parametrize("line", [b"no newline", b"two\nlines\n", b"\n\n"])
def test_append_line_refuses_anything_but_one_terminated_line(tmp_path, line):
    with (
        Spool(tmp_path) as spool,
        pytest.raises(SpoolError, match="must end with its only newline"),
    ):
        spool.append_line(line)


def test_fsync_per_event_and_group_fsync_write_the_same_bytes(tmp_path):
    events = [UsageEvent(event_id=f"e{i}") for i in range(20)]
    for interval in (0, 0.001):
        folder = tmp_path / str(interval)
        with Spool(folder, fsync_interval=interval) as spool:
            for event in events:
                spool.append(event)
            spool.flush()
        assert segments(folder)[0].read_bytes() == b"".join(e.to_json_line() for e in events)


def test_a_full_segment_moves_to_a_new_one(tmp_path):
    line = UsageEvent(event_id="x").to_json_line()
    with Spool(tmp_path, max_segment_bytes=3 * len(line)) as spool:
        for _ in range(7):
            spool.append_line(line)
        current = spool.segment
        full = [s for s in segments(tmp_path) if s != current]
        assert [s.stat().st_size for s in full] == [3 * len(line), 3 * len(line)]
        assert not any(is_locked(s) for s in full)
        assert current.stat().st_size == len(line)


def test_a_write_error_is_a_spool_error(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(UsageEvent())
        os.close(spool._fd)  # the descriptor vanishes under the spool, as on a failing disk
        spool._fd = os.open(os.devnull, os.O_RDONLY)
        with pytest.raises(SpoolError, match="cannot append"):
            spool.append(UsageEvent())


def test_a_forked_child_writes_to_a_segment_of_its_own(tmp_path):
    spool = Spool(tmp_path, fsync_interval=0)  # no fsync thread alive across the fork
    spool.append(UsageEvent(event_id="parent-1"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: append, report, exit without running the parent's atexit
        try:
            spool.append(UsageEvent(event_id="child-1"))
            spool.close()
            os.write(write_end, str(spool._path).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_segment = Path(os.read(read_end, 4096).decode())
    os.waitpid(pid, 0)
    spool.append(UsageEvent(event_id="parent-2"))
    parent_segment = spool.segment
    spool.close()
    assert child_segment != parent_segment
    assert sorted(segments(tmp_path)) == sorted([child_segment, parent_segment])
    ids = {
        p: [orjson.loads(x)["event_id"] for x in p.read_bytes().splitlines()]
        for p in segments(tmp_path)
    }
    assert ids == {parent_segment: ["parent-1", "parent-2"], child_segment: ["child-1"]}


def test_open_spool_is_one_per_directory_per_process(tmp_path):
    settings = load_settings(environ={"COSTSPLIT_HOME": str(tmp_path)}, cwd=tmp_path)
    first = open_spool(settings)
    assert open_spool(settings) is first
    assert first.directory == (tmp_path / "spool").resolve()
    first.close()
    second = open_spool(settings)
    assert second is not first
    second.close()


def test_a_forked_child_does_not_keep_the_parents_segment_open(tmp_path):
    spool = Spool(tmp_path, fsync_interval=0)
    spool.append(UsageEvent(event_id="parent-1"))
    segment = spool.segment
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child records nothing and just lives on until told
        try:
            os.close(go_write)
            os.write(ready_write, b"r")  # fork hooks have run by now
            os.read(go_read, 1)
        finally:
            os._exit(0)
    os.close(go_read)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r"
        os.close(ready_read)
        spool.close()
        assert not is_locked(segment)  # ingest may finish it although the child still runs
    finally:
        os.close(go_write)
        os.waitpid(pid, 0)
