"""Ingest speed: 1,000,000 spooled events → DuckDB with de-duplication, then the same again.

Four closed segments of 250,000 events each (as four recording processes would leave them) are
ingested into an empty database; then the same events are spooled once more and ingested again,
which must insert nothing and count every one as a duplicate. Prints events per second.
``--first-format`` spools version-1 lines (every field written, as recorders before schema
version 2 did) instead of today's lines, which leave default-valued fields out.

    .venv/bin/python benchmarks/bench_ingest.py [EVENTS] [--first-format]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import orjson

from costsplit.config import load_settings
from costsplit.events import UsageEvent, new_event_id, utc_timestamp
from costsplit.ingest import ingest_spool
from costsplit.store import connect

SEGMENTS = 4
TARGET = 500_000  # events/s


def write_segments(spool: Path, ids: list[str], template: bytes, round_: int) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    per = len(ids) // SEGMENTS
    placeholder = b"00000000-0000-0000-0000-000000000000"
    for s in range(SEGMENTS):
        chunk = ids[s * per : (s + 1) * per] if s < SEGMENTS - 1 else ids[s * per :]
        data = b"".join(template.replace(placeholder, i.encode()) for i in chunk)
        (spool / f"{round_}{s:03d}-0-bench{s}.jsonl").write_bytes(data)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--first-format"]
    first_format = "--first-format" in sys.argv
    total = int(args[0]) if args else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = load_settings(environ={"COSTSPLIT_HOME": str(home)}, cwd=home)
        event = UsageEvent(
            event_id="00000000-0000-0000-0000-000000000000",
            started_at=utc_timestamp(),
            latency_us=812_345,
            api_style="openai-compatible",
            host="dashscope-intl.aliyuncs.com",
            region="ap-southeast-1",
            key_fingerprint="sha256:0123456789abcdef",
            key_hint="…abcd",
            scenario="support-bot",
            tags={"team": "support"},
            model_requested="qwen-plus",
            model_returned="qwen-plus",
            request_id="req-0",
            http_status=200,
            usage_source="reported",
            input_tokens=1200,
            output_tokens=300,
            total_tokens=1500,
            cached_tokens=200,
        )
        if first_format:
            fields = dataclasses.asdict(event) | {"schema_version": 1}
            template = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        else:
            template = event.to_json_line()
        ids = [new_event_id() for _ in range(total)]
        with connect(settings.database):
            pass  # create and migrate the database outside the timing
        size = len(template) * total
        print(
            f"{total:,} events, {SEGMENTS} segments, {size / 2**20:,.0f} MiB of spool "
            f"({len(template)}-byte lines, schema_version {1 if first_format else 2})"
        )
        for round_, label in ((1, "first ingest (all new)"), (2, "rerun (all duplicates)")):
            write_segments(settings.spool_dir, ids, template, round_)
            started, cpu_started = time.perf_counter(), time.process_time()
            result = ingest_spool(settings)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            rate = total / elapsed
            # CPU time over both cores is steadier than wall time on a shared, noisy host.
            print(
                f"{label}: {elapsed:.2f} s wall, {rate:,.0f} events/s "
                f"({rate / TARGET:.2f}x the {TARGET:,}/s target); {cpu:.2f} s CPU, "
                f"{total / (cpu / 2):,.0f} events/s if both cores were ours; "
                f"ingested={result.ingested:,} duplicates={result.duplicates:,}"
            )
        with connect(settings.database) as con:
            (rows,) = con.execute("SELECT count(*) FROM events").fetchone()
        print(f"table rows: {rows:,} (expected {total:,})")


if __name__ == "__main__":
    main()
