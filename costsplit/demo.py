"""``costsplit demo``: the whole product on a simulated month, offline, in its own folder.

It writes its own settings and home under the demo folder (``~/.costsplit/demo`` by default,
never a user's data), starts two local Model Studio simulators (Singapore and Beijing, in a
child process), sends the month of calls planned by ``costsplit.demo_traffic`` through the real
recording transport over loopback — many threads, each call stamped with its simulated time
through the recorder's injectable clock (``Recorder(clock=...)``) — then ingests the spool,
rolls up and renders the monthly report (HTML, CSV, email file) for the previous calendar month.
Everything it runs gets the settings it wrote, explicitly: a ``config/costsplit.toml`` in the
working directory or ``COSTSPLIT_CONFIG`` is never read.

``run_demo(calls=600, folder=tmp)`` is the same thing small, for tests.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import select
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from costsplit.config import Settings, load_settings
from costsplit.demo_traffic import SCENARIOS, WORKSPACES, Call, plan_calls
from costsplit.errors import CostsplitError, ModelNotGranted
from costsplit.events import fingerprint_key

THREADS = 24
_SIMULATED_TIME: contextvars.ContextVar[float] = contextvars.ContextVar("simulated_time")


@dataclasses.dataclass(frozen=True, slots=True)
class DemoResult:
    settings: Settings
    month: str
    calls: int
    denied_locally: int
    files: tuple[Path, ...]
    report: object  # costsplit.report.MonthlyReport
    seconds: float


def demo_config(folder: Path, month: str) -> str:
    """The demo's settings file (TOML)."""
    lines = [
        "# Written by `costsplit demo`: a self-contained world on local simulators.",
        "[storage]",
        f'home = "{folder}"',
        "",
        "[reporting]",
        'timezone = "Asia/Shanghai"',
        'currency = "USD"',
        f'output = "{folder / "reports"}"',
        "",
        "[recording]",
        "enforce_grants = true",
        "",
        "[schedules]",
        'finance_recipients = ["finance@example.com"]',
        "",
        "[[exchange_rates]]",
        f'month = "{month}"',
        'from = "CNY"',
        'to = "USD"',
        'rate = "0.1404"',
        f'date = "{month}-28"',
        'source = "demo rate (illustrative, not a market quote)"',
    ]
    for ws_id, name, region, centre, key, models in WORKSPACES:
        lines += [
            "",
            "[[workspaces]]",
            f'id = "{ws_id}"',
            f'name = "{name}"',
            f'region = "{region}"',
            f'cost_centre = "{centre}"',
            f'owners = ["owner-{ws_id}@example.com"]',
            f'key_fingerprints = ["{fingerprint_key(key)}"]',
        ]
        if models:
            lines.append("models = [" + ", ".join(f'"{m}"' for m in models) + "]")
    for scenario, ws_id, owners, budget in SCENARIOS:
        region = next(w[2] for w in WORKSPACES if w[0] == ws_id)
        lines += ["", "[[scenarios]]", f'name = "{scenario}"', f'workspace = "{ws_id}"']
        lines.append("owners = [" + ", ".join(f'"{o}"' for o in owners) + "]")
        if budget:
            currency = "CNY" if region == "cn-beijing" else "USD"
            lines += [f'monthly_budget = "{budget}"', f'budget_currency = "{currency}"']
    return "\n".join(lines) + "\n"


def run_demo(
    *,
    calls: int = 20_000,
    folder: Path | None = None,
    console: bool = False,
    now: datetime | None = None,
    threads: int = THREADS,
) -> DemoResult:
    """Run the demo end to end; return the settings, the report and the files written."""
    from costsplit import rollup
    from costsplit.ingest import ingest_spool
    from costsplit.jobs import write_monthly
    from costsplit.report import last_month, monthly_report
    from costsplit.store import connect

    started = time.perf_counter()
    folder = (folder or Path.home() / ".costsplit" / "demo").expanduser().resolve()
    now = now or datetime.now(UTC)
    month = last_month(now, "Asia/Shanghai")
    _fresh(folder)
    config = folder / "costsplit.toml"
    config.write_text(demo_config(folder, month), encoding="utf-8")
    settings = load_settings(config, environ={}, cwd=folder)
    plan = plan_calls(month, calls, settings.timezone)

    with _progress(console) as progress:
        traffic = progress.add_task(f"Calls to the simulators for {month}", total=len(plan))
        denied = _drive(settings, plan, threads, lambda: progress.advance(traffic))
        step = progress.add_task("Ingest, roll up, render", total=3)
        ingest_spool(settings)
        progress.advance(step)
        with connect(settings.database) as con:
            rollup.refresh(con, settings)
        progress.advance(step)
        files = write_monthly(settings, month, formats=("html", "csv", "email"), now=now)
        with connect(settings.database) as con:
            report = monthly_report(con, settings, month, now=now)
        progress.advance(step)
    result = DemoResult(
        settings, month, len(plan), denied, tuple(files), report, time.perf_counter() - started
    )
    if console:
        print_summary(result)
    return result


def _fresh(folder: Path) -> None:
    """Remove what an earlier demo run left in its own folder (and only that)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("costsplit.duckdb", "costsplit.duckdb.wal"):
        (folder / name).unlink(missing_ok=True)
    for name in ("spool", "reports"):
        shutil.rmtree(folder / name, ignore_errors=True)


def _drive(settings: Settings, plan: list[Call], threads: int, advance) -> int:
    """Send every call through the recording transport; return how many were denied locally."""
    from costsplit.record import Recorder
    from costsplit.transport import RecordingTransport

    def clock() -> float:
        return _SIMULATED_TIME.get()

    recorders = {
        region: Recorder(None, settings, region=region, clock=clock)
        for region in ("ap-southeast-1", "cn-beijing")
    }
    denied = 0
    lock = threading.Lock()
    local = threading.local()
    every_client: list[httpx.Client] = []
    with simulators() as base:

        def client(region: str) -> httpx.Client:
            clients = getattr(local, "clients", None)
            if clients is None:
                clients = local.clients = {}
            if region not in clients:
                transport = RecordingTransport(httpx.HTTPTransport(), recorder=recorders[region])
                clients[region] = httpx.Client(
                    transport=transport, base_url=base[region], timeout=30
                )
                with lock:
                    every_client.append(clients[region])
            return clients[region]

        def send(call: Call) -> None:
            nonlocal denied
            headers = {"Authorization": f"Bearer {call.key}", "Content-Type": "application/json"}
            if call.scenario:
                headers["X-Costsplit-Scenario"] = call.scenario
            if call.fault:
                headers["X-Simulator-Fault"] = call.fault
            if call.stream and call.path.startswith("/api/"):
                headers["X-DashScope-SSE"] = "enable"
            _SIMULATED_TIME.set(call.at)
            try:
                with client(call.region).stream(
                    "POST", call.path, content=call.payload(), headers=headers
                ) as response:
                    for _ in response.iter_raw():
                        pass
            except ModelNotGranted:
                with lock:
                    denied += 1
            except httpx.HTTPError:
                pass  # recorded as a network error or an interrupted stream
            advance()

        try:
            with ThreadPoolExecutor(threads) as pool:
                for future in [pool.submit(send, call) for call in plan]:
                    future.result()
        finally:
            for each in every_client:
                each.close()
    from costsplit.spool import open_spool

    open_spool(settings).flush()
    return denied


@contextlib.contextmanager
def simulators(timeout: float = 60.0):
    """Both simulators (Singapore, Beijing) in a child process: {region: base URL}.

    A process of their own gives them the second core: in the demo's process the recording
    clients and the servers would share one interpreter lock. The child prints its URLs as one
    JSON line and serves until its standard input closes (so it also ends with the demo).
    """
    code = "from costsplit.demo import serve_simulators; serve_simulators()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        ready = select.select([child.stdout], [], [], timeout)[0]
        line = child.stdout.readline() if ready else b""
        if not line:
            raise CostsplitError("the demo's simulators did not start")
        yield json.loads(line)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def serve_simulators() -> None:
    """The child of ``simulators()``: serve until standard input closes."""
    from costsplit.simulator import SimulatorConfig, run_in_thread

    sg_config = SimulatorConfig.default("ap-southeast-1", rpm_limits={"qwen3-vl-plus": 40})
    with run_in_thread(sg_config) as sg, run_in_thread(SimulatorConfig.default("cn-beijing")) as cn:
        # The simulators log each deliberately broken stream; the demo counts them instead.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        print(json.dumps({sg.region: sg.base_url, cn.region: cn.base_url}), flush=True)
        sys.stdin.read()


@contextlib.contextmanager
def _progress(console: bool):
    if not console:
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        yield progress


class _NoProgress:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        return None


def print_summary(result: DemoResult) -> None:
    """A short terminal summary: the total, the workspaces, what needs attention, the files."""
    from rich.console import Console
    from rich.table import Table

    from costsplit.money import format_amount

    report = result.report
    console = Console()
    total = (
        f"{report.reporting_currency} {format_amount(report.converted_total)}"
        if report.converted_total is not None
        else " + ".join(f"{t.currency} {format_amount(t.shown)}" for t in report.totals)
    )
    took = f"{result.calls:,} calls in {result.seconds:.0f} s"
    console.print(f"\n[bold]Model Studio spend, {report.month_label}: {total}[/bold]  ({took})")
    for t in report.totals:
        rate = (
            f" × {t.rate} = {report.reporting_currency} {format_amount(t.converted_shown)}"
            if t.currency != report.reporting_currency and t.rate
            else ""
        )
        console.print(f"  {t.currency} {format_amount(t.shown)}{rate}")
    table = Table(show_edge=False)
    for column in ("Workspace", "Cost centre", "Total", "Share", "Biggest scenario"):
        table.add_column(column, justify="right" if column in ("Total", "Share") else "left")
    for s in report.sections:
        top = s.top_scenario.label if s.top_scenario else ""
        table.add_row(
            s.workspace_name,
            s.cost_centre,
            f"{s.currency} {format_amount(s.shown)}",
            f"{s.share_percent}%",
            top,
        )
    console.print(table)
    a = report.attention
    unattributed = ", ".join(f"{c} {format_amount(v)}" for c, v, _ in a.unattributed) or "none"
    console.print(
        f"Needs attention: unattributed {unattributed}; unpriced calls {a.unpriced_calls:,}; "
        f"denied {a.denied_calls:,}; failed {a.failed_calls:,}; interrupted {a.interrupted_calls:,}"
    )
    console.print("Report files:")
    for path in result.files:
        console.print(f"  {path}")
    console.print(f"Settings of this demo: {result.settings.source}")
