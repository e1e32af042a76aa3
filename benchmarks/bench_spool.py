"""Cost of one spool append in the caller's thread: median and p99, group fsync and fsync per event.

Each sample is one ``Spool.append`` of a typical event (serialising it included), timed with
``perf_counter_ns``. Group fsync (the default, every 50 ms in a background thread) is the
figure that matters to a recording application; fsync per event shows what durability against
power loss on every call would cost.

    .venv/bin/python benchmarks/bench_spool.py [APPENDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from typical import reported_chat_call

from costsplit.spool import Spool

TARGET_MEDIAN_US = 15.0


def measure(folder: Path, fsync_interval: float, count: int) -> list[float]:
    event = reported_chat_call()
    samples = []
    with Spool(folder, fsync_interval=fsync_interval) as spool:
        spool.append(event)  # opens the segment outside the timing
        for _ in range(count):
            started = time.perf_counter_ns()
            spool.append(event)
            samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def report(label: str, samples: list[float]) -> float:
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    print(f"{label}: {len(samples):,} appends, median {median:.1f} µs, p99 {p99:.1f} µs")
    return median


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        group = report("group fsync (50 ms)", measure(Path(tmp) / "group", 0.05, count))
        each = report("fsync per event", measure(Path(tmp) / "each", 0.0, max(count // 40, 1000)))
    print(
        f"group fsync median is {group / TARGET_MEDIAN_US:.2f}x the {TARGET_MEDIAN_US:.0f} µs "
        f"target; fsync per event costs {each / group:.0f}x more"
    )


if __name__ == "__main__":
    main()
