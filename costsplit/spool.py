"""The spool: each process appends its usage events to a segment file of its own.

DuckDB lets one process hold a database file, and recorders run inside many application
processes. So a recorder never touches the database: it appends each event as one JSON line to
its process's own segment with a single ``os.write`` on an ``O_APPEND`` descriptor, in the
caller's thread. Once ``append`` returns, the line is in the kernel, so a killed process loses
nothing it acknowledged; a background thread ``fsync``s the segment at most every
``fsync_interval`` seconds (0 = ``fsync`` each event) to bound what a power loss can take.

The writer holds an exclusive ``flock`` on its segment for as long as it may write to it. Ingest
tells an open segment (lock held) from a closed or dead one (lock free: the kernel releases the
lock of a killed process), and only removes, or quarantines the torn last line of, a segment
whose lock is free. A forked child never writes to its parent's segment: it opens its own.

Segment names: ``<start time ns>-<pid>-<random>.jsonl``; ingest reads ``*.jsonl`` in the folder.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from costsplit.errors import SpoolError

if TYPE_CHECKING:
    from costsplit.config import Settings
    from costsplit.events import UsageEvent

SEGMENT_SUFFIX = ".jsonl"
MAX_SEGMENT_BYTES = 64 * 1024 * 1024  # a long-lived writer moves to a new segment past this

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Spool:
    """Appends JSON lines to this process's own segment in ``directory``.

    Thread-safe. ``append`` costs one ``os.write`` (plus one ``fsync`` when ``fsync_interval``
    is 0); errors are raised as ``SpoolError`` and a recorder decides what to do with them.
    """

    def __init__(
        self,
        directory: Path,
        fsync_interval: float = 0.05,
        *,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
    ) -> None:
        if fsync_interval < 0:
            raise ValueError("fsync_interval must be 0 or more")
        self.directory = Path(directory)
        self.fsync_interval = fsync_interval
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        self._path: Path | None = None
        self._size = 0
        self._dirty = False
        self._closed = False
        self._wake = threading.Event()
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
        """Write one newline-terminated line (no other newline in it) in one ``os.write``."""
        if not line.endswith(b"\n") or line.find(b"\n") != len(line) - 1:
            raise SpoolError("a spool line must end with its only newline")
        self._write(line)

    def _write(self, line: bytes) -> None:
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool {self.directory} is closed")
            if self._fd < 0:  # none yet in this process (a forked child's is dropped at fork)
                self._open_segment()
            elif self._size >= self.max_segment_bytes:
                self._finish_segment()
                self._open_segment()
            try:
                written = os.write(self._fd, line)
                while written < len(line):  # only on a full disk or a signal; finish the line
                    written += os.write(self._fd, line[written:])
            except OSError as exc:
                raise SpoolError(f"{self._path}: cannot append: {exc.strerror}") from exc
            self._size += len(line)
            if self.fsync_interval == 0:
                self._fsync(self._fd)
            elif not self._dirty:
                self._dirty = True
                self._wake.set()

    def flush(self) -> None:
        """``fsync`` what this process has written so far."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._dirty = False
                self._fsync(self._fd)

    def close(self) -> None:
        """``fsync``, release the segment to ingest and stop the background thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pid == os.getpid():
                self._finish_segment()
            self._wake.set()
        syncer = self._syncer
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join(timeout=5)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals (called with self._lock held) ---------------------------------------------
    def _open_segment(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            self._forget_parent(pid)
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
        self._fd, self._path, self._size = fd, path, 0
        if self.fsync_interval > 0 and (self._syncer is None or not self._syncer.is_alive()):
            self._syncer = threading.Thread(
                target=self._sync_loop, name="costsplit-spool-fsync", daemon=True
            )
            self._syncer.start()

    def _finish_segment(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd, self._dirty = self._fd, -1, False
        try:
            os.fsync(fd)
        except OSError:
            pass  # the lines are written; only power-loss durability of the tail is at stake
        finally:
            os.close(fd)  # releases the flock: ingest may now finish this segment

    def _forget_parent(self, pid: int) -> None:
        # After fork the descriptor, the lock and the thread are the parent's; leave them be.
        # Closing our copy of the descriptor does not release the parent's lock (it still holds
        # the open file), but keeps our lifetime from holding the parent's segment open.
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._pid, self._path, self._size = -1, pid, None, 0
        self._dirty = False
        self._syncer = None
        self._wake = threading.Event()

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise SpoolError(f"{self._path}: cannot fsync: {exc.strerror}") from exc

    def _sync_loop(self) -> None:
        """Group fsync: wake on the first unsynced write, wait the interval, sync them all."""
        wake = self._wake
        while True:
            wake.wait()
            if self._closed or wake is not self._wake:
                return
            time.sleep(self.fsync_interval)
            with self._lock:
                if self._closed or wake is not self._wake:
                    return
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
        spool._wake = threading.Event()
        spool._syncer = None
        # Our copy of the parent's descriptor would keep the parent's segment locked (open, to
        # ingest) for as long as we live; drop it. The next append opens our own segment.
        if spool._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(spool._fd)
            spool._fd = -1


def _close_all() -> None:
    for spool in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            spool.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
