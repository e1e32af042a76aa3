"""Ingest: move complete spool lines into DuckDB, each event exactly once.

Segments are taken in groups of at most ``MAX_BATCH_BYTES`` of new lines, one transaction per
group, so memory stays bounded however large the backlog. For a group, ingest takes the
complete lines past the offset it remembers for each segment and commits the new rows together
with the new offsets. So a run killed at any moment leaves each group's rows and offsets as they
were or as they will be, and the next run does the rest; a run after a complete one finds
nothing new. Re-ingested lines are duplicates by event id, never second rows.

The fast path is one streaming statement per group: DuckDB's ``read_ndjson`` (typed by
``events.COLUMNS``, defaults filled in for lines that leave them out) straight into
``events``, both cores parsing and compressing. De-duplication is checked after it, in the same
transaction: the ids in the range of the rows just added must all differ (the range prunes the
table's old row groups by their zone maps). Anything unusual — a line that is not an event, an
id repeated within the batch or already in the table — rolls the group back, and it is loaded
the careful way: into a temporary table, file by file and, for a file that does not load, line
by line, then inserted minus the ids the table holds. (Checking before inserting, in one
statement, made the insert wait for the whole batch to be read: about half the wall time.)

A segment whose writer still holds its lock is open: its torn last line (if any) waits. A
segment whose lock is free is closed (its writer closed it or died): its torn last line is
quarantined, and once every byte is accounted for the segment file is removed. The zero bytes
a writer reserved past its lines are not lines: a segment's lines end before them (see
``spool``). Lines that are not events (bad JSON, wrong types, no ``event_id`` or one that is
not a UUID, unknown ``schema_version``) go to ``<spool>/rejected/<segment>.rejected.jsonl``
with their offset and reason; they are counted, never raised. An empty ``.<segment>.new``
left by a writer that died between creating and naming its segment is removed once its lock is
free and it is older than ``STALE_NEW_SECONDS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import orjson

from costsplit import store
from costsplit.config import Settings
from costsplit.events import COLUMNS, DEFAULTS, READ_VERSIONS
from costsplit.spool import SEGMENT_SUFFIX

REJECTED_DIR = "rejected"
WORK_DIR = "ingest-work"  # the bytes of one run; no ``.jsonl`` at the top level, so never a segment
MAX_BATCH_BYTES = 1024 * 1024 * 1024  # new spool bytes per transaction (≈ 1,200,000 events)
STALE_NEW_SECONDS = 60.0
_PAGE = 4096
_SETTLING_BYTES = 64 * 1024  # near the end of the lines, where a copy may still be under way

_NAMES = ", ".join(COLUMNS)
_READ = (
    "read_ndjson($paths, columns = $columns, format = 'newline_delimited', "
    "maximum_object_size = 16777216)"
)
_VERSIONS = ", ".join(str(v) for v in READ_VERSIONS)
# ``tags`` and ``plugins`` are stored as the line's JSON text (``read_ndjson`` hands it back
# compact), unparsed. They must be objects; their values are kept as given (costsplit writes
# strings and counts): a tag of another type never costs a billed call its place in the table.
_NOT_AN_EVENT = (
    "event_id IS NULL OR schema_version IS NULL "
    f"OR schema_version NOT IN ({_VERSIONS}) "
    "OR NOT starts_with(tags, '{') OR NOT starts_with(plugins, '{')"
)


def _sql_literal(value: object, kind: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if value == {} and kind == "JSON":
        return "'{}'::JSON"
    raise TypeError(f"no SQL literal for the default {value!r}")


def _stored(name: str, *, any_version: bool = True) -> str:
    """The value stored for column ``name``: a version-1 line holds every field as it is; a
    later line leaves defaults out, so an absent (or null) field takes its default. Without
    ``any_version`` (no version-1 line among the rows) a null simply takes the default."""
    default = DEFAULTS.get(name)
    if default is None:
        return name
    literal = _sql_literal(default, COLUMNS[name])
    if not any_version:
        return f"coalesce({name}, {literal})"
    return f"CASE WHEN schema_version = 1 THEN {name} ELSE coalesce({name}, {literal}) END"


# The select list that turns ``read_ndjson``'s columns (typed by ``COLUMNS``) into the stored
# values: defaults filled in where a line left them out.
STORED_COLUMNS = ", ".join(_stored(name) for name in COLUMNS)
# The same for lines of today's layout only (the fast statement: a version-1 line among them,
# written by a recorder older than schema version 2, sends its group the careful way).
_LATEST_COLUMNS = ", ".join(_stored(name, any_version=False) for name in COLUMNS)
# The fast statement streams every line into ``events`` (both cores parse and compress); a line
# that is not an event stops it. Its de-duplication is checked afterwards, inside the same
# transaction (see ``fast_commit``).
_FAST_INSERT = f"""
    INSERT INTO events ({_NAMES})
    SELECT {_LATEST_COLUMNS} FROM (
        SELECT * REPLACE (
            CASE WHEN {_NOT_AN_EVENT} THEN error('costsplit: a line is not an event')
            ELSE event_id END AS event_id
        )
        FROM {_READ}
    )
"""


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
    written: int  # end of what the writer wrote (its reserved zero tail, if any, follows)
    size: int
    closed: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def new_offset(self) -> int:
        # A closed segment's torn tail is quarantined in this run, so it is accounted for.
        return self.size if self.closed else self.end

    @property
    def finished(self) -> bool:
        return self.closed and self.new_offset >= self.size


@dataclasses.dataclass(slots=True)
class _Group:
    """Segments ingested in one transaction, and the lines of theirs set aside."""

    segments: list[_Segment]
    bad_lines: dict[str, list[tuple[int, bytes, str]]] = dataclasses.field(default_factory=dict)
    rejected: int = 0
    quarantined: int = 0


def ingest_spool(
    settings: Settings, *, lock_timeout: float = 10.0, max_batch_bytes: int = MAX_BATCH_BYTES
) -> IngestResult:
    """Ingest every segment of ``settings.spool_dir`` into ``settings.database``.

    Segments are committed in groups of at most ``max_batch_bytes`` of new lines (a larger
    segment alone): that bounds memory. Fewer, larger groups are faster (each commit writes its
    last partial row groups twice).

    Raises ``DatabaseLocked`` (after retrying for ``lock_timeout`` seconds) when another process
    holds the database; the spool is then untouched.
    """
    spool_dir = Path(settings.spool_dir)
    with store.connect(settings.database, lock_timeout=lock_timeout) as con:
        con.execute("SET preserve_insertion_order = false")  # rows have no order to keep
        return _Run(con, spool_dir, max_batch_bytes).ingest()


class _Run:
    def __init__(
        self, con: duckdb.DuckDBPyConnection, spool_dir: Path, max_batch_bytes: int
    ) -> None:
        self.con = con
        self.max_batch_bytes = max_batch_bytes
        self.spool_dir = spool_dir
        self.work = spool_dir / WORK_DIR

    def ingest(self) -> IngestResult:
        segments = self.scan()
        totals = [0, 0, 0, 0]
        try:
            groups = _plan(segments, self.max_batch_bytes)
            for number, group in enumerate(groups):
                # The first transaction also forgets the offsets of segments no longer on disk.
                counts = self.ingest_group(group, forget_others=segments if number == 0 else None)
                totals = [a + b for a, b in zip(totals, counts, strict=True)]
                for seg in group.segments:
                    if seg.finished:
                        with contextlib.suppress(FileNotFoundError):
                            seg.path.unlink()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        return IngestResult(*totals)

    def ingest_group(
        self, group: _Group, forget_others: list[_Segment] | None
    ) -> tuple[int, int, int, int]:
        files = [(seg, self.bytes_to_load(seg)) for seg in group.segments if seg.end > seg.start]
        ingested = duplicates = 0
        done = False
        if files:
            self.write_rejected(group)  # torn tails found by the scan
            done, ingested, duplicates = self.fast_commit(group, files, forget_others)
        if not done:
            try:
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE batch ({_column_list()})")
                if files:
                    self.load(group, files)
                self.write_rejected(group)
                ingested, duplicates = self.commit(group, forget_others)
            finally:
                self.con.execute("DROP TABLE IF EXISTS temp.batch")
        for _, path in files:
            if path.parent == self.work:
                path.unlink(missing_ok=True)
        return ingested, duplicates, group.rejected, group.quarantined

    # -- reading the spool ---------------------------------------------------------------------
    def scan(self) -> list[_Segment]:
        if not self.spool_dir.is_dir():
            return []
        shutil.rmtree(self.work, ignore_errors=True)  # left by a run that was killed
        _remove_stale_new_files(self.spool_dir)
        offsets = dict(
            self.con.execute("SELECT segment, byte_offset FROM spool_offsets").fetchall()
        )
        segments = []
        for path in sorted(self.spool_dir.glob(f"*{SEGMENT_SUFFIX}")):
            try:
                segments.append(_inspect(path, offsets.get(path.name, 0)))
            except FileNotFoundError:
                continue  # removed by a run that ended after its commit
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

    # -- the fast path: one statement ----------------------------------------------------------
    def fast_commit(
        self,
        group: _Group,
        files: list[tuple[_Segment, Path]],
        forget_others: list[_Segment] | None,
    ) -> tuple[bool, int, int]:
        """Insert the group's events and offsets in one transaction; False if unusual.

        Every line is inserted by one streaming statement, then checked inside the same
        transaction: the rows it added (this transaction's ``ingested_at``) must be exactly
        the lines, none of schema version 1 (whose nulls stay null: the statement gives every
        null its default), and the ids in their range (``events`` is pruned to it by its zone
        maps) must all differ — no id repeated within the batch or already in the table. Anything
        else rolls the whole group back for the careful path; so does a group whose first
        line of some file is already in the table (a re-ingest), before any work is spent.
        """
        con = self.con
        if self.known_already(files):
            return False, 0, 0
        con.execute("BEGIN TRANSACTION")
        try:
            try:
                (inserted,) = con.execute(
                    _FAST_INSERT,
                    {"paths": [str(path) for _, path in files], "columns": COLUMNS},
                ).fetchone()
            except duckdb.Error:
                con.execute("ROLLBACK")
                return False, 0, 0
            added, older, low, high = con.execute(
                "SELECT count(*), count(*) FILTER (schema_version = 1), min(event_id), "
                "max(event_id) FROM events WHERE ingested_at = current_timestamp"
            ).fetchone()
            repeats = 0
            if added == inserted and inserted and not older:
                (repeats,) = con.execute(
                    "SELECT count(*) - count(DISTINCT event_id) FROM events "
                    "WHERE event_id BETWEEN $low AND $high",
                    {"low": low, "high": high},
                ).fetchone()
            if added != inserted or older or repeats:
                con.execute("ROLLBACK")
                return False, 0, 0
            self.record(group, forget_others, inserted, 0)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return True, inserted, 0

    def known_already(self, files: list[tuple[_Segment, Path]]) -> bool:
        """Whether the first new line of any file has an id the table holds (a cheap probe)."""
        ids = []
        for seg, path in files:
            with open(path, "rb") as f:
                f.seek(seg.start if path == seg.path else 0)
                first = f.readline(65536)
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                event_id = orjson.loads(first).get("event_id")
                if _fits(event_id, "UUID"):
                    ids.append(event_id)
        if not ids:
            return False
        (known,) = self.con.execute(
            "SELECT count(*) FROM events WHERE event_id IN (SELECT unnest($ids::UUID[]))",
            {"ids": ids},
        ).fetchone()
        return known > 0

    # -- the careful path ----------------------------------------------------------------------
    def load(self, group: _Group, files: list[tuple[_Segment, Path]]) -> None:
        """Bulk-load every file at once; on failure, file by file; on failure, line by line."""
        if self.try_load([path for _, path in files]):
            return
        for seg, path in files:
            if not self.try_load([path]):
                self.load_lines(group, seg, path)

    def try_load(self, paths: list[Path]) -> bool:
        """Load ``paths`` into ``batch``, all or nothing; False when any line is not an event.

        Straight into ``batch`` while it is empty (the first attempt pays for one copy of the
        rows, not two), else through ``part``.
        """
        direct = self.con.execute("SELECT count(*) FROM batch").fetchone()[0] == 0
        target = "batch" if direct else "part"
        if not direct:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE part ({_column_list()})")
        try:
            self.con.execute(
                f"INSERT INTO {target} SELECT * FROM {_READ}",
                {"paths": [str(p) for p in paths], "columns": COLUMNS},
            )
        except duckdb.Error:
            if direct:
                self.con.execute("DELETE FROM batch")
            return False
        (bad,) = self.con.execute(f"SELECT count(*) FROM {target} WHERE {_NOT_AN_EVENT}").fetchone()
        if bad:
            self.con.execute(f"DELETE FROM {target}")
            return False
        if not direct:
            self.con.execute("INSERT INTO batch SELECT * FROM part")
        return True

    def load_lines(self, group: _Group, seg: _Segment, path: Path) -> None:
        """The slow path: judge each line, load the good ones, reject the rest with a reason."""
        good: list[tuple[int, bytes]] = []
        offset = seg.start
        for raw in _lines(path):
            if raw.strip():
                problem = _line_problem(raw)
                if problem:
                    _reject(group, seg, offset, raw, problem)
                else:
                    good.append((offset, raw))
            offset += len(raw) + 1
        self.load_or_split(group, seg, good)

    def load_or_split(self, group: _Group, seg: _Segment, lines: list[tuple[int, bytes]]) -> None:
        # Lines that pass our checks but that DuckDB still refuses are found by halving.
        if not lines:
            return
        self.work.mkdir(parents=True, exist_ok=True)
        part = self.work / f"{seg.name}.{lines[0][0]}.part"
        part.write_bytes(b"".join(raw + b"\n" for _, raw in lines))
        if self.try_load([part]):
            return
        if len(lines) == 1:
            offset, raw = lines[0]
            _reject(group, seg, offset, raw, f"not loadable: {_duckdb_reason(self.con, part)}")
            return
        middle = len(lines) // 2
        self.load_or_split(group, seg, lines[:middle])
        self.load_or_split(group, seg, lines[middle:])

    def write_rejected(self, group: _Group) -> None:
        """One file per segment; a rerun after a killed run does not write a line twice."""
        if not group.bad_lines:
            return
        folder = self.spool_dir / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for name, entries in group.bad_lines.items():
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

    def commit(self, group: _Group, forget_others: list[_Segment] | None) -> tuple[int, int]:
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
                once = (
                    "QUALIFY row_number() OVER (PARTITION BY event_id) = 1"
                    if distinct < total
                    else ""
                )
                (ingested,) = con.execute(
                    f"""
                    INSERT INTO events ({_NAMES})
                    SELECT {STORED_COLUMNS} FROM batch
                    WHERE event_id NOT IN (
                        SELECT event_id FROM events WHERE event_id BETWEEN $low AND $high
                    )
                    {once}
                    """,
                    {"low": low, "high": high},
                ).fetchone()
            self.record(group, forget_others, ingested, total - ingested)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return ingested, total - ingested

    def record(
        self,
        group: _Group,
        forget_others: list[_Segment] | None,
        ingested: int,
        duplicates: int,
    ) -> None:
        """The group's new offsets and its line in ``ingest_log``, inside its transaction."""
        con = self.con
        names = [s.name for s in group.segments]
        if forget_others is not None:
            # Only segments still on disk keep a row: names are never reused.
            con.execute(
                "DELETE FROM spool_offsets WHERE NOT list_contains($names, segment)",
                {"names": [s.name for s in forget_others]},
            )
        con.execute(
            "DELETE FROM spool_offsets WHERE list_contains($names, segment)", {"names": names}
        )
        if names:
            con.execute(
                "INSERT INTO spool_offsets SELECT unnest($names), unnest($offsets), now()",
                {"names": names, "offsets": [s.new_offset for s in group.segments]},
            )
        con.execute(
            "INSERT INTO ingest_log (ingested_at, ingested, duplicates, rejected, quarantined) "
            "VALUES (now(), $i, $d, $r, $q)",
            {"i": ingested, "d": duplicates, "r": group.rejected, "q": group.quarantined},
        )


def _plan(segments: list[_Segment], max_batch_bytes: int) -> list[_Group]:
    """Segments in groups of at most ``max_batch_bytes`` new bytes (a bigger one alone).

    Torn tails of closed segments are quarantined in their segment's group. There is always at
    least one group, so every run leaves its line in ``ingest_log``.
    """
    groups: list[_Group] = []
    current: _Group | None = None
    size = 0
    for seg in segments:
        new = seg.end - seg.start
        if current is None or (size + new > max_batch_bytes and current.segments):
            current, size = _Group([]), 0
            groups.append(current)
        current.segments.append(seg)
        size += new
        if seg.closed and seg.end < seg.written:
            tail = _read(seg.path, seg.end, seg.written)
            reason = "torn last line: the writer stopped mid-write"
            _reject(current, seg, seg.end, tail, reason, quarantine=True)
    return groups or [_Group([])]


def _reject(
    group: _Group, seg: _Segment, offset: int, raw: bytes, reason: str, *, quarantine: bool = False
) -> None:
    group.bad_lines.setdefault(seg.name, []).append((offset, raw, reason))
    if quarantine:
        group.quarantined += 1
    else:
        group.rejected += 1


def _remove_stale_new_files(spool_dir: Path) -> None:
    """Remove empty ``.<segment>.new`` files whose writer died before naming them."""
    now = time.time()
    for path in spool_dir.glob(f".*{SEGMENT_SUFFIX}.new"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stat = os.fstat(fd)
            # A live writer holds the file for microseconds, locked; age guards the instant
            # between its create and its lock. A non-empty one is never removed.
            if stat.st_size == 0 and now - stat.st_mtime > STALE_NEW_SECONDS:
                path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


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
        written = _written_end(fd, start, size)
        end = _before_first_zero(fd, start, written)
        block = 64 * 1024
        while end > start:
            low = max(start, end - block)
            chunk = os.pread(fd, end - low, low)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = low + newline + 1
                break
            end = low
        return _Segment(path=path, start=start, end=end, written=written, size=size, closed=closed)
    finally:
        os.close(fd)


def _written_end(fd: int, start: int, size: int) -> int:
    """Where the bytes the writer wrote end: before the zero tail the spool reserves."""
    if size <= start or os.pread(fd, 1, size - 1) != b"\0":
        return size
    low, high = start, size  # the bytes from high on are zero; the written ones end in between
    while high - low > _PAGE:
        middle = (low + high) // 2
        page = os.pread(fd, _PAGE, middle)
        kept = len(page.rstrip(b"\0"))
        if kept == 0:
            high = middle
        elif kept < len(page):
            return middle + kept
        else:
            low = middle + len(page)
    return low + len(os.pread(fd, high - low, low).rstrip(b"\0"))


def _before_first_zero(fd: int, start: int, written: int) -> int:
    """``written``, or the first zero byte close before it.

    No line holds a zero byte. One shows in a line whose copy a kill cut short, or whose bytes
    other processors do not all see yet: such a line is not written yet, so an open segment's
    waits for the next run and a closed one's is its torn tail.
    """
    settling = max(start, written - _SETTLING_BYTES)
    zero = os.pread(fd, written - settling, settling).find(b"\0")
    return written if zero < 0 else settling + zero


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


# DuckDB's UUID text: 32 hex digits, hyphens anywhere, optionally in braces.
_UUID = re.compile(r"\{[0-9a-fA-F-]+\}|[0-9a-fA-F-]+")
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
    if not _fits(event_id, "UUID"):
        return f"event_id {event_id!r} is not a UUID"
    version = value.get("schema_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        return f"unknown schema_version {version!r} (this costsplit reads {_VERSIONS})"
    for name, kind in COLUMNS.items():
        field = value.get(name)
        if field is None:
            continue
        if kind == "JSON":
            if not isinstance(field, dict):
                return f"{name}: {field!r} is not an object"
        elif not _fits(field, kind):
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
    if kind == "UUID":
        return (
            isinstance(value, str)
            and _UUID.fullmatch(value) is not None
            and len(value.strip("{}").replace("-", "")) == 32
        )
    if kind == "TIMESTAMPTZ":
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
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
