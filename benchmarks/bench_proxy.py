"""Benchmark the recording proxy with wrk on loopback (bounded: about two minutes by default).

Targets (issue 7), recording on, the proxy as `costsplit proxy` runs it (one worker per core
unless --workers says otherwise):
  - added p50 <= 0.5 ms at 1 concurrent (proxy p50 minus the upstream's own p50);
  - >= 3,000 requests/s at 32 concurrent;
  - >= 90% of the ideal throughput with a 200 ms upstream and 128 in flight (ideal: wrk straight
    to that upstream, a little under 128 / 0.2 s = 640/s since wrk's window includes its start);
  - recording costs <= 20% of the throughput of the same proxy with --no-record.

The upstream is a minimal asyncio HTTP/1.1 server in its own process that answers every request
with a fixed compatible-mode chat completion (usage included), instantly or after a delay.
Each figure is the median of --repeats runs of wrk (one thread); what recording costs is the
median over --pairs alternating pairs of short runs with and without recording, one ratio per
pair, so the drift of a shared host's speed falls on both sides alike. The proxy's CPU time per
request (from /proc, all its worker processes) is reported beside requests/s: on a shared
machine it is the steadier figure. The header line states the workers, the event loop and the
cores used. The benchmark installs nothing: without wrk it says how to get it and exits.

    python benchmarks/bench_proxy.py [--duration 4] [--repeats 3] [--pairs 8] [--pair-duration 2]
                                     [--workers 1] [--loop auto]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from costsplit.proxy.server import default_workers

UPSTREAM = r"""
import asyncio, sys
BODY = (b'{"id":"chatcmpl-0b1e4d1c-6f7a-9c1e-8d3b-2a4c5e6f7a8b","object":"chat.completion",'
        b'"created":1767225600,"model":"qwen-plus","choices":[{"index":0,"finish_reason":"stop",'
        b'"message":{"role":"assistant","content":"Hello from the instant upstream."}}],'
        b'"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}')
RESP = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"x-request-id: 0b1e4d1c-6f7a-9c1e-8d3b-2a4c5e6f7a8b\r\ncontent-length: %d\r\n\r\n%s"
        % (len(BODY), BODY))
DELAY = float(sys.argv[2])

class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, length = self.buffer[:end].lower(), 0
            if (at := head.find(b"content-length:")) >= 0:
                length = int(head[at + 15:].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if DELAY:
                asyncio.get_running_loop().call_later(DELAY, self.reply)
            else:
                self.transport.write(RESP)
    def reply(self):
        if not self.transport.is_closing():
            self.transport.write(RESP)

async def main():
    server = await asyncio.get_running_loop().create_server(
        Upstream, "127.0.0.1", int(sys.argv[1]), backlog=2048)
    await server.serve_forever()
asyncio.run(main())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"model":"qwen-plus","messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.headers["X-Costsplit-Scenario"] = "bench"
"""

PATH = "/compatible-mode/v1/chat/completions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float = 20.0) -> None:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port} after {deadline} s")


def wrk(url: str, connections: int, duration: float, script: Path) -> tuple[float, float]:
    """(requests/s, p50 in ms) of one wrk run."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    p50 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out or "Socket errors" in out:
        print(textwrap.indent(out, "    "), file=sys.stderr)
    return rps, p50


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int, count: int, deadline: float = 20.0) -> list[int]:
    """The ``count`` worker processes of a ``--workers`` proxy (Linux /proc)."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        found = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(p) == pid and b"multiprocessing" in _cmdline(p)
        ]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise SystemExit(f"the proxy did not start {count} workers")


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def wrk_with_cpu(url, connections, duration, script, pids) -> tuple[float, float, float]:
    """(requests/s, p50 ms, proxy CPU µs per request): the CPU figure holds up on a busy
    machine, where throughput swings with what else runs."""
    before = cpu_seconds(pids)
    rps, p50 = wrk(url, connections, duration, script)
    used = cpu_seconds(pids) - before
    return rps, p50, used / (rps * duration) * 1e6


def median_wrk(url, connections, duration, script, repeats) -> tuple[float, float]:
    runs = [wrk(url, connections, duration, script) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen] = []
        self.pids: dict[int, int] = {}  # port -> pid
        self.children: dict[int, list[int]] = {}  # port -> worker pids

    def cpu_pids(self, port: int) -> list[int]:
        return self.children.get(port) or [self.pids[port]]

    def upstream(self, delay: float) -> int:
        port = free_port()
        script = self.workdir / "upstream.py"
        script.write_text(UPSTREAM)
        self.started.append(subprocess.Popen([sys.executable, str(script), str(port), str(delay)]))
        wait_port(port)
        return port

    def proxy(self, upstream_port: int, record: bool, workers: int = 1, loop: str = "auto") -> int:
        port = free_port()
        home = self.workdir / f"home-{port}"
        config = self.workdir / f"proxy-{port}.toml"
        config.write_text(
            "[storage]\n"
            f'home = "{home}"\n'
            "[proxy]\n"
            "[[proxy.routes]]\n"
            'name = "bench"\n'
            f'upstream = "http://127.0.0.1:{upstream_port}"\n'
            'region = "ap-southeast-1"\n'
        )
        args = [
            sys.executable,
            "-c",
            "from costsplit.cli import main; main()",
            "proxy",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            loop,
        ]
        if not record:
            args.append("--no-record")
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSTSPLIT_")}
        process = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
        self.started.append(process)
        self.pids[port] = process.pid
        wait_port(port)
        if workers > 1:  # the CPU of the worker processes, not of the idle parent
            self.children[port] = _children(process.pid, workers)
        return port

    def close(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per figure (median)")
    parser.add_argument(
        "--workers", type=int, default=0, help="proxy processes (--workers; 0: one per core)"
    )
    parser.add_argument("--loop", default="auto", help="proxy event loop (--loop)")
    parser.add_argument(
        "--pairs", type=int, default=8, help="alternating pairs of wrk runs for the recording cost"
    )
    parser.add_argument(
        "--pair-duration", type=float, default=2.0, help="seconds per wrk run of a pair"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "bench_proxy: wrk is not installed; get it with `apt-get install wrk` "
            "(Debian/Ubuntu) or `brew install wrk` (macOS). Skipped."
        )
        return 0
    load = os.getloadavg()[0]
    args.workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="costsplit-bench-proxy-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT)
        procs = Processes(workdir)
        try:
            instant = procs.upstream(0.0)
            slow = procs.upstream(0.2)
            options = {"workers": args.workers, "loop": args.loop}
            recorded = procs.proxy(instant, record=True, **options)
            bare = procs.proxy(instant, record=False, **options)
            recorded_slow = procs.proxy(slow, record=True, **options)
            d, n = args.duration, args.repeats

            def url(port: int) -> str:
                return f"http://127.0.0.1:{port}{PATH}"

            for port in (instant, recorded, bare):  # warm up
                wrk(url(port), 32, 1, script)
            for port in (slow, recorded_slow):  # open the 128 upstream connections
                wrk(url(port), 128, 1, script)

            _, direct_p50 = median_wrk(url(instant), 1, d, script, n)
            _, proxy_p50 = median_wrk(url(recorded), 1, d, script, n)
            _, bare_p50 = median_wrk(url(bare), 1, d, script, n)
            # Alternate short runs of the proxies with and without recording (which goes first
            # alternates too), so that the drift of the host's speed falls on both alike; each
            # pair gives one ratio.
            pairs = []
            for i in range(args.pairs):
                order = (recorded, bare) if i % 2 == 0 else (bare, recorded)
                runs = {
                    port: wrk_with_cpu(
                        url(port), 32, args.pair_duration, script, procs.cpu_pids(port)
                    )
                    for port in order
                }
                pairs.append((runs[recorded], runs[bare]))
            rec_rps = statistics.median(p[0][0] for p in pairs)
            rec_p50 = statistics.median(p[0][1] for p in pairs)
            rec_cpu = statistics.median(p[0][2] for p in pairs)
            bare_rps = statistics.median(p[1][0] for p in pairs)
            bare_cpu = statistics.median(p[1][2] for p in pairs)
            ideal, _ = median_wrk(url(slow), 128, d, script, n)
            slow_rps, _ = median_wrk(url(recorded_slow), 128, d, script, n)
        finally:
            procs.close()
        spooled = sum(
            len(p.read_bytes().splitlines()) for p in workdir.glob("home-*/spool/*.jsonl")
        )

    added = proxy_p50 - direct_p50
    costs = sorted(1 - rec[0] / bare[0] for rec, bare in pairs)
    cpu_costs = sorted(1 - bare[2] / rec[2] for rec, bare in pairs)
    cost, cpu_cost = statistics.median(costs), statistics.median(cpu_costs)
    rows = [
        (
            "added p50, 1 concurrent",
            f"{added:.3f} ms ({bare_p50 - direct_p50:.3f} ms without recording)",
            "<= 0.5 ms",
            added <= 0.5,
        ),
        (
            "requests/s, 32 concurrent",
            f"{rec_rps:,.0f}/s (p50 {rec_p50:.2f} ms)",
            ">= 3,000/s",
            rec_rps >= 3000,
        ),
        (
            "200 ms upstream, 128 in flight",
            f"{slow_rps:,.0f}/s = {slow_rps / ideal:.0%} of {ideal:.0f}",
            ">= 90%",
            slow_rps / ideal >= 0.9,
        ),
        (
            "recording cost at 32 concurrent",
            f"{cost:.0%} ({bare_rps:,.0f}/s without; pairs {costs[0]:.0%}–{costs[-1]:.0%})",
            "<= 20%",
            cost <= 0.2,
        ),
        (
            "proxy CPU per request, 32 conc.",
            f"{rec_cpu:.0f} µs recorded, {bare_cpu:.0f} µs not: {cpu_cost:.0%} cost "
            f"(pairs {cpu_costs[0]:.0%}–{cpu_costs[-1]:.0%})",
            "<= 20%",
            cpu_cost <= 0.2,
        ),
    ]
    print(
        f"bench_proxy: wrk, {n} x {d:g} s per figure (median); proxy --workers {args.workers} "
        f"--loop {args.loop} on {os.cpu_count()} cores (load average {load:.1f} at start); "
        f"upstream p50 direct {direct_p50:.3f} ms; {spooled:,} events spooled"
    )
    for name, value, target, ok in rows:
        print(f"  {name:<32} {value:<48} target {target:<10} {'ok' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
