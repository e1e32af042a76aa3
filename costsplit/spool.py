"""The spool: each process appends its usage events to a segment file of its own.

DuckDB lets one process hold a database file, and recorders run inside many application
processes. So a recorder never touches the database: it appends each event as one JSON line to
its process's own segment, in the caller's thread. The segment is reserved on disk ahead
(``posix_fallocate``) and mapped shared into memory, so an append is a copy into the page cache,
with no system call: once ``append`` returns, the line is in the kernel's pages of the file, so
a killed process loses nothing it acknowledged, and a full disk shows when a segment is
reserved, never halfway through a line. A line that finds no room is held in memory (bounded)
and written before any later one once there is room, which the background thread also checks
every interval, so held lines reach the disk without waiting for the next call; the append
raises all the same, so the recorder counts it. The background thread ``fsync``s the segment
at most every ``fsync_interval`` seconds (0 = ``fsync`` each event) to bound what a power loss
can take. Where space cannot be reserved ahead (no ``posix_fallocate``, or a file system that
refuses it) or a file cannot be mapped, the spool writes each line with one ``pwrite`` instead,
with the same promises but for the full disk, which then shows as a failed write.

The reserved space past the last line reads as zero bytes, and no line contains one (JSON
escapes it). A writer that closes its segment cuts it to its lines; a killed writer leaves the
zero tail, and a line caught mid-copy may have zeros in it. Ingest reads a segment's lines up to
its zero tail and treats a line with a zero byte as not yet written (``ingest._inspect``). A
map faults (SIGBUS) only if its file shrinks under it; nothing in costsplit cuts a segment but
its own writer, after unmapping it.

The writer holds an exclusive ``flock`` on its segment for as long as it may write to it. Ingest
tells an open segment (lock held) from a closed or dead one (lock free: the kernel releases the
lock of a killed process), and only removes, or quarantines the torn last line of, a segment
whose lock is free. A forked child never writes to its parent's segment: it opens its own.

Segment names: ``<start time ns>-<pid>-<random>.jsonl``; ingest reads ``*.jsonl`` in the folder.
A process's first segment reserves ``FIRST_SEGMENT_BYTES``; each next one twice the last, up to
``max_segment_bytes``, so a short-lived process holds little disk and a busy one rarely moves on.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from costsplit.errors import SpoolError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from costsplit.config import Settings
    from costsplit.events import UsageEvent

log = logging.getLogger("costsplit.spool")

SEGMENT_SUFFIX = ".jsonl"
FIRST_SEGMENT_BYTES = 1024 * 1024
MAX_SEGMENT_BYTES = 16 * 1024 * 1024
MAX_HELD_BYTES = 64 * 1024 * 1024  # events kept in memory while the disk is full
HELD_RETRY_SECONDS = 0.5  # how often held lines are tried when each append fsyncs itself

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


class Spool:
    """Appends JSON lines to this process's own segment in ``directory``.

    Thread-safe. ``append`` copies the line into the mapped segment (plus one ``fsync`` when
    ``fsync_interval`` is 0); errors are raised as ``SpoolError`` and a recorder decides what to
    do with them.
    """

    def __init__(
        self,
        directory: Path,
        fsync_interval: float = 0.05,
        *,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        first_segment_bytes: int = FIRST_SEGMENT_BYTES,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        if fsync_interval < 0:
            raise ValueError("fsync_interval must be 0 or more")
        self.directory = Path(directory)
        self.fsync_interval = fsync_interval
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._map: mmap.mmap | None = None  # None: no segment, or one written with pwrite
        self._pid = -1
        self._path: Path | None = None
        self._used = 0  # bytes of lines in the segment
        self._capacity = 0  # bytes the segment may hold; 0 = no segment in this process
        self._next_capacity = min(first_segment_bytes, max_segment_bytes)
        self._dirty = False
        self._closed = False
        self._held: collections.deque[bytes] = collections.deque()  # no room on disk yet
        self._held_bytes = 0
        self.max_held_bytes = max_held_bytes
        self._wake = threading.Event()  # set: lines to fsync or held lines to write
        self._closing = threading.Event()  # set by close: the background thread stops waiting
        self._syncer: threading.Thread | None = None
        _LIVE.add(self)

    @property
    def segment(self) -> Path | None:
        """The segment this process writes to now (None before the first append)."""
        return self._path if self._pid == os.getpid() else None

    def append(self, event: UsageEvent) -> None:
        """Write ``event`` as one line; when this returns, a killed process cannot lose it."""
        self._write(event.to_json_line())  # orjson escapes newlines: the line has only its own

    def append_line(self, line: bytes) -> None:
        """Write one newline-terminated line (no other newline, no zero byte in it)."""
        if not line.endswith(b"\n") or line.find(b"\n") != len(line) - 1:
            raise SpoolError("a spool line must end with its only newline")
        if b"\0" in line:
            raise SpoolError("a spool line cannot hold a zero byte")
        self._write(line)

    def _write(self, line: bytes) -> None:
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool {self.directory} is closed")
            if self._held:  # lines wait for room on disk: this one goes after them
                self._hold(line)
                self._write_held()
                return
            start = self._used
            end = start + len(line)
            if end <= self._capacity and self._map is not None:  # the usual case, inline
                self._map[start:end] = line
                self._used = end
            else:
                try:
                    self._place(line)
                except SpoolError as exc:
                    self._hold(line)
                    raise SpoolError(f"{exc}; {self._held_note()}") from exc
            self._written()

    def _place(self, line: bytes) -> None:
        """Copy ``line`` after the segment's last one; on failure nothing moved."""
        start = self._used
        end = start + len(line)
        if end > self._capacity:  # no segment yet in this process, or this one is full
            self._next_segment(len(line))
            start, end = 0, len(line)
        if self._map is not None:
            self._map[start:end] = line
        else:
            self._write_fd(line)
        self._used = end

    def _written(self) -> None:
        """After lines were placed: ``fsync`` now, or tell the group fsync there is work."""
        if self.fsync_interval == 0:
            self._fsync(self._fd)
        elif not self._dirty:
            self._dirty = True
            self._wake.set()

    def _hold(self, line: bytes) -> None:
        """Keep a line that found no room on disk, in memory, to be written first when there
        is room again (a full disk delays an event; only a kill while it waits loses it)."""
        if self._held_bytes + len(line) > self.max_held_bytes:
            raise SpoolError(
                f"{self.directory}: no room on disk and {self._held_bytes} bytes of events "
                "already held in memory: this event is dropped"
            )
        self._held.append(line)
        self._held_bytes += len(line)
        self._wake.set()  # the background thread tries them every interval
        self._start_syncer()

    def _write_held(self) -> None:
        """Write the held lines in order; raises ``SpoolError`` while there is still no room."""
        while self._held:
            try:
                self._place(self._held[0])
            except SpoolError as exc:
                raise SpoolError(f"{exc}; {self._held_note()}") from exc
            self._held_bytes -= len(self._held.popleft())
        self._written()

    def _held_note(self) -> str:
        return f"{len(self._held)} event(s) held in memory until there is room"

    @property
    def held(self) -> int:
        """Events waiting in memory for room on disk (0 unless the disk is full)."""
        return len(self._held)

    def flush(self) -> None:
        """Write held lines if there is room now, and ``fsync`` what this process wrote."""
        with self._lock:
            if self._held and not self._closed:
                self._write_held()
            if self._fd >= 0 and self._pid == os.getpid():
                self._dirty = False
                self._fsync(self._fd)

    def close(self) -> None:
        """Write held lines if there is room, ``fsync``, release the segment to ingest and stop
        the background thread. Lines that still find no room are lost, and logged."""
        with self._lock:
            if self._closed:
                return
            if self._held:
                try:
                    self._write_held()
                except SpoolError as exc:
                    log.error("costsplit spool: %s; they are lost as this process closes", exc)
            self._closed = True
            if self._pid == os.getpid():
                self._finish_segment()
            self._wake.set()
            self._closing.set()
        syncer = self._syncer
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join(timeout=5)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals (called with self._lock held) ---------------------------------------------
    def _next_segment(self, line_bytes: int) -> None:
        pid = os.getpid()
        if self._pid != pid:  # a forked child: the open segment, if any, is the parent's
            self._forget_parent(pid)
        elif self._fd >= 0:
            self._finish_segment()
        capacity = max(self._next_capacity, line_bytes)
        self._open_segment(capacity)
        self._next_capacity = min(self._next_capacity * 2, self.max_segment_bytes)

    def _open_segment(self, capacity: int) -> None:
        pid = self._pid
        name = f"{time.time_ns()}-{pid}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
        path = self.directory / name
        # Created under a name ingest ignores and renamed once locked: ingest never sees the
        # segment unlocked (which it would take for finished, and remove) before its first line.
        hidden = self.directory / f".{name}.new"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(hidden, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise SpoolError(
                f"{self.directory}: cannot open a spool segment: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise SpoolError(f"{path}: cannot lock the new segment: {exc.strerror}") from exc
        try:
            reserved = _reserve(fd, capacity)  # a full disk shows here, before any line
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()  # empty: nothing of it to ingest
            raise SpoolError(f"{path}: cannot reserve {capacity} bytes: {exc.strerror}") from exc
        self._map = None
        if reserved:
            try:
                self._map = mmap.mmap(fd, capacity)
            except (OSError, ValueError):  # a file system without shared maps
                try:
                    os.ftruncate(fd, 0)
                except OSError as exc:
                    os.close(fd)
                    raise SpoolError(
                        f"{path}: cannot map or cut the segment: {exc.strerror}"
                    ) from exc
        if self._map is None:  # written with pwrite instead
            capacity = self.max_segment_bytes
        self._fd, self._path, self._used, self._capacity = fd, path, 0, capacity
        if self.fsync_interval > 0:
            self._start_syncer()

    def _start_syncer(self) -> None:
        if self._syncer is None or not self._syncer.is_alive():
            self._syncer = threading.Thread(
                target=self._sync_loop, name="costsplit-spool-fsync", daemon=True
            )
            self._syncer.start()

    def _write_fd(self, line: bytes) -> None:
        try:
            written = os.pwrite(self._fd, line, self._used)
            while written < len(line):  # only on a full disk or a signal; finish the line
                written += os.pwrite(self._fd, line[written:], self._used + written)
        except OSError as exc:
            raise SpoolError(f"{self._path}: cannot append: {exc.strerror}") from exc

    def _finish_segment(self) -> None:
        """Cut the segment to its lines, ``fsync`` it and release it to ingest."""
        if self._fd < 0:
            return
        fd, self._fd, self._dirty, self._capacity = self._fd, -1, False, 0
        spool_map, self._map = self._map, None
        try:
            if spool_map is not None:
                spool_map.close()
            os.ftruncate(fd, self._used)
            os.fsync(fd)
        except OSError:
            pass  # the lines are written; ingest reads past a zero tail left behind
        finally:
            os.close(fd)  # releases the flock: ingest may now finish this segment

    def _forget_parent(self, pid: int) -> None:
        # After fork the descriptor, the lock and the thread are the parent's; leave them be.
        # Closing our copy of the descriptor does not release the parent's lock (it still holds
        # the open file), but keeps our lifetime from holding the parent's segment open.
        _drop_inherited_segment(self)
        self._pid, self._path = pid, None
        self._dirty = False
        self._syncer = None
        self._wake, self._closing = threading.Event(), threading.Event()

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)  # also writes back the pages changed through the map
        except OSError as exc:
            raise SpoolError(f"{self._path}: cannot fsync: {exc.strerror}") from exc

    def _sync_loop(self) -> None:
        """The background thread: wake on the first unsynced write or held line, wait the
        interval (``fsync_interval``, else ``HELD_RETRY_SECONDS``), write the held lines if
        there is room now (while there is not, the wake stays set: tried every interval),
        then ``fsync`` everything written since the last time."""
        wake, closing = self._wake, self._closing
        while True:
            wake.wait()
            if self._closed or wake is not self._wake:
                return
            closing.wait(self.fsync_interval or HELD_RETRY_SECONDS)
            with self._lock:
                if self._closed or wake is not self._wake:
                    return
                if self._held:
                    with contextlib.suppress(SpoolError):  # still no room
                        self._write_held()
                if not self._held:
                    wake.clear()
                if self._fd < 0 or not self._dirty:
                    continue
                self._dirty = False
                try:
                    # dup so the fsync runs outside the lock: appends never wait for the disk
                    fd = os.dup(self._fd)
                except OSError:
                    continue
            try:
                os.fsync(fd)
            except OSError:
                pass  # retried on the next write; appends report their own errors
            finally:
                os.close(fd)


_FULL_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _reserve(fd: int, size: int) -> bool:
    """Reserve ``size`` bytes of disk for a mapped segment; False where the platform or the
    file system cannot (the segment is then written with ``pwrite``). No room raises."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS, for one
        return False
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _FULL_DISK_ERRORS:
            raise
        return False
    return True


def _drop_inherited_segment(spool: Spool) -> None:
    """In a forked child: let go of the parent's segment without touching it."""
    if spool._map is not None:
        with contextlib.suppress(Exception):
            spool._map.close()  # unmaps our copy only
    if spool._fd >= 0:
        with contextlib.suppress(OSError):
            os.close(spool._fd)
    spool._fd, spool._map, spool._used, spool._capacity = -1, None, 0, 0
    spool._held, spool._held_bytes = collections.deque(), 0  # the parent's to write


def spooled_lines(directory: Path) -> Iterator[bytes]:
    """The complete lines in the segments of ``directory``, open or closed, oldest segment
    first, each without its newline (for tools and tests that read the spool; ingest reads
    past offsets of its own)."""
    for path in sorted(Path(directory).glob(f"*{SEGMENT_SUFFIX}")):
        data = path.read_bytes()
        zero = data.find(b"\0")  # the reserved tail, or a line not fully written
        complete = data[: data.rfind(b"\n", 0, zero if zero >= 0 else len(data)) + 1]
        yield from complete.splitlines()


_LIVE: weakref.WeakSet[Spool] = weakref.WeakSet()
_BY_DIRECTORY: dict[Path, Spool] = {}
_REGISTRY_LOCK = threading.Lock()


def open_spool(settings: Settings) -> Spool:
    """The process-wide spool for ``settings.spool_dir``, created on first use, closed at exit.

    One per directory per process: every recorder of a process shares one segment. A forked
    child gets a segment of its own on its first append.
    """
    directory = Path(settings.spool_dir).expanduser().resolve()
    with _REGISTRY_LOCK:
        spool = _BY_DIRECTORY.get(directory)
        if spool is None or spool._closed:
            spool = Spool(directory, settings.fsync_interval)
            _BY_DIRECTORY[directory] = spool
        return spool


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for spool in list(_LIVE):
        spool._lock = threading.Lock()
        spool._wake, spool._closing = threading.Event(), threading.Event()
        spool._syncer = None
        # Our copy of the parent's descriptor would keep the parent's segment locked (open, to
        # ingest) for as long as we live; drop it. The next append opens our own segment.
        _drop_inherited_segment(spool)


def _close_all() -> None:
    for spool in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            spool.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
