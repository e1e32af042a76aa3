"""Ingest speed: 1,000,000 spooled events → DuckDB with de-duplication, then the same again.

Four closed segments of 250,000 events each (as four recording processes would leave them) are
ingested into an empty database; then the same events are spooled once more and ingested again,
which must insert nothing and count every one as a duplicate. Prints events per second.

The host is shared and its speed drifts by a fifth or more within minutes, so each round also
measures, just before its first ingest, a stand-in for the anchor the target was set against:
the reference's plain ``read_ndjson`` with explicit types of as many lines into an empty
15-column event table (≈ 920,000 rows/s when 500,000/s was chosen). The reference does not
give its table's columns; ours are the first 15 of ``events`` (428-byte lines), likely heavier,
so the first ingest as a fraction of it, against the target's own fraction (500,000 / 920,000 =
0.54), tells how fast the host was, not whether the target is met. Rounds are independent (a
fresh database each); medians close the report.
``--first-format`` spools version-1 lines (every field written, as recorders before schema
version 2 did) instead of today's lines, which leave default-valued fields out.

    .venv/bin/python benchmarks/bench_ingest.py [EVENTS] [--rounds 3] [--first-format]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
from typical import reported_chat_call

from costsplit.config import load_settings
from costsplit.events import COLUMNS, UsageEvent, new_event_id
from costsplit.ingest import ingest_spool
from costsplit.store import connect

SEGMENTS = 4
TARGET = 500_000  # events/s
ANCHOR = 920_000  # rows/s of the anchor statement on these machines when the target was set
ANCHOR_COLUMNS = 15


def write_segments(spool: Path, ids: list[str], template: bytes, round_: int) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    per = len(ids) // SEGMENTS
    placeholder = b"00000000-0000-0000-0000-000000000000"
    for s in range(SEGMENTS):
        chunk = ids[s * per : (s + 1) * per] if s < SEGMENTS - 1 else ids[s * per :]
        data = b"".join(template.replace(placeholder, i.encode()) for i in chunk)
        (spool / f"{round_}{s:03d}-0-bench{s}.jsonl").write_bytes(data)


class Anchor:
    """The reference's plain load: ``read_ndjson`` with explicit types of every line into an
    empty 15-column event table (the first columns of ``events``, ids as text)."""

    def __init__(self, folder: Path, event: UsageEvent, ids: list[str]) -> None:
        self.columns = {
            name: "VARCHAR" if kind == "UUID" else kind
            for name, kind in list(COLUMNS.items())[:ANCHOR_COLUMNS]
        }
        fields = dataclasses.asdict(event) | {"schema_version": 1}
        line = orjson.dumps(
            {name: fields[name] for name in self.columns}, option=orjson.OPT_APPEND_NEWLINE
        )
        placeholder = b"00000000-0000-0000-0000-000000000000"
        self.folder = folder
        self.path = folder / "anchor.jsonl"
        self.path.write_bytes(b"".join(line.replace(placeholder, i.encode()) for i in ids))
        self.rows = len(ids)

    def rate(self) -> float:
        """Rows/s of one load into a new database file."""
        database = self.folder / f"anchor-{time.monotonic_ns()}.duckdb"
        con = duckdb.connect(str(database))
        try:
            names = ", ".join(f"{n} {k}" for n, k in self.columns.items())
            con.execute(f"CREATE TABLE anchor ({names})")
            started = time.perf_counter()
            con.execute(
                "INSERT INTO anchor SELECT * FROM read_ndjson($path, columns = $columns, "
                "format = 'newline_delimited')",
                {"path": str(self.path), "columns": self.columns},
            )
            return self.rows / (time.perf_counter() - started)
        finally:
            con.close()
            database.unlink()


def ingest_round(home: Path, ids: list[str], template: bytes) -> list[tuple[float, float, int]]:
    """(wall s, CPU s, rows) of the first ingest and of the rerun, in a fresh home."""
    settings = load_settings(environ={"COSTSPLIT_HOME": str(home)}, cwd=home)
    with connect(settings.database):
        pass  # create and migrate the database outside the timing
    figures = []
    for round_ in (1, 2):
        write_segments(settings.spool_dir, ids, template, round_)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = ingest_spool(settings)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        figures.append((elapsed, cpu, result.ingested if round_ == 1 else result.duplicates))
    with connect(settings.database) as con:
        (rows,) = con.execute("SELECT count(*) FROM events").fetchone()
    if rows != len(ids):
        raise SystemExit(f"table rows: {rows:,}, expected {len(ids):,}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("events", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-format", action="store_true")
    args = parser.parse_args()
    total = args.events
    event = reported_chat_call(event_id="00000000-0000-0000-0000-000000000000", request_id="req-0")
    if args.first_format:
        fields = dataclasses.asdict(event) | {"schema_version": 1}
        template = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
    else:
        template = event.to_json_line()
    ids = [new_event_id() for _ in range(total)]
    print(
        f"{total:,} events, {SEGMENTS} segments, {len(template) * total / 2**20:,.0f} MiB of "
        f"spool ({len(template)}-byte lines, schema_version {1 if args.first_format else 2}); "
        f"{args.rounds} rounds"
    )
    wanted = TARGET / ANCHOR
    firsts, reruns, shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        anchor = Anchor(Path(tmp), event, ids)
        for number in range(1, args.rounds + 1):
            anchored = anchor.rate()
            (first, first_cpu, ingested), (rerun, _, duplicates) = ingest_round(
                Path(tmp) / f"round-{number}", ids, template
            )
            rate = total / first
            firsts.append(rate)
            reruns.append(total / rerun)
            shares.append(rate / anchored)
            # CPU time over both cores is steadier than wall time on a shared, noisy host.
            print(
                f"round {number}: first ingest {first:.2f} s wall, {rate:,.0f} events/s "
                f"({rate / TARGET:.2f}x the {TARGET:,}/s target; {first_cpu:.2f} s CPU); "
                f"anchor {anchored:,.0f} rows/s, so the ingest is {rate / anchored:.3f} of it "
                f"({rate / anchored / wanted:.2f}x the target's {wanted:.3f}); rerun "
                f"{total / rerun:,.0f} events/s; ingested={ingested:,} duplicates={duplicates:,}"
            )
    first, share = statistics.median(firsts), statistics.median(shares)
    print(
        f"median first ingest {first:,.0f} events/s ({first / TARGET:.2f}x the {TARGET:,}/s "
        f"target); median share of the anchor {share:.3f} ({share / wanted:.2f}x the target's "
        f"{wanted:.3f}); median rerun of duplicates {statistics.median(reruns):,.0f} events/s"
    )


if __name__ == "__main__":
    main()
