"""The DuckDB store: short-lived connections, migrated on open, a lock met with backoff.

DuckDB lets one process at a time hold a database file, and the CLI, the scheduler and ingest
all need it. So every user opens a connection for one unit of work and closes it; a file held
by another process is retried with backoff and then reported as ``DatabaseLocked``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from costsplit.errors import DatabaseLocked, StoreError
from costsplit.migrations import migrate

DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": True}


@contextlib.contextmanager
def connect(
    database: Path,
    *,
    read_only: bool = False,
    lock_timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open ``database`` (creating and migrating it unless read-only) for one unit of work."""
    database = Path(database)
    if not read_only:
        database.parent.mkdir(parents=True, exist_ok=True)
    elif not database.exists():
        raise StoreError(f"{database}: no database yet (run `costsplit ingest` first)")
    con = _open_with_backoff(database, read_only, lock_timeout, sleep)
    try:
        if not read_only:
            migrate(con)
        yield con
    finally:
        con.close()


def _open_with_backoff(
    database: Path, read_only: bool, lock_timeout: float, sleep: Callable[[float], None]
) -> duckdb.DuckDBPyConnection:
    delay, waited = 0.01, 0.0
    while True:
        try:
            return duckdb.connect(str(database), read_only=read_only, config=dict(DUCKDB_CONFIG))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise StoreError(f"{database}: cannot open database: {exc}") from exc
            if waited >= lock_timeout:
                holder = _lock_holder(str(exc))
                raise DatabaseLocked(
                    f"{database} is locked by another process{holder}; waited {waited:.1f}s — "
                    "nothing is lost, events stay in the spool until the next run"
                ) from exc
            sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)
        except duckdb.Error as exc:
            raise StoreError(f"{database}: cannot open database: {exc}") from exc


def _lock_holder(message: str) -> str:
    marker = "(PID "
    if marker in message:
        pid = message.split(marker, 1)[1].split(")", 1)[0]
        return f" (PID {pid})"
    return ""
