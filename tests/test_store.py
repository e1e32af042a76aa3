"""The store: migrated on open, one transaction per migration, a held file met with backoff."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid

import duckdb
import pytest

from costsplit.errors import DatabaseLocked, StoreError
from costsplit.events import COLUMNS
from costsplit.migrations import MIGRATIONS
from costsplit.store import connect


def test_a_new_database_gets_every_migration_once(tmp_path):
    database = tmp_path / "sub" / "costsplit.duckdb"
    with connect(database) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM _migrations ORDER BY applied_at, name"
            ).fetchall()
        ]
        columns = [r[0] for r in con.execute("DESCRIBE events").fetchall()]
    assert sorted(names) == sorted(m.__name__ for m in MIGRATIONS)
    assert columns[: len(COLUMNS)] == list(COLUMNS)
    with connect(database) as con:  # a second open applies nothing
        (count,) = con.execute("SELECT count(*) FROM _migrations").fetchone()
    assert count == len(MIGRATIONS)


def test_spool_offsets_and_ingest_log_exist(tmp_path):
    with connect(tmp_path / "db.duckdb") as con:
        offsets = [r[0] for r in con.execute("DESCRIBE spool_offsets").fetchall()]
        log = [r[0] for r in con.execute("DESCRIBE ingest_log").fetchall()]
    assert offsets == ["segment", "byte_offset", "updated_at"]
    assert log == ["ingested_at", "ingested", "duplicates", "rejected", "quarantined"]


def test_read_only_needs_an_existing_database(tmp_path):
    with pytest.raises(StoreError) as caught, connect(tmp_path / "none.duckdb", read_only=True):
        pass
    assert (
        str(caught.value)
        == f"{tmp_path / 'none.duckdb'}: no database yet (run `costsplit ingest` first)"
    )


def test_a_file_held_by_another_process_is_retried_then_reported(tmp_path):
    database = tmp_path / "db.duckdb"
    duckdb.connect(str(database)).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(database),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"ready\n"
        waits: list[float] = []
        with (
            pytest.raises(DatabaseLocked) as caught,
            connect(database, lock_timeout=0.5, sleep=waits.append),
        ):
            pass
    finally:
        holder.stdin.close()
        holder.stdout.close()
        holder.wait()
    assert waits[:4] == [0.01, 0.02, 0.04, 0.08]  # backoff doubles
    assert sum(waits[:-1]) < 0.5 <= sum(waits)
    assert str(caught.value) == (
        f"{database} is locked by another process (PID {holder.pid}); waited {sum(waits):.1f}s — "
        "nothing is lost, events stay in the spool until the next run"
    )
    with connect(database) as con:  # free again
        assert con.execute("SELECT 1").fetchone() == (1,)


def database_before(path, migration) -> duckdb.DuckDBPyConnection:
    """A database file migrated up to, not including, ``migration``: a user's older costsplit."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    for earlier in MIGRATIONS[: MIGRATIONS.index(migration)]:
        earlier(con)
        con.execute("INSERT INTO _migrations VALUES (?, now())", [earlier.__name__])
    return con


def migrated(old: duckdb.DuckDBPyConnection, path, select: str) -> tuple[dict[str, str], list]:
    """Close the old database, open it as costsplit does (migrating it), and give the events
    table's column types and the rows of ``select``."""
    old.close()
    with connect(path) as con:
        types = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE events)").fetchall()
        )
        return types, con.execute(select).fetchall()


def test_m008_turns_the_tags_and_plugins_maps_into_json_text(tmp_path):
    from costsplit.migrations import m008_events_json_objects

    database = tmp_path / "old.duckdb"
    con = database_before(database, m008_events_json_objects)
    con.execute(
        "INSERT INTO events (event_id, schema_version, tags, plugins) VALUES "
        "('0190a000-0000-7000-8000-000000000001', 2, "
        "MAP {'team': 'support', 'q\"': 'é'}, MAP {'search': 2, 'code': 1}), "
        "('0190a000-0000-7000-8000-000000000002', 2, MAP {}, MAP {}), "
        "('0190a000-0000-7000-8000-000000000003', 1, NULL, NULL)"
    )
    types, rows = migrated(
        con,
        database,
        "SELECT right(event_id::VARCHAR, 1), tags, plugins FROM events ORDER BY event_id",
    )
    assert (types["tags"], types["plugins"]) == ("JSON", "JSON")
    assert rows == [
        ("1", '{"team":"support","q\\"":"é"}', '{"search":2,"code":1}'),
        ("2", "{}", "{}"),
        ("3", None, None),
    ]


def test_m009_stores_event_ids_as_uuids_and_keeps_a_foreign_id_as_its_md5(tmp_path):
    from costsplit.migrations import m009_events_uuid_ids

    database = tmp_path / "old.duckdb"
    con = database_before(database, m009_events_uuid_ids)
    ours = "0190a000-0000-7000-8000-00000000abcd"
    con.execute(
        "INSERT INTO events (event_id, schema_version, input_tokens) VALUES "
        "(?, 2, 10), ('written-by-hand', 1, 20)",
        [ours],
    )
    types, rows = migrated(
        con, database, "SELECT event_id::VARCHAR, input_tokens FROM events ORDER BY input_tokens"
    )
    assert types["event_id"] == "UUID"
    digest = hashlib.md5(b"written-by-hand").hexdigest()
    assert rows == [(ours, 10), (str(uuid.UUID(digest)), 20)]
