"""The spool: one reserved, mapped segment per process, a copy per event, a lock while open."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import orjson
import pytest
from full_disk import file_size_limit

from costsplit.config import load_settings
from costsplit.errors import SpoolError
from costsplit.events import UsageEvent
from costsplit.spool import FIRST_SEGMENT_BYTES, Spool, open_spool, spooled_lines


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
    lines = b"".join(e.to_json_line() for e in events)
    with Spool(tmp_path / "spool") as spool:
        for event in events:
            spool.append(event)
        (segment,) = segments(tmp_path / "spool")
        assert segment == spool.segment
        # while open: the lines, then the zero bytes reserved for the next ones
        assert segment.read_bytes() == lines + bytes(FIRST_SEGMENT_BYTES - len(lines))
    assert segment.read_bytes() == lines  # closed: cut to its lines
    assert [orjson.loads(x)["event_id"] for x in lines.splitlines()] == ["e0", "e1", "e2"]


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


def test_a_full_segment_moves_to_a_new_one_reserving_twice_as_much_up_to_the_most(tmp_path):
    line = UsageEvent(event_id="x").to_json_line()
    with Spool(tmp_path, first_segment_bytes=2 * len(line), max_segment_bytes=5 * len(line)) as s:
        reserved = []
        for _ in range(16):
            s.append_line(line)
            if s.segment not in [path for path, _ in reserved]:
                reserved.append((s.segment, s.segment.stat().st_size))
        current = s.segment
        full = [path for path in segments(tmp_path) if path != current]
        assert [size // len(line) for _, size in reserved] == [2, 4, 5, 5]
        assert [path.stat().st_size // len(line) for path in full] == [2, 4, 5]  # cut to lines
        assert not any(is_locked(path) for path in full)
        assert current.read_bytes().rstrip(b"\0") == line * 5
    assert current.read_bytes() == line * 5


def test_a_line_longer_than_a_segment_gets_one_of_its_own(tmp_path):
    short, long = b'{"a":1}\n', b'{"a":"' + b"x" * 100 + b'"}\n'
    with Spool(tmp_path, first_segment_bytes=16, max_segment_bytes=16) as spool:
        for line in (short, long, short):
            spool.append_line(line)
    assert [path.read_bytes() for path in segments(tmp_path)] == [short, long, short]


def test_a_full_disk_holds_events_in_memory_and_writes_them_in_order_once_there_is_room(
    tmp_path,
):
    lines = [b'{"n":%03d}\n' % i for i in range(410)]  # 10 bytes: 400 fill the first segment
    spool = Spool(tmp_path, first_segment_bytes=4000, max_segment_bytes=64 * 1024)
    with file_size_limit(7000):  # as a full disk would: no room for the next, 8000-byte segment
        for line in lines[:400]:
            spool.append_line(line)
        with pytest.raises(SpoolError, match=r"cannot reserve 8000 bytes.*1 event\(s\) held"):
            spool.append_line(lines[400])
        with pytest.raises(SpoolError, match=r"2 event\(s\) held in memory until there is room"):
            spool.append_line(lines[401])
        assert spool.held == 2
    spool.append_line(lines[402])  # room again: the held ones go first
    assert spool.held == 0
    spool.close()
    assert [path.read_bytes() for path in segments(tmp_path)] == [
        b"".join(lines[:400]),
        b"".join(lines[400:403]),
    ]
    assert list(tmp_path.glob(".*")) == []  # no reserved-but-empty segment left behind


def test_held_events_are_written_at_close_or_logged_as_lost(tmp_path, caplog):
    line = b'{"a":1}\n'
    for room_at_close, expected in ((True, [line, line]), (False, [line])):
        folder = tmp_path / str(room_at_close)
        # no retry by the background thread between the two limits (close stops its wait)
        spool = Spool(folder, 30.0, first_segment_bytes=8, max_segment_bytes=4096)
        spool.append_line(line)
        with file_size_limit(10), pytest.raises(SpoolError, match="held"):
            spool.append_line(line)
        with file_size_limit(4096 if room_at_close else 10):
            spool.close()
        assert [path.read_bytes() for path in segments(folder)] == expected
    assert "1 event(s) held in memory until there is room" in caplog.text
    assert "they are lost as this process closes" in caplog.text


@pytest.mark.parametrize("fsync_interval", [0.05, 0.0])
def test_held_events_reach_the_disk_once_there_is_room_without_another_append(
    tmp_path, monkeypatch, fsync_interval
):
    # The disk fills during a burst of calls, then the calls stop while room is made: the
    # background thread writes what is held, so no later call (or close) is needed for it.
    monkeypatch.setattr("costsplit.spool.HELD_RETRY_SECONDS", 0.05)
    lines = [b'{"a":1}\n', b'{"b":2}\n']
    spool = Spool(tmp_path, fsync_interval, first_segment_bytes=8, max_segment_bytes=4096)
    spool.append_line(lines[0])
    with file_size_limit(10), pytest.raises(SpoolError, match="1 event"):
        spool.append_line(lines[1])
    deadline = time.monotonic() + 5
    while spool.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.held == 0
    assert [line + b"\n" for line in spooled_lines(tmp_path)] == lines  # before close, in order
    spool.close()


def test_memory_for_held_events_is_bounded(tmp_path):
    line = b'{"a":1}\n'
    spool = Spool(tmp_path, first_segment_bytes=8, max_segment_bytes=4096, max_held_bytes=16)
    spool.append_line(line)
    with file_size_limit(10):
        for held in (1, 2):
            with pytest.raises(SpoolError, match=f"{held} event"):
                spool.append_line(line)
        with pytest.raises(SpoolError, match=r"16 bytes of events already held.*dropped"):
            spool.append_line(line)
        assert spool.held == 2
    spool.close()
    assert b"".join(path.read_bytes() for path in segments(tmp_path)) == line * 3


def refuse(errno_: int, message: str):
    def refused(*args, **kwargs):
        raise OSError(errno_, message)

    return refused


@pytest.mark.parametrize(
    "where, replacement",
    [
        ("costsplit.spool.mmap.mmap", refuse(19, "No such device")),  # a FS without shared maps
        ("costsplit.spool.os.posix_fallocate", refuse(95, "Operation not supported")),
        ("costsplit.spool.os.posix_fallocate", None),  # a platform without it (macOS)
    ],
)
def test_without_reserving_or_mapping_each_line_is_written_and_a_write_error_is_a_spool_error(
    tmp_path, monkeypatch, where, replacement
):
    if replacement is None:
        monkeypatch.delattr(where)
    else:
        monkeypatch.setattr(where, replacement)
    line = UsageEvent(event_id="x").to_json_line()
    with Spool(tmp_path, max_segment_bytes=2 * len(line)) as spool:
        for _ in range(3):
            spool.append_line(line)
        assert spool.segment.read_bytes() == line  # written, no zero tail: nothing reserved
        assert [path.stat().st_size for path in segments(tmp_path)] == [2 * len(line), len(line)]
        os.close(spool._fd)  # the descriptor vanishes under the spool, as on a failing disk
        spool._fd = os.open(os.devnull, os.O_RDONLY)
        with pytest.raises(SpoolError, match=r"cannot append.*1 event.s. held"):
            spool.append_line(line)


def test_no_room_to_reserve_is_a_full_disk_not_a_file_system_without_reservations(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("costsplit.spool.os.posix_fallocate", refuse(28, "No space left"))
    with Spool(tmp_path) as spool, pytest.raises(SpoolError, match=r"cannot reserve.*No space"):
        spool.append_line(b'{"a":1}\n')


def test_append_line_refuses_a_zero_byte(tmp_path):
    with Spool(tmp_path) as spool, pytest.raises(SpoolError, match="zero byte"):
        spool.append_line(b'{"a":"\0"}\n')


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


def test_spooled_lines_are_the_complete_lines_of_open_and_closed_segments(tmp_path):
    first, second = b'{"a":1}\n', b'{"a":2}\n'
    closed = Spool(tmp_path)
    closed.append_line(first)
    closed.close()
    with Spool(tmp_path) as open_one:
        open_one.append_line(second)
        (tmp_path / "9-1-torn.jsonl").write_bytes(second + b'{"a":' + bytes(8))  # writer killed
        assert list(spooled_lines(tmp_path)) == [first[:-1], second[:-1], second[:-1]]
