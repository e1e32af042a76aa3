"""The schedule: ingest, rollup, budget alerts, the monthly report and the weekly digest.

``build_scheduler(settings, scheduler=..., clock=...)`` adds the jobs to an APScheduler 3.x
scheduler (a ``BlockingScheduler`` for ``costsplit scheduler``, any scheduler in tests) and
returns it, not started:

==================  =====================================================================
job                 trigger
==================  =====================================================================
ingest              every ``schedules.ingest_seconds``
rollup              every ``schedules.rollup_seconds`` (then budget alerts)
monthly-report      cron ``schedules.monthly_report`` in the reporting timezone, for the
                    month just ended
weekly-digest       cron ``schedules.weekly_digest`` in the reporting timezone, for the
                    last complete ISO week
==================  =====================================================================

Every job has ``coalesce=True`` and ``max_instances=1`` (never twice at once, a backlog runs
once) and a generous misfire grace time. APScheduler's memory of runs dies with the process, so
each run's time is kept in the ``job_runs`` table: on start, a cron job whose trigger fired
between its last recorded run and now is scheduled to run at once (catch-up after downtime).
A job with no recorded run takes the start as its baseline, so a first start sends nothing old.
A report job then produces every period whose run it missed, not only the latest: down over
three month ends, it sends three monthly reports, each still once per (report, period,
recipient) through the ledger; periods with deliveries still failed are tried again too.
The clock is injected so tests drive all of this without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from costsplit.config import Settings
from costsplit.errors import CostsplitError
from costsplit.store import connect

log = logging.getLogger("costsplit.scheduler")

MISFIRE_GRACE = {
    "ingest": 60,
    "rollup": 300,
    "monthly-report": 7 * 86400,
    "weekly-digest": 2 * 86400,
}


def triggers(settings: Settings, now: datetime) -> dict[str, object]:
    """Each job's APScheduler trigger (cron jobs in the reporting timezone); intervals count
    from ``now``."""
    tz = ZoneInfo(settings.timezone)
    schedules = settings.schedules
    ingest, rollup = (
        timedelta(seconds=schedules.ingest_seconds),
        timedelta(seconds=schedules.rollup_seconds),
    )
    return {
        "ingest": IntervalTrigger(
            seconds=int(ingest.total_seconds()), start_date=now + ingest, timezone=tz
        ),
        "rollup": IntervalTrigger(
            seconds=int(rollup.total_seconds()), start_date=now + rollup, timezone=tz
        ),
        "monthly-report": CronTrigger.from_crontab(schedules.monthly_report, timezone=tz),
        "weekly-digest": CronTrigger.from_crontab(schedules.weekly_digest, timezone=tz),
    }


def build_scheduler(
    settings: Settings,
    *,
    scheduler: BaseScheduler | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BaseScheduler:
    """A scheduler with costsplit's jobs added (not started), missed cron runs due now."""
    if scheduler is None:
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler(timezone=ZoneInfo(settings.timezone))
    now = clock()
    last_runs = _baseline(settings, now)
    bodies = job_bodies(settings, clock=clock, environ=environ, sleep=sleep)
    for name, trigger in triggers(settings, now).items():
        scheduler.add_job(
            run_job,
            trigger,
            args=(settings, name, bodies[name], clock),
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=MISFIRE_GRACE[name],
            replace_existing=True,
            next_run_time=next_run(trigger, last_runs.get(name), now),
        )
    return scheduler


def next_run(trigger, last_run: datetime | None, now: datetime) -> datetime | None:
    """``now`` when the trigger fired after ``last_run`` and before ``now`` (a missed run),
    else the trigger's next fire time from ``now``."""
    if last_run is not None and isinstance(trigger, CronTrigger):
        missed = trigger.get_next_fire_time(None, last_run + timedelta(microseconds=1))
        if missed is not None and missed <= now:
            return now
    return trigger.get_next_fire_time(None, now)


MAX_CATCH_UP = 36  # missed runs of one report job produced on start, at most


def due_periods(
    trigger: CronTrigger,
    last_run: datetime | None,
    now: datetime,
    period_of: Callable[[datetime], str],
) -> list[str]:
    """The periods of every fire time of ``trigger`` after ``last_run`` up to ``now``, oldest
    first; with no fire time in between (a run started by hand), the period of ``now``."""
    periods: list[str] = []
    at = last_run
    while last_run is not None and len(periods) < MAX_CATCH_UP:
        at = trigger.get_next_fire_time(None, at + timedelta(microseconds=1))
        if at is None or at > now:
            break
        periods.append(period_of(at))
    return list(dict.fromkeys(periods)) or [period_of(now)]


def unsent_periods(settings: Settings, reports: tuple[str, ...]) -> list[str]:
    """Periods with a delivery not yet sent (failed or pending) for reports named or prefixed
    by ``reports`` (``"statement:"`` matches every statement)."""
    with connect(settings.database) as con:
        rows = con.execute(
            "SELECT DISTINCT report, period FROM sent_ledger WHERE status <> 'sent' ORDER BY period"
        ).fetchall()
    return list(dict.fromkeys(period for report, period in rows if report.startswith(reports)))


def job_bodies(settings: Settings, *, clock, environ, sleep) -> dict[str, Callable[[], object]]:
    """What each job does, as zero-argument callables."""
    from costsplit import jobs
    from costsplit.digest import last_week
    from costsplit.report import last_month

    tz = ZoneInfo(settings.timezone)
    monthly_cron = CronTrigger.from_crontab(settings.schedules.monthly_report, timezone=tz)
    weekly_cron = CronTrigger.from_crontab(settings.schedules.weekly_digest, timezone=tz)

    def ingest() -> object:
        from costsplit.ingest import ingest_spool

        return ingest_spool(settings)

    def rollup() -> object:
        from costsplit import rollup as rollup_module

        with connect(settings.database) as con:
            result = rollup_module.refresh(con, settings)
        jobs.send_budget_alerts(settings, now=clock(), environ=environ, sleep=sleep)
        return result

    def monthly() -> object:
        now = clock()
        months = due_periods(
            monthly_cron,
            last_runs(settings).get("monthly-report"),
            now,
            lambda at: last_month(at, settings.timezone),
        )
        months = sorted({*unsent_periods(settings, ("monthly", "statement:")), *months})
        return [
            delivery
            for month in months
            for delivery in jobs.send_monthly(
                settings, month, now=now, environ=environ, sleep=sleep
            )
        ]

    def digest() -> object:
        now = clock()
        weeks = due_periods(
            weekly_cron,
            last_runs(settings).get("weekly-digest"),
            now,
            lambda at: last_week(at, settings.timezone),
        )
        weeks = sorted({*unsent_periods(settings, ("digest",)), *weeks})
        return [
            delivery
            for week in weeks
            for delivery in jobs.send_digest(settings, week, now=now, environ=environ, sleep=sleep)
        ]

    return {"ingest": ingest, "rollup": rollup, "monthly-report": monthly, "weekly-digest": digest}


def run_job(
    settings: Settings, name: str, body: Callable[[], object], clock: Callable[[], datetime]
) -> object:
    """Run one job and record its run; a costsplit error is logged, not raised (the next run
    tries again), and failed deliveries stay in the ledger."""
    started = clock()
    try:
        result = body()
    except CostsplitError as exc:
        log.error("job %s failed: %s", name, exc)
        _record(settings, name, started, "error", str(exc))
        return None
    failed = (
        [d for d in result or () if getattr(d, "status", "") == "failed"]
        if isinstance(result, list)
        else []
    )
    for delivery in failed:
        log.error(
            "job %s: %s %s to %s failed: %s",
            name,
            delivery.report,
            delivery.period,
            delivery.recipient,
            delivery.error,
        )
    _record(settings, name, started, "failed-deliveries" if failed else "ok", "")
    return result


def last_runs(settings: Settings) -> dict[str, datetime]:
    """Each job's last recorded run."""
    with connect(settings.database) as con:
        return {
            job: at for job, at in con.execute("SELECT job, last_run_at FROM job_runs").fetchall()
        }


def _baseline(settings: Settings, now: datetime) -> dict[str, datetime]:
    with connect(settings.database) as con:
        known = {
            job: at for job, at in con.execute("SELECT job, last_run_at FROM job_runs").fetchall()
        }
        for name in MISFIRE_GRACE:
            if name not in known:
                con.execute("INSERT INTO job_runs VALUES (?, ?, 'baseline', '')", [name, now])
    return known


def _record(settings: Settings, name: str, at: datetime, status: str, error: str) -> None:
    with connect(settings.database) as con:
        con.execute(
            "INSERT INTO job_runs VALUES (?, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET "
            "last_run_at = excluded.last_run_at, last_status = excluded.last_status, "
            "last_error = excluded.last_error",
            [name, at, status, error],
        )
