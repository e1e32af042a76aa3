"""The `costsplit` command: a thin shell over the library.

Each command parses its options, calls one library function and prints. Imports happen inside
the commands, so `costsplit spend` does not pay for the simulator or the scheduler.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from costsplit.errors import CostsplitError


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE``: the settings file (else COSTSPLIT_CONFIG, else config/costsplit.toml)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Settings file (default: $COSTSPLIT_CONFIG, then config/costsplit.toml).",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print machine-readable JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


def month_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--month YYYY-MM``: a calendar month in the reporting timezone."""
    return click.option("--month", metavar="YYYY-MM", default=None, help="Calendar month.")(command)


def load(config_path: str | None):
    """The settings for a command (environment over file over default)."""
    from costsplit.config import load_settings

    return load_settings(config_path)


class _Group(click.Group):
    """Prints a CostsplitError as one line (exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CostsplitError as exc:
            click.echo(f"costsplit: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="costsplit")
def main() -> None:
    """costsplit: what your Model Studio calls cost, split by workspace and scenario."""


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    return main.command(*args, **kwargs)


# --- foundation: fingerprint, ingest ---------------------------------------------------------


@command()
@click.argument("env_var", required=False)
def fingerprint(env_var: str | None) -> None:
    """Print the fingerprint of an API key, for the workspace mapping in the config.

    The key is read from the environment variable ENV_VAR (default DASHSCOPE_API_KEY) or, with
    no such variable set, from standard input. The key itself is never printed or stored.

    Example: costsplit fingerprint SUPPORT_BOT_KEY
    """
    import os

    from costsplit.events import fingerprint_key, key_hint

    name = env_var or "DASHSCOPE_API_KEY"
    key = os.environ.get(name) or sys.stdin.readline()
    if not key.strip():
        raise click.UsageError(f"no key in ${name} or on standard input")
    click.echo(f"{fingerprint_key(key)}  {key_hint(key)}")


# --- store: ingest ----------------------------------------------------------------------------


@command()
@config_option
@json_option
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to keep retrying while another process holds the database.",
)
def ingest(config_path: str | None, as_json: bool, wait: float) -> None:
    """Move recorded events from the spool into the database, each exactly once.

    Safe to run at any time and as often as you like: lines already ingested are skipped,
    a locked database leaves the spool untouched for the next run.

    Example: costsplit ingest --config config/costsplit.toml
    """
    import dataclasses
    import json

    from costsplit.ingest import ingest_spool

    result = ingest_spool(load(config_path), lock_timeout=wait)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
    else:
        click.echo(
            f"ingested {result.ingested}, duplicates {result.duplicates}, "
            f"rejected {result.rejected}, quarantined {result.quarantined}"
        )


# --- simulator: simulate ----------------------------------------------------------------------


@command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=0, show_default=True, help="Port (0: a free port).")
@click.option(
    "--region",
    type=click.Choice(["ap-southeast-1", "cn-beijing", "us-east-1"]),
    default=None,
    help="Region to simulate (default: the config file's, else ap-southeast-1).",
)
@click.option(
    "--config",
    "sim_config",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Simulator TOML (see config/simulator.toml); default: the built-in demo world.",
)
def simulate(host: str, port: int, region: str | None, sim_config: str | None) -> None:
    """Run a local Model Studio simulator in the foreground and print its base URL.

    It serves /compatible-mode/v1 and /api/v1 with the demo keys (sk-sim-default-intl, ...).
    Stop it with Ctrl+C.

    Example: costsplit simulate --port 8808 --region cn-beijing
    """
    import dataclasses

    from costsplit.simulator import SimulatorConfig, serve_forever

    if sim_config:
        config = SimulatorConfig.from_toml(sim_config)
        if region and region != config.region:
            config = dataclasses.replace(config, region=region)
    else:
        config = SimulatorConfig.default(region or "ap-southeast-1")

    def ready(base_url: str) -> None:
        click.echo(base_url, nl=True)
        click.echo(
            f"region {config.region}; keys: {', '.join(k.key for k in config.keys)}", err=True
        )
        sys.stdout.flush()

    serve_forever(config, host=host, port=port, on_ready=ready)


# --- rollup: rollup, reprice, close, spend ----------------------------------------------------


@command()
@config_option
def rollup(config_path: str | None) -> None:
    """Bring the daily spend rollup up to date (only days with new or late events).

    Example: costsplit rollup
    """
    from costsplit import rollup as rollups
    from costsplit import store

    settings = load(config_path)
    with store.connect(settings.database) as con:
        result = rollups.refresh(con, settings)
    what = "every open day" if result.full else f"{result.days} day(s)"
    click.echo(f"rolled up {what}: {result.rows} rows, {result.adjustments} adjustment rows")


@command()
@config_option
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day.")
@click.option("--dry-run", is_flag=True, help="Show what would move; change nothing.")
def reprice(config_path: str | None, since: Any, dry_run: bool) -> None:
    """Show, per workspace, what the current price books move since a day; then apply.

    Closed months stay frozen. Example: costsplit reprice --since 2026-03-01 --dry-run
    """
    from costsplit import periods, store

    settings = load(config_path)
    with store.connect(settings.database) as con:
        result = periods.reprice(con, settings, since.date(), dry_run=dry_run)
    for line in result.lines:
        click.echo(
            f"{line.workspace_id}  {line.currency}  {line.before} -> {line.after}  "
            f"({'+' if line.delta >= 0 else ''}{line.delta})"
            + (
                f"  unpriced tokens {line.unpriced_tokens_before} -> {line.unpriced_tokens_after}"
                if line.unpriced_tokens_before != line.unpriced_tokens_after
                else ""
            )
        )
    if result.closed_months:
        click.echo(f"closed, not re-priced: {', '.join(result.closed_months)}")
    click.echo("applied" if result.applied else "dry run: nothing changed")


@command()
@config_option
@click.argument("month", metavar="YYYY-MM")
def close(config_path: str | None, month: str) -> None:
    """Freeze a month: later runs never rewrite it; late events become adjustments.

    Example: costsplit close 2026-03
    """
    from costsplit import periods, store

    settings = load(config_path)
    with store.connect(settings.database) as con:
        status = periods.close_month(con, settings, month)
    click.echo(
        f"closed {status.month} (events ingested up to {status.closed_at:%Y-%m-%d %H:%M:%S})"
    )


@command()
@config_option
@json_option
@month_option
@click.option("--workspace", default=None, help="Only this workspace id.")
@click.option("--scenario", default=None, help="Only this scenario.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None, help="First day.")
@click.option(
    "--until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Day after the last."
)
@click.option(
    "--by",
    type=click.Choice(["day", "model", "scenario", "workspace"]),
    default="model",
    show_default=True,
    help="Group lines by.",
)
def spend(
    config_path: str | None,
    as_json: bool,
    month: str | None,
    workspace: str | None,
    scenario: str | None,
    since: Any,
    until: Any,
    by: str,
) -> None:
    """What calls cost, per currency, with the unpriced usage (ingests and rolls up first).

    Example: costsplit spend --scenario triage --month 2026-03 --by day --json
    """
    from costsplit import spend as spending

    settings = load(config_path)
    start, end = spending.period(
        month, since.date() if since else None, until.date() if until else None, settings
    )
    summary = spending.spend_summary(
        settings, start, end, by=by, workspace=workspace, scenario=scenario
    )
    if as_json:
        import orjson

        click.echo(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        spending.render(summary)


# --- reports: report, scheduler, demo ---------------------------------------------------------


@main.group()
def report() -> None:
    """Render reports to files: the monthly cost split, workspace statements, the digest."""


@report.command("monthly")
@config_option
@month_option
@click.option("--workspace", default=None, help="Only this workspace (its statement).")
@click.option(
    "--format",
    "formats",
    type=click.Choice(["html", "csv", "email", "text"]),
    multiple=True,
    help="Output format; repeat for several (default: html, csv and email).",
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder.")
def report_monthly(
    config_path: str | None,
    month: str | None,
    workspace: str | None,
    formats: tuple[str, ...],
    out: str | None,
) -> None:
    """Write the monthly cost-split report (default: the month just ended) as files.

    Files go to OUT (default: the reporting output folder / YYYY-MM/): an HTML page with
    everything inline, a CSV with exact decimals for finance and an .eml email file.

    Example: costsplit report monthly --month 2026-10 --format html --format csv
    """
    from datetime import UTC, datetime
    from pathlib import Path

    from costsplit.jobs import write_monthly
    from costsplit.report import last_month

    settings = load(config_path)
    month = month or last_month(datetime.now(UTC), settings.timezone)
    paths = write_monthly(
        settings,
        month,
        formats=formats or ("html", "csv", "email"),
        out=Path(out) if out else None,
        workspace=workspace,
    )
    for path in paths:
        click.echo(str(path))


@report.command("digest")
@config_option
@click.option("--week", metavar="YYYY-Www", default=None, help="ISO week (default: last week).")
@click.option(
    "--format",
    "formats",
    type=click.Choice(["html", "email", "text"]),
    multiple=True,
    help="Output format; repeat for several (default: html).",
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder.")
def report_digest(
    config_path: str | None, week: str | None, formats: tuple[str, ...], out: str | None
) -> None:
    """Write the weekly scenario digest (this week against last, budgets) as files.

    Example: costsplit report digest --week 2026-W44
    """
    from datetime import UTC, datetime
    from pathlib import Path

    from costsplit.digest import last_week
    from costsplit.jobs import write_digest

    settings = load(config_path)
    week = week or last_week(datetime.now(UTC), settings.timezone)
    out_dir = Path(out) if out else None
    paths = write_digest(settings, week, formats=formats or ("html",), out=out_dir)
    for path in paths:
        click.echo(str(path))


@command()
@config_option
def scheduler(config_path: str | None) -> None:
    """Run the schedule in the foreground: ingest, rollup, budget alerts, reports by email.

    Intervals and cron lines come from [schedules] (cron in the reporting timezone); runs
    missed while it was stopped are caught up on start. Stop it with Ctrl-C.

    Example: costsplit scheduler --config config/costsplit.toml
    """
    import contextlib
    import logging

    from costsplit.scheduler import build_scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load(config_path)
    runner = build_scheduler(settings)
    for job in runner.get_jobs():
        click.echo(f"{job.id:<16} {job.trigger}", err=True)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        runner.start()


@command()
@click.option("--calls", type=click.IntRange(100), default=20_000, show_default=True, help="Calls.")
@click.option(
    "--folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Demo home (default: ~/.costsplit/demo).",
)
def demo(calls: int, folder: str | None) -> None:
    """Run the whole product on a simulated month: no credentials, no network.

    Starts local Model Studio simulators (Singapore and Beijing), drives a month of traffic
    through the recording client, ingests, rolls up and renders the monthly report (HTML, CSV,
    email). Everything lives in its own folder, never in your data.

    Example: costsplit demo --calls 20000
    """
    from pathlib import Path

    from costsplit.demo import run_demo

    run_demo(calls=calls, folder=Path(folder) if folder else None, console=True)


# --- proxy: proxy ----------------------------------------------------------------------------


@command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default: proxy.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: proxy.port).")
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    help="Processes on the port (default 0: one per CPU core).",
)
@click.option("--no-record", is_flag=True, help="Forward only, record nothing (to measure).")
@click.option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    help="Event loop (auto: uvloop when installed).",
)
def proxy(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int,
    no_record: bool,
    loop: str,
) -> None:
    """Record any client by changing its base URL: forward to Model Studio and record each call.

    Forwards /compatible-mode/v1/... and /api/v1/... to the default route of [proxy] (the
    built-in routes are singapore, beijing, virginia and hongkong). Pick another route with the
    path prefix /r/ROUTE/ or the header X-Costsplit-Route. Authorization passes through
    untouched; X-Costsplit-Scenario and X-Costsplit-Tag-* headers attribute the call.

    Example: costsplit proxy --port 8787
    (then the base URL is http://127.0.0.1:8787/compatible-mode/v1)
    """
    from costsplit.proxy import RouteTable, serve
    from costsplit.proxy.server import default_workers

    settings = load(config_path)
    table = RouteTable.from_settings(settings.proxy)
    shown_host = host or settings.proxy.host
    shown_port = settings.proxy.port if port is None else port
    routes = ", ".join(
        f"{name}{' (default)' if name == table.default else ''} → {route.upstream}"
        for name, route in table.routes.items()
    )
    workers = workers or (default_workers() if shown_port != 0 else 1)
    click.echo(
        f"costsplit proxy on http://{shown_host}:{shown_port} ({workers} worker"
        f"{'s' if workers > 1 else ''})  routes: {routes}",
        err=True,
    )
    serve(settings, host=host, port=port, workers=workers, record=not no_record, loop=loop)
