"""Benchmark the simulator with wrk on loopback (bounded: about 20 seconds by default).

No target is set for the simulator; the figures say how far it can drive the proxy and the
recording clients before it, not they, becomes the bottleneck. Measured: requests/s and p50 at
1 and 32 connections for a non-streaming compatible chat, a compatible stream with usage
(about 16 events) and a native SSE stream. Each figure is the median of --repeats runs of wrk
(one thread). Without wrk it says how to get it and exits.

    python benchmarks/bench_simulator.py [--duration 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from costsplit.simulator import SimulatorConfig, run_in_thread

MESSAGES = [{"role": "user", "content": "How much did the support workspace spend in March?"}]
CASES = {
    "compatible chat": (
        "/compatible-mode/v1/chat/completions",
        {"model": "qwen-plus", "messages": MESSAGES},
        {},
    ),
    "compatible stream": (
        "/compatible-mode/v1/chat/completions",
        {
            "model": "qwen-plus",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {},
    ),
    "native stream": (
        "/api/v1/services/aigc/text-generation/generation",
        {"model": "qwen-plus", "input": {"messages": MESSAGES}, "parameters": {}},
        {"X-DashScope-SSE": "enable"},
    ),
}


def wrk_script(body: dict, headers: dict) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}"]
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer sk-sim-default-intl",
        **headers,
    }
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def run_wrk(url: str, script: Path, connections: int, duration: float) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    p50_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return rate, p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    with run_in_thread(SimulatorConfig.default()) as sim, tempfile.TemporaryDirectory() as tmp:
        for name, (path, body, headers) in CASES.items():
            script = Path(tmp) / "case.lua"
            script.write_text(wrk_script(body, headers))
            for connections in (1, 32):
                runs = [
                    run_wrk(sim.base_url + path, script, connections, args.duration)
                    for _ in range(args.repeats)
                ]
                rate = statistics.median(r for r, _ in runs)
                p50 = statistics.median(p for _, p in runs)
                print(f"{name:18} c={connections:<3} {rate:8.0f} requests/s  p50 {p50:6.2f} ms")


if __name__ == "__main__":
    main()
