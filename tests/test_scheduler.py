"""The schedule: jobs, triggers, timezone and catch-up, all on an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from costsplit.config import load_settings
from costsplit.errors import StoreError
from costsplit.scheduler import build_scheduler, last_runs, run_job

SHANGHAI = ZoneInfo("Asia/Shanghai")


def settings_for(tmp_path):
    path = tmp_path / "costsplit.toml"
    path.write_text(
        '[schedules]\ningest_seconds = 60\nrollup_seconds = 300\nmonthly_report = "0 8 1 * *"\n'
        'weekly_digest = "0 9 * * mon"\n'
    )
    return load_settings(path)


def build(settings, now):
    scheduler = BackgroundScheduler(timezone=SHANGHAI)
    return build_scheduler(settings, scheduler=scheduler, clock=lambda: now)


def test_jobs_triggers_and_timezone(tmp_path):
    settings = settings_for(tmp_path)
    now = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)  # 1 November 07:00 in Shanghai
    scheduler = build(settings, now)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ["ingest", "monthly-report", "rollup", "weekly-digest"]
    assert isinstance(jobs["ingest"].trigger, IntervalTrigger)
    assert jobs["ingest"].trigger.interval == timedelta(seconds=60)
    assert jobs["rollup"].trigger.interval == timedelta(seconds=300)
    monthly = jobs["monthly-report"].trigger
    assert isinstance(monthly, CronTrigger)
    assert str(monthly.timezone) == "Asia/Shanghai"
    # The monthly report runs at 08:00 Shanghai time on the 1st (00:00 UTC), for October.
    assert jobs["monthly-report"].next_run_time == datetime(2026, 11, 1, 8, 0, tzinfo=SHANGHAI)
    assert jobs["weekly-digest"].next_run_time == datetime(2026, 11, 2, 9, 0, tzinfo=SHANGHAI)
    assert jobs["ingest"].next_run_time == now + timedelta(seconds=60)
    for job in jobs.values():
        assert (job.coalesce, job.max_instances) == (True, 1)
        assert job.misfire_grace_time >= 60
    assert jobs["monthly-report"].misfire_grace_time == 7 * 86400


def test_missed_runs_are_caught_up_after_downtime(tmp_path):
    settings = settings_for(tmp_path)
    first = datetime(2026, 10, 28, 2, 0, tzinfo=UTC)
    build(settings, first)  # first start: the baseline, nothing old is run
    assert set(last_runs(settings).values()) == {first}
    # Down from 28 October to 3 November: the 1 November report and 2 November digest were missed.
    later = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
    jobs = {job.id: job for job in build(settings, later).get_jobs()}
    assert jobs["monthly-report"].next_run_time == later
    assert jobs["weekly-digest"].next_run_time == later
    assert jobs["ingest"].next_run_time == later + timedelta(seconds=60)


def test_runs_are_recorded_and_errors_do_not_escape(tmp_path):
    settings = settings_for(tmp_path)
    at = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    assert run_job(settings, "ingest", lambda: "done", lambda: at) == "done"

    def broken():
        raise StoreError("disk full")

    later = at + timedelta(minutes=1)
    assert run_job(settings, "rollup", broken, lambda: later) is None
    assert last_runs(settings) == {"ingest": at, "rollup": later}
    # After a recorded run, the next start only catches up what fired since then.
    jobs = {job.id: job for job in build(settings, later).get_jobs()}
    assert jobs["monthly-report"].next_run_time == datetime(2026, 12, 1, 8, 0, tzinfo=SHANGHAI)
