"""What the scheduler and ``costsplit report`` do: write report files and send them.

``write_monthly`` / ``write_digest`` build a report once and write it in the asked formats to a
folder (``settings.reports_out / <period>/`` by default) so finance can pull files.
``send_monthly`` writes the files and mails the report to the finance recipients (with the CSV
attached) and each workspace statement to that workspace's owners; ``send_digest`` mails
each scenario owner the weekly digest of their own scenarios; ``send_budget_alerts`` mails a
scenario's owners once per threshold (80 %, 100 %, actual or projected) per month. All sending
goes through ``deliver.deliver`` and its sent-ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

from costsplit.config import Settings
from costsplit.deliver import Delivery, deliver
from costsplit.errors import ReportError
from costsplit.render import (
    email_message,
    message_id,
    monthly_csv,
    report_html,
    report_text,
    write_files,
)
from costsplit.store import connect

FORMATS = ("html", "csv", "email", "text")
BUDGET_THRESHOLDS = (80, 100)


def write_monthly(
    settings: Settings,
    month: str,
    *,
    formats: Iterable[str] = ("html", "csv", "email"),
    out: Path | None = None,
    workspace: str | None = None,
    now: datetime | None = None,
) -> list[Path]:
    """Write the monthly report (or one workspace's statement) as files; return their paths."""
    from costsplit import rollup
    from costsplit.report import month_bounds, monthly_report

    formats = _check(formats)
    now = now or datetime.now(UTC)
    with connect(settings.database) as con:
        report = monthly_report(con, settings, month, workspace=workspace, now=now)
        start, end = month_bounds(month)
        rows = (
            rollup.spend_rows(con, settings, start, end, workspace=workspace)
            if "csv" in formats or "email" in formats
            else []
        )
    stem = f"statement-{_safe(workspace)}-{month}" if workspace else f"costsplit-{month}"
    files: dict[str, str | bytes] = {}
    if "html" in formats:
        files[f"{stem}.html"] = report_html(settings, report)
    if "text" in formats:
        files[f"{stem}.txt"] = report_text(settings, report)
    csv_text = monthly_csv(rows, month) if rows or "csv" in formats else ""
    if "csv" in formats:
        files[f"{stem}.csv"] = csv_text
    if "email" in formats:
        recipient = ", ".join(settings.schedules.finance_recipients) or "finance@localhost"
        message = email_message(
            settings, report, report_name=stem, period=month, recipient=recipient, when=now
        )
        message.add_attachment(
            csv_text.encode(), maintype="text", subtype="csv", filename=f"{stem}.csv"
        )
        files[f"{stem}.eml"] = bytes(message)
    return write_files(out or settings.reports_out / month, files)


def write_digest(
    settings: Settings,
    week: str,
    *,
    formats: Iterable[str] = ("html",),
    out: Path | None = None,
    now: datetime | None = None,
) -> list[Path]:
    """Write the weekly scenario digest as files; return their paths."""
    from costsplit.digest import weekly_digest

    formats = _check(formats)
    now = now or datetime.now(UTC)
    with connect(settings.database) as con:
        digest = weekly_digest(con, settings, week, now=now)
    stem = f"digest-{week}"
    files: dict[str, str | bytes] = {}
    if "html" in formats:
        files[f"{stem}.html"] = report_html(settings, digest)
    if "text" in formats or "csv" in formats:
        files[f"{stem}.txt"] = report_text(settings, digest)
    if "email" in formats:
        recipient = ", ".join(_scenario_owners(settings)) or "engineering@localhost"
        files[f"{stem}.eml"] = bytes(
            email_message(
                settings, digest, report_name="digest", period=week, recipient=recipient, when=now
            )
        )
    return write_files(out or settings.reports_out / week, files)


def send_monthly(
    settings: Settings,
    month: str,
    *,
    now: datetime,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Write the month's files, mail the report to finance and statements to workspace owners."""
    from costsplit import rollup
    from costsplit.report import month_bounds, monthly_report

    write_monthly(settings, month, now=now)
    start, end = month_bounds(month)
    with connect(settings.database) as con:
        report = monthly_report(con, settings, month, now=now)
        csv_text = monthly_csv(rollup.spend_rows(con, settings, start, end), month)
        statements = {
            w.id: monthly_report(con, settings, month, workspace=w.id, now=now)
            for w in settings.workspaces
            if w.owners
        }

    def finance_message(recipient: str) -> EmailMessage:
        message = email_message(
            settings, report, report_name="monthly", period=month, recipient=recipient, when=now
        )
        message.add_attachment(
            csv_text.encode(), maintype="text", subtype="csv", filename=f"costsplit-{month}.csv"
        )
        return message

    results = deliver(
        settings,
        report="monthly",
        period=month,
        recipients=settings.schedules.finance_recipients,
        message_for=finance_message,
        environ=environ,
        sleep=sleep,
    )
    for workspace in settings.workspaces:
        if workspace.id not in statements:
            continue
        name = f"statement:{workspace.id}"
        statement = statements[workspace.id]
        results += deliver(
            settings,
            report=name,
            period=month,
            recipients=workspace.owners,
            message_for=lambda r, s=statement, n=name: email_message(
                settings, s, report_name=n, period=month, recipient=r, when=now
            ),
            environ=environ,
            sleep=sleep,
        )
    return results


def send_digest(
    settings: Settings,
    week: str,
    *,
    now: datetime,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Mail each scenario owner the weekly digest of the scenarios they own."""
    from costsplit.digest import weekly_digest

    owned: dict[str, set[tuple[str, str]]] = {}
    for scenario in settings.scenarios:
        for owner in scenario.owners:
            owned.setdefault(owner, set()).add((scenario.workspace, scenario.name))
    if not owned:
        return []
    with connect(settings.database) as con:
        digests = {
            owner: weekly_digest(con, settings, week, now=now, scenarios=pairs)
            for owner, pairs in owned.items()
        }
    return deliver(
        settings,
        report="digest",
        period=week,
        recipients=list(owned),
        message_for=lambda r: email_message(
            settings, digests[r], report_name="digest", period=week, recipient=r, when=now
        ),
        environ=environ,
        sleep=sleep,
    )


def send_budget_alerts(
    settings: Settings,
    *,
    now: datetime,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Mail a scenario's owners when its month crosses 80 % or 100 % of budget (actual or
    projected), once per threshold per month."""
    from zoneinfo import ZoneInfo

    from costsplit.digest import budget_uses

    today = now.astimezone(ZoneInfo(settings.timezone)).date()
    with connect(settings.database) as con:
        uses = budget_uses(con, settings, today)
    results: list[Delivery] = []
    for use in uses:
        for threshold in BUDGET_THRESHOLDS:
            if max(use.spent_percent, use.projected_percent) < threshold:
                continue
            name = f"budget:{use.workspace_id}/{use.scenario}:{threshold}"

            def message_for(
                recipient: str, use=use, threshold=threshold, name=name
            ) -> EmailMessage:
                message = EmailMessage()
                actual = use.spent_percent >= threshold
                verb = "reached" if actual else "projected to reach"
                message["Subject"] = f"Budget {verb} {threshold}%: {use.scenario} ({use.month})"
                message["From"] = formataddr(("costsplit", settings.smtp.sender))
                message["To"] = recipient
                message["Date"] = format_datetime(now)
                message["Message-ID"] = message_id(name, use.month, recipient, settings.smtp.sender)
                message.set_content(
                    f"Scenario {use.scenario} in workspace {use.workspace_id} has spent "
                    f"{use.currency} {use.spent_shown:,.2f} of its {use.currency} "
                    f"{use.budget:,.2f} budget for {use.month} ({use.spent_percent}%).\n"
                    f"At this pace it will spend {use.currency} {use.projected_shown:,.2f} "
                    f"({use.projected_percent}%) by month end.\n"
                )
                return message

            results += deliver(
                settings,
                report=name,
                period=use.month,
                recipients=use.owners,
                message_for=message_for,
                environ=environ,
                sleep=sleep,
            )
    return results


def _scenario_owners(settings: Settings) -> list[str]:
    return list(dict.fromkeys(owner for s in settings.scenarios for owner in s.owners))


def _check(formats: Iterable[str]) -> tuple[str, ...]:
    formats = tuple(formats)
    for name in formats:
        if name not in FORMATS:
            raise ReportError(f"unknown format {name!r} (known: {', '.join(FORMATS)})")
    return formats


def _safe(name: str | None) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name or "")
