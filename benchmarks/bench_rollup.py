# ruff: noqa: E501  (generated SQL reads better on long lines)
"""Benchmark the rollup on generated events (generated inside DuckDB, no Python loops).

Measures, on N events (default 10,000,000) spread over one month, wall and CPU time:
  1. the full rollup (``rollup.refresh`` after a settings change: every open day) against one
     plain ``GROUP BY`` with the same price join over the same table (target ≤ 1.5×). The
     issue's baseline is the reference query (calls, input, output, cost with a per-row tiered
     price join); the same join summing every column the rollup keeps is shown beside it;
  2. the incremental rollup after 10,000 new events (target ≤ 5% of the full rollup);
  3. ``costsplit spend`` for one scenario and month, end to end as a subprocess (≤ 0.5 s).

Run: python benchmarks/bench_rollup.py [--events N] [--runs 3] [--keep DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from costsplit.config import Settings, Workspace
from costsplit.events import COLUMNS
from costsplit.prices import load_price_book
from costsplit.pricing import day_expr
from costsplit.rollup import refresh
from costsplit.store import connect

WORKSPACES = (
    Workspace(
        id="ws-support0000000",
        name="Support",
        region="ap-southeast-1",
        key_fingerprints=("sha256:00000000000000a1", "sha256:00000000000000a2"),
        default_scenario="support-bot",
    ),
    Workspace(
        id="ws-research000000",
        name="Research",
        region="ap-southeast-1",
        key_fingerprints=("sha256:00000000000000b1",),
    ),
    Workspace(
        id="ws-china000000000",
        name="China",
        region="cn-beijing",
        key_fingerprints=("sha256:00000000000000c1",),
        default_scenario="cn-search",
    ),
)
MONTH_START = "2026-03-01 00:00:00+08"
MONTH_US = 31 * 86_400_000_000


def generate(
    con,
    n: int,
    offset: int = 0,
    *,
    start: str = MONTH_START,
    span_us: int = MONTH_US,
    ingested: str = "started_at + INTERVAL 1 MINUTE",
) -> None:
    """Insert ``n`` events ordered by time, deterministic (hash of the row number)."""
    values = {
        "event_id": "CAST(uuid() AS VARCHAR)",
        "schema_version": "1",
        "started_at": f"TIMESTAMPTZ '{start}' + to_microseconds(CAST(CAST(i - {offset} AS HUGEINT) * {span_us} // {n} AS BIGINT))",
        "latency_us": "500000",
        "first_byte_us": "NULL",
        "recorder": "'client'",
        "api_style": "'openai-compatible'",
        "endpoint": "'chat'",
        "host": "''",
        "region": "''",
        "key_fingerprint": "['sha256:00000000000000a1', 'sha256:00000000000000a2', "
        "'sha256:00000000000000b1', 'sha256:00000000000000c1', 'sha256:00000000000000ff'][1 + h % 5]",
        "workspace_observed": "''",
        "key_hint": "''",
        "scenario": "[NULL, 'triage', 'summarise', 'search', 'agent', NULL, 'eval', 'rag'][1 + (h // 7) % 8]",
        "tags": "'{}'",
        "model_requested": "['qwen-plus', 'qwen-flash', 'qwen3-max', 'qwen-plus-latest', "
        "'text-embedding-v4', 'qwen-next-unknown'][1 + (h // 61) % 6]",
        "model_returned": "''",
        "request_id": "''",
        "streamed": "(h % 3 = 0)",
        "batch": "(h % 50 = 0)",
        "billing_plan": "'payg'",
        "outcome": "CASE WHEN h % 40 = 1 THEN 'http_error' WHEN h % 97 = 2 THEN 'interrupted' ELSE 'ok' END",
        "http_status": "200",
        "error_code": "''",
        "usage_source": "CASE WHEN h % 97 = 2 THEN 'estimated' ELSE 'reported' END",
        "input_tokens": "CASE WHEN h % 1000 = 7 THEN 300000 + h % 50000 ELSE 100 + (h // 11) % 40000 END",
        "output_tokens": "(h // 13) % 2000",
        "total_tokens": "0",
        "cached_tokens": "CASE WHEN h % 4 = 0 THEN 64 ELSE 0 END",
        "cache_creation_tokens": "CASE WHEN h % 17 = 0 THEN 32 ELSE 0 END",
        "cache_type": "CASE WHEN h % 17 = 0 OR h % 23 = 0 THEN 'ephemeral' ELSE '' END",
        "reasoning_tokens": "CASE WHEN h % 5 = 0 THEN 50 ELSE 0 END",
        "image_tokens": "0",
        "audio_tokens": "0",
        "video_tokens": "0",
        "audio_output_tokens": "0",
        "image_count": "0",
        "plugins": "'{}'",
    }
    columns = ", ".join(COLUMNS)
    select = ", ".join(f"{values[c]} AS {c}" for c in COLUMNS)
    con.execute(f"""
        INSERT INTO events ({columns}, ingested_at)
        SELECT *, {ingested} FROM (
            SELECT {select} FROM (SELECT i, CAST(hash(i) % 1000000007 AS BIGINT) AS h FROM range({offset}, {offset + n}) t(i))
        )
    """)


def baseline_prices(con, book) -> None:
    """A per-row tiered price table: (region, name, from, to, tier bounds, input/output rate)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bl_prices (region VARCHAR, name VARCHAR, "
        "valid_from TIMESTAMPTZ, valid_to TIMESTAMPTZ, tier_lo BIGINT, tier_hi BIGINT, "
        "in_rate DECIMAL(38, 10), out_rate DECIMAL(38, 10))"
    )
    rows = []
    for row, region, name, lo, hi in book.segments():
        low = -1
        for tier in row.tiers:
            high = 2**62 if tier is row.tiers[-1] else tier.up_to
            rows.append((region, name, lo, hi, low, high, str(tier.input), str(tier.output)))
            low = high
    for row in rows:
        con.execute("INSERT INTO _bl_prices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(row))


def baseline(con, tz: ZoneInfo, *, same_columns: bool = True) -> None:
    """One plain GROUP BY with a per-row tiered price join (no attribution, no billing rules).

    With ``same_columns`` it sums the same columns ``daily_spend`` holds (outcome counts and
    every token class); without, only calls, input, output and cost (the reference's query).
    """
    extra = (
        """count(*) FILTER (outcome = 'ok'),
               count(*) FILTER (outcome IN ('http_error', 'network_error')),
               count(*) FILTER (outcome IN ('denied', 'denied_local')),
               count(*) FILTER (outcome = 'interrupted'), count(*) FILTER (usage_source = 'estimated'),
               sum(cached_tokens), sum(cache_creation_tokens), sum(reasoning_tokens),
               sum(image_tokens), sum(audio_tokens), sum(video_tokens),"""
        if same_columns
        else ""
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _baseline AS
        SELECT {day_expr(tz, "e.started_at")} AS day, e.key_fingerprint, e.scenario,
               e.model_requested, count(*), sum(e.input_tokens), sum(e.output_tokens), {extra}
               sum(e.input_tokens * p.in_rate + e.output_tokens * p.out_rate) AS cost
        FROM events e LEFT JOIN _bl_prices p
          ON p.region = 'ap-southeast-1' AND p.name = e.model_requested
         AND e.started_at >= p.valid_from AND e.started_at < p.valid_to
         AND e.input_tokens > p.tier_lo AND e.input_tokens <= p.tier_hi
        GROUP BY ALL
    """)


def timed(work) -> tuple[float, float]:
    """(wall, CPU) seconds of ``work()``; CPU counts every thread of this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - t0, time.process_time() - c0


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="folder for the database (kept)")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: its default)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-rollup-"))
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "costsplit.duckdb"
    settings = Settings(
        home=folder, database=database, spool_dir=folder / "spool", workspaces=WORKSPACES
    )
    book = load_price_book()
    tz = ZoneInfo(settings.timezone)

    with connect(database) as con:
        if con.execute("SELECT count(*) FROM events").fetchone()[0] > args.events:
            # A kept database: drop the incremental events of the previous run.
            con.execute("DELETE FROM events WHERE ingested_at <> started_at + INTERVAL 1 MINUTE")
        if con.execute("SELECT count(*) FROM events").fetchone()[0] != args.events:
            con.execute("DELETE FROM events")
            t0 = time.perf_counter()
            generate(con, args.events)
            print(f"generated {args.events:,} events in {time.perf_counter() - t0:.1f}s")
        con.execute("CHECKPOINT")
        if args.threads:
            con.execute(f"SET threads = {args.threads}")
        baseline_prices(con, book)
        base, minimal, full = [], [], []
        for _ in range(args.runs):
            base.append(timed(lambda: baseline(con, tz)))
            minimal.append(timed(lambda: baseline(con, tz, same_columns=False)))
            con.execute("DELETE FROM rollup_state")  # forget the hash: recompute every open day
            full.append(timed(lambda: refresh(con, settings, book=book)))
        rows = con.execute("SELECT count(*), count(DISTINCT day) FROM daily_spend").fetchone()
        (fw, fc), (bw, bc), (mw, mc) = (medians(x) for x in (full, base, minimal))
        print(
            f"full rollup ({rows[0]:,} rows, {rows[1]} days): {fw:.3f}s wall, {fc:.3f}s CPU\n"
            f"issue's baseline, one plain GROUP BY with the same per-row tiered price join "
            f"(calls, input, output, cost): {mw:.3f}s wall, {mc:.3f}s CPU; "
            f"rollup = {fw / mw:.2f}x wall, {fc / mc:.2f}x CPU (target <= 1.5x)\n"
            f"the same GROUP BY summing every column daily_spend holds: {bw:.3f}s wall, "
            f"{bc:.3f}s CPU; rollup = {fw / bw:.2f}x wall, {fc / bc:.2f}x CPU"
        )

        incremental = []
        for run in range(args.runs):
            generate(
                con,
                10_000,
                offset=args.events + run * 10_000,
                start="2026-03-31 12:00:00+08",
                span_us=6 * 3_600_000_000,
                ingested="now()",
            )
            incremental.append(timed(lambda: refresh(con, settings, book=book)))
        iw, ic = medians(incremental)
        print(
            f"incremental rollup after 10,000 new events: {iw:.3f}s wall = "
            f"{100 * iw / fw:.1f}% of full, {ic:.3f}s CPU = {100 * ic / fc:.1f}% (target <= 5%)"
        )

    env = dict(os.environ, COSTSPLIT_HOME=str(folder), COSTSPLIT_DATABASE=str(database))
    config = folder / "costsplit.toml"
    config.write_text(_config_text())
    spend = []
    for _ in range(args.runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "costsplit"),
                "spend",
                "--config",
                str(config),
                "--scenario",
                "triage",
                "--month",
                "2026-03",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        spend.append(time.perf_counter() - t0)
    print(
        f"costsplit spend --scenario triage --month 2026-03: {statistics.median(spend[1:]):.3f}s "
        f"end to end (target <= 0.5s); first run {spend[0]:.3f}s"
    )
    print(out.stdout[:400])


def _config_text() -> str:
    lines = []
    for w in WORKSPACES:
        lines += [
            "[[workspaces]]",
            f'id = "{w.id}"',
            f'name = "{w.name}"',
            f'region = "{w.region}"',
            f"key_fingerprints = {list(w.key_fingerprints)!r}".replace("'", '"'),
        ]
        if w.default_scenario:
            lines.append(f'default_scenario = "{w.default_scenario}"')
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
