"""Ingest: move complete spool lines into DuckDB, each event exactly once.

For every segment, ingest takes the complete lines past the offset it remembers, loads them in
bulk with DuckDB's ``read_ndjson`` (typed by ``events.COLUMNS``), drops event ids already seen
(in the batch, and by an anti-join against ``events``), and commits the new rows together with
the new offsets in one transaction. So a run killed at any moment leaves the table and the
offsets as they were, and the next run does the same work again; a run after a complete one
finds nothing new. Re-ingested lines are duplicates by event id, never second rows.

A segment whose writer still holds its lock is open: its torn last line (if any) waits. A
segment whose lock is free is closed (its writer closed it or died): its torn last line is
quarantined, and once every byte is accounted for the segment file is removed. Lines that are
not events (bad JSON, wrong types, no ``event_id``, unknown ``schema_version``) go to
``<spool>/rejected/<segment>.rejected.jsonl`` with their offset and reason; they are counted,
never raised. The bulk path is the only path for good batches: lines are looked at one by one
only in a segment whose bulk load failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import orjson

from costsplit import store
from costsplit.config import Settings
from costsplit.events import COLUMNS, SCHEMA_VERSION
from costsplit.spool import SEGMENT_SUFFIX

REJECTED_DIR = "rejected"
WORK_DIR = "ingest-work"  # the bytes of one run; no ``.jsonl`` at the top level, so never a segment


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest run did: events inserted, duplicates dropped, lines set aside."""

    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    quarantined: int = 0


@dataclasses.dataclass(slots=True)
class _Segment:
    path: Path
    start: int  # offset remembered from the last run
    end: int  # end of the last complete line
    size: int
    closed: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def new_offset(self) -> int:
        # A closed segment's torn tail is quarantined in this run, so it is accounted for.
        return self.size if self.closed else self.end


def ingest_spool(settings: Settings, *, lock_timeout: float = 10.0) -> IngestResult:
    """Ingest every segment of ``settings.spool_dir`` into ``settings.database``.

    Raises ``DatabaseLocked`` (after retrying for ``lock_timeout`` seconds) when another process
    holds the database; the spool is then untouched.
    """
    spool_dir = Path(settings.spool_dir)
    with store.connect(settings.database, lock_timeout=lock_timeout) as con:
        con.execute("SET preserve_insertion_order = false")  # rows have no order to keep
        return _Run(con, spool_dir).ingest()


class _Run:
    def __init__(self, con: duckdb.DuckDBPyConnection, spool_dir: Path) -> None:
        self.con = con
        self.spool_dir = spool_dir
        self.work = spool_dir / WORK_DIR
        self.rejected = 0
        self.quarantined = 0
        self.bad_lines: dict[str, list[tuple[int, bytes, str]]] = {}

    def ingest(self) -> IngestResult:
        segments = self.scan()
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE batch ({_column_list()})")
            files = [(seg, self.bytes_to_load(seg)) for seg in segments if seg.end > seg.start]
            if files:
                self.load([f for _, f in files], files)
            self.write_rejected()
            ingested, duplicates = self.commit(segments)
        finally:
            self.con.execute("DROP TABLE IF EXISTS temp.batch")
            shutil.rmtree(self.work, ignore_errors=True)
        for seg in segments:
            if seg.closed and seg.new_offset >= seg.size:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
        return IngestResult(ingested, duplicates, self.rejected, self.quarantined)

    # -- reading the spool ---------------------------------------------------------------------
    def scan(self) -> list[_Segment]:
        if not self.spool_dir.is_dir():
            return []
        shutil.rmtree(self.work, ignore_errors=True)  # left by a run that was killed
        offsets = dict(
            self.con.execute("SELECT segment, byte_offset FROM spool_offsets").fetchall()
        )
        segments = []
        for path in sorted(self.spool_dir.glob(f"*{SEGMENT_SUFFIX}")):
            try:
                segment = _inspect(path, offsets.get(path.name, 0))
            except FileNotFoundError:
                continue  # removed by a run that ended after its commit
            if segment.closed and segment.end < segment.size:
                tail = _read(path, segment.end, segment.size)
                reason = "torn last line: the writer stopped mid-write"
                self.reject(segment, segment.end, tail, reason, quarantine=True)
            segments.append(segment)
        return segments

    def bytes_to_load(self, seg: _Segment) -> Path:
        """A file of exactly the segment's new complete lines (the segment itself if it can)."""
        if seg.closed and seg.start == 0 and seg.end == seg.size:
            return seg.path
        self.work.mkdir(parents=True, exist_ok=True)
        target = self.work / seg.name
        with open(seg.path, "rb") as src, open(target, "wb") as dst:
            src.seek(seg.start)
            remaining = seg.end - seg.start
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), remaining)
                if copied == 0:
                    break
                remaining -= copied
        return target

    # -- loading -------------------------------------------------------------------------------
    def load(self, paths: list[Path], files: list[tuple[_Segment, Path]]) -> None:
        """Bulk-load every file at once; on failure, file by file; on failure, line by line."""
        if self.try_load(paths, "batch"):
            return
        for seg, path in files:
            if not self.try_load([path], "batch"):
                self.load_lines(seg, path)

    def try_load(self, paths: list[Path], table: str) -> bool:
        """Load ``paths`` into ``table``, all or nothing; False when any line is not an event.

        The first, whole-batch attempt loads straight into the empty ``batch``: the common case
        pays for one copy of the rows, not two.
        """
        direct = (
            table == "batch" and self.con.execute("SELECT count(*) FROM batch").fetchone()[0] == 0
        )
        target = table if direct else "part"
        if not direct:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE part ({_column_list()})")
        try:
            self.con.execute(
                f"INSERT INTO {target} SELECT * FROM read_ndjson($paths, columns = $columns, "
                "format = 'newline_delimited', maximum_object_size = 16777216)",
                {"paths": [str(p) for p in paths], "columns": COLUMNS},
            )
        except duckdb.Error:
            if direct:
                self.con.execute("DELETE FROM batch")
            return False
        (bad,) = self.con.execute(
            f"SELECT count(*) FROM {target} WHERE event_id IS NULL OR event_id = '' "
            "OR schema_version IS DISTINCT FROM $v",
            {"v": SCHEMA_VERSION},
        ).fetchone()
        if bad:
            self.con.execute(f"DELETE FROM {target}")
            return False
        if not direct:
            self.con.execute(f"INSERT INTO {table} SELECT * FROM part")
        return True

    def load_lines(self, seg: _Segment, path: Path) -> None:
        """The slow path: judge each line, load the good ones, reject the rest with a reason."""
        good: list[tuple[int, bytes]] = []
        offset = seg.start
        for raw in _lines(path):
            if raw.strip():
                problem = _line_problem(raw)
                if problem:
                    self.reject(seg, offset, raw, problem)
                else:
                    good.append((offset, raw))
            offset += len(raw) + 1
        self.load_or_split(seg, good)

    def load_or_split(self, seg: _Segment, lines: list[tuple[int, bytes]]) -> None:
        # Lines that pass our checks but that DuckDB still refuses are found by halving.
        if not lines:
            return
        self.work.mkdir(parents=True, exist_ok=True)
        part = self.work / f"{seg.name}.{lines[0][0]}.part"
        part.write_bytes(b"".join(raw + b"\n" for _, raw in lines))
        if self.try_load([part], "batch"):
            return
        if len(lines) == 1:
            offset, raw = lines[0]
            self.reject(seg, offset, raw, f"not loadable: {_duckdb_reason(self.con, part)}")
            return
        middle = len(lines) // 2
        self.load_or_split(seg, lines[:middle])
        self.load_or_split(seg, lines[middle:])

    # -- rejected lines ------------------------------------------------------------------------
    def reject(
        self, seg: _Segment, offset: int, raw: bytes, reason: str, *, quarantine: bool = False
    ) -> None:
        self.bad_lines.setdefault(seg.name, []).append((offset, raw, reason))
        if quarantine:
            self.quarantined += 1
        else:
            self.rejected += 1

    def write_rejected(self) -> None:
        """One file per segment; a rerun after a killed run does not write a line twice."""
        if not self.bad_lines:
            return
        folder = self.spool_dir / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for name, entries in self.bad_lines.items():
            target = folder / f"{Path(name).stem}.rejected.jsonl"
            seen = set()
            if target.exists():
                for line in target.read_bytes().splitlines():
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
                        seen.add(orjson.loads(line)["offset"])
            records = [
                orjson.dumps(
                    {
                        "segment": name,
                        "offset": offset,
                        "reason": reason,
                        "line": raw.decode("utf-8", "backslashreplace"),
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
                for offset, raw, reason in entries
                if offset not in seen
            ]
            with open(target, "ab") as out:
                out.write(b"".join(records))
                out.flush()
                os.fsync(out.fileno())

    # -- the one transaction -------------------------------------------------------------------
    def commit(self, segments: list[_Segment]) -> tuple[int, int]:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            total, distinct, low, high = con.execute(
                "SELECT count(*), count(DISTINCT event_id), min(event_id), max(event_id) FROM batch"
            ).fetchone()
            ingested = 0
            if total:
                # Event ids are time-ordered, so the range filter lets DuckDB skip old row groups;
                # the window that drops repeats within the batch runs only when there are some.
                columns = ", ".join(COLUMNS)
                once = (
                    "QUALIFY row_number() OVER (PARTITION BY event_id) = 1"
                    if distinct < total
                    else ""
                )
                (ingested,) = con.execute(
                    f"""
                    INSERT INTO events ({columns})
                    SELECT {columns} FROM batch
                    WHERE event_id NOT IN (
                        SELECT event_id FROM events WHERE event_id BETWEEN $low AND $high
                    )
                    {once}
                    """,
                    {"low": low, "high": high},
                ).fetchone()
            # Only segments still on disk keep a row: names are never reused.
            names = [s.name for s in segments]
            con.execute("DELETE FROM spool_offsets")
            con.execute(
                "INSERT INTO spool_offsets SELECT unnest($names), unnest($offsets), now()",
                {"names": names, "offsets": [s.new_offset for s in segments]},
            )
            con.execute(
                "INSERT INTO ingest_log (ingested_at, ingested, duplicates, rejected, quarantined) "
                "VALUES (now(), $i, $d, $r, $q)",
                {"i": ingested, "d": total - ingested, "r": self.rejected, "q": self.quarantined},
            )
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return ingested, total - ingested


def _inspect(path: Path, start: int) -> _Segment:
    """Size, end of the last complete line and open/closed state, in that safe order.

    The lock is tested before the size is read: a segment found closed has no writer left, so
    the size read afterwards is final.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            closed = True
        except BlockingIOError:
            closed = False
        size = os.fstat(fd).st_size
        start = min(start, size)
        end = size
        block = 64 * 1024
        while end > start:
            low = max(start, end - block)
            chunk = os.pread(fd, end - low, low)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = low + newline + 1
                break
            end = low
        return _Segment(path=path, start=start, end=end, size=size, closed=closed)
    finally:
        os.close(fd)


def _read(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            yield line[:-1] if line.endswith(b"\n") else line


def _column_list() -> str:
    return ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())


_INT_RANGES = {"SMALLINT": (-(2**15), 2**15 - 1), "BIGINT": (-(2**63), 2**63 - 1)}


def _line_problem(raw: bytes) -> str | None:
    """Why this line is not an event, or None. As strict as the table, or stricter."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON (column {exc.colno})"
    if not isinstance(value, dict):
        return f"not a JSON object but {type(value).__name__}"
    event_id = value.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        return "missing event_id"
    version = value.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return f"unknown schema_version {version!r} (this costsplit reads {SCHEMA_VERSION})"
    for name, kind in COLUMNS.items():
        field = value.get(name)
        if field is not None and not _fits(field, kind):
            return f"{name}: {field!r} is not {kind}"
    return None


def _fits(value: object, kind: str) -> bool:
    if kind == "VARCHAR":
        return isinstance(value, str)
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "TIMESTAMPTZ":
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if kind.startswith("MAP(VARCHAR, "):
        item_kind = kind[len("MAP(VARCHAR, ") : -1]
        return isinstance(value, dict) and all(_fits(v, item_kind) for v in value.values())
    return False


def _duckdb_reason(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    try:
        con.execute(
            "SELECT * FROM read_ndjson($paths, columns = $columns, format = 'newline_delimited')",
            {"paths": [str(path)], "columns": COLUMNS},
        ).fetchall()
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]
    return "rejected by the table's checks"
