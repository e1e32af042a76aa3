"""The schedule: jobs, triggers, timezone and catch-up, all on an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from reportworld import Inbox, build_world, free_port

from costsplit.config import load_settings
from costsplit.digest import last_week
from costsplit.errors import StoreError
from costsplit.report import last_month
from costsplit.scheduler import build_scheduler, due_periods, last_runs, run_job

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


def test_downtime_over_several_month_ends_produces_every_missed_report(tmp_path):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = build_world(tmp_path, smtp_port=controller.port)
        first = datetime(2026, 8, 28, 2, 0, tzinfo=UTC)
        build(settings, first)  # the baseline: nothing old is sent
        # Down from 28 August to 3 November: the reports for August, September and October
        # (due on 1 September, 1 October and 1 November at 08:00 Shanghai) were all missed.
        later = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
        job = build(settings, later).get_job("monthly-report")
        assert job.next_run_time == later
        sent = job.func(*job.args)
        again = job.func(*job.args)  # a second run (or a restart) sends nothing twice
    finally:
        controller.stop()
    recipients = ["finance@example.com", "support-lead@example.com", "research-lead@example.com"]
    assert [(d.report, d.period, d.recipient, d.status) for d in sent] == [
        (report, month, recipient, "sent")
        for month in ("2026-08", "2026-09", "2026-10")
        for report, recipient in zip(
            ["monthly", "statement:ws-support", "statement:ws-research"], recipients, strict=True
        )
    ]
    assert sorted((rcpt[0], m["Subject"]) for rcpt, m in inbox.messages) == [
        ("finance@example.com", "Model Studio cost split — August 2026"),
        ("finance@example.com", "Model Studio cost split — October 2026"),
        ("finance@example.com", "Model Studio cost split — September 2026"),
        ("research-lead@example.com", "Workspace statement — Research — August 2026"),
        ("research-lead@example.com", "Workspace statement — Research — October 2026"),
        ("research-lead@example.com", "Workspace statement — Research — September 2026"),
        ("support-lead@example.com", "Workspace statement — Customer support — August 2026"),
        ("support-lead@example.com", "Workspace statement — Customer support — October 2026"),
        ("support-lead@example.com", "Workspace statement — Customer support — September 2026"),
    ]
    # The second run: the month of its own clock only, already sent.
    assert [(d.period, d.status) for d in again] == [("2026-10", "already-sent")] * 3
    assert last_runs(settings)["monthly-report"] == later


def test_due_periods_of_a_cron_between_two_runs():
    monthly = CronTrigger.from_crontab("0 8 1 * *", timezone=SHANGHAI)

    def month(at):
        return last_month(at, "Asia/Shanghai")

    last = datetime(2026, 9, 1, 8, 0, tzinfo=SHANGHAI)  # the September 1 run happened
    assert due_periods(monthly, last, datetime(2026, 12, 2, tzinfo=UTC), month) == [
        "2026-09",
        "2026-10",
        "2026-11",
    ]
    # On time: exactly the month just ended; started by hand mid-month: the last month.
    on_time = datetime(2026, 10, 1, 8, 0, tzinfo=SHANGHAI)
    assert due_periods(monthly, last, on_time, month) == ["2026-09"]
    assert due_periods(monthly, on_time, on_time + timedelta(days=3), month) == ["2026-09"]
    assert due_periods(monthly, None, on_time, month) == ["2026-09"]
    # The weekly digest the same way: down over three Mondays, three weeks.
    weekly = CronTrigger.from_crontab("0 9 * * mon", timezone=SHANGHAI)
    monday = datetime(2026, 10, 5, 9, 0, tzinfo=SHANGHAI)
    assert due_periods(
        weekly, monday, monday + timedelta(days=22), lambda at: last_week(at, "Asia/Shanghai")
    ) == ["2026-W41", "2026-W42", "2026-W43"]
