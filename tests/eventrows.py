"""Put UsageEvents into a real events table in bulk (read_ndjson), as ingest does."""

from __future__ import annotations

import tempfile
from pathlib import Path

from costsplit.events import COLUMNS, UsageEvent
from costsplit.ingest import STORED_COLUMNS


def insert_events(con, events: list[UsageEvent]) -> None:
    """Insert ``events`` by column name, defaults filled in as ingest does; ``ingested_at``
    takes its default (now)."""
    if not events:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_bytes(b"".join(event.to_json_line() for event in events))
        columns = ", ".join(COLUMNS)
        con.execute(
            f"INSERT INTO events ({columns}) SELECT {STORED_COLUMNS} "
            "FROM read_ndjson(?, columns = ?)",
            [str(path), COLUMNS],
        )
