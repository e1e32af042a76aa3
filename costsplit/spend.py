"""The engineer's view of spend, and currency conversion for display.

``spend_summary`` ingests what the spool holds and refreshes the rollup when it can (a locked
database or spool is skipped and the numbers are marked possibly stale), then reads
``rollup.spend_rows`` and groups them by day, model, scenario or workspace. Amounts stay in
their own currency; per-currency totals are exact, and a total in the reporting currency is
added only when every currency has a configured rate for its month (the rates are shown).
Currencies are never summed raw.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from costsplit.config import ExchangeRate, Settings
from costsplit.errors import CostsplitError, DatabaseLocked
from costsplit.rollup import SpendRow, exact

GROUPINGS = ("day", "model", "scenario", "workspace")


def exchange_rate(currency: str, to: str, month: str, settings: Settings) -> ExchangeRate | None:
    """The configured rate converting ``currency`` to ``to`` for ``month`` (YYYY-MM), if any."""
    for rate in settings.exchange_rates:
        if (rate.month, rate.from_currency, rate.to_currency) == (month, currency, to):
            return rate
    return None


def convert(
    amount: Decimal, currency: str, to: str, month: str, settings: Settings
) -> Decimal | None:
    """``amount`` in ``to`` at the month's configured rate (exact product); None with no rate."""
    if currency == to:
        return amount
    rate = exchange_rate(currency, to, month, settings)
    return None if rate is None else exact(amount * rate.rate)


@dataclasses.dataclass(frozen=True, slots=True)
class SpendLine:
    key: str
    currency: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    unpriced_calls: int
    unpriced_tokens: int
    adjustment_of: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SpendSummary:
    start: date
    end: date
    by: str
    workspace: str | None
    scenario: str | None
    lines: list[SpendLine]
    totals: dict[str, Decimal]  # per currency, exact
    unpriced_calls: int
    unpriced_tokens: int
    converted: Decimal | None  # total in ``currency`` when every rate is known
    currency: str
    rates: list[ExchangeRate]
    notes: list[str]

    def to_json(self) -> dict:
        """Plain data with exact decimal strings."""
        return {
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "by": self.by,
            "workspace": self.workspace,
            "scenario": self.scenario,
            "lines": [
                {
                    self.by: line.key,
                    "currency": line.currency,
                    "calls": line.calls,
                    "input_tokens": line.input_tokens,
                    "output_tokens": line.output_tokens,
                    "cost": str(line.cost),
                    "unpriced_calls": line.unpriced_calls,
                    "unpriced_tokens": line.unpriced_tokens,
                    "adjustment_of": line.adjustment_of,
                }
                for line in self.lines
            ],
            "totals": {cur: str(total) for cur, total in self.totals.items()},
            "unpriced": {"calls": self.unpriced_calls, "tokens": self.unpriced_tokens},
            "converted": None
            if self.converted is None
            else {
                "currency": self.currency,
                "total": str(self.converted),
                "rates": [
                    {
                        "month": r.month,
                        "from": r.from_currency,
                        "to": r.to_currency,
                        "rate": str(r.rate),
                        "date": r.date,
                        "source": r.source,
                    }
                    for r in self.rates
                ],
            },
            "notes": self.notes,
        }


def summarise(
    rows: Iterable[SpendRow],
    settings: Settings,
    *,
    start: date,
    end: date,
    by: str = "model",
    workspace: str | None = None,
    scenario: str | None = None,
    notes: list[str] | None = None,
) -> SpendSummary:
    """Group ``rows`` by ``by`` (and currency; adjustments apart) with exact totals."""
    if by not in GROUPINGS:
        raise CostsplitError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    groups: dict[tuple[str, str, str], list[int | Decimal]] = {}
    totals: dict[str, Decimal] = {}
    by_month: dict[tuple[str, str], Decimal] = {}
    for row in rows:
        key = {"day": row.day.isoformat(), "model": row.model, "scenario": row.scenario,
               "workspace": row.workspace_id}[by]  # fmt: skip
        acc = groups.setdefault((key, row.currency, row.adjustment_of), [0, 0, 0, Decimal(0), 0, 0])
        for i, value in enumerate((row.calls, row.input_tokens, row.output_tokens, row.cost,
                                   row.unpriced_calls, row.unpriced_tokens)):  # fmt: skip
            acc[i] += value
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.cost
        month = row.day.strftime("%Y-%m")
        by_month[(month, row.currency)] = by_month.get((month, row.currency), Decimal(0)) + row.cost
    lines = [
        SpendLine(key, cur, int(a[0]), int(a[1]), int(a[2]), exact(a[3]), int(a[4]), int(a[5]), adj)
        for (key, cur, adj), a in sorted(groups.items())
    ]
    converted: Decimal | None = Decimal(0)
    used: list[ExchangeRate] = []
    notes = list(notes or [])
    for (month, cur), amount in sorted(by_month.items()):
        value = convert(amount, cur, settings.currency, month, settings)
        if value is None:
            converted = None
            notes.append(f"no exchange rate {cur}->{settings.currency} for {month}: not converted")
            continue
        if cur != settings.currency:
            used.append(exchange_rate(cur, settings.currency, month, settings))  # type: ignore[arg-type]
        if converted is not None:
            converted += value
    return SpendSummary(
        start=start,
        end=end,
        by=by,
        workspace=workspace,
        scenario=scenario,
        lines=lines,
        totals={cur: exact(total) for cur, total in sorted(totals.items())},
        unpriced_calls=sum(line.unpriced_calls for line in lines),
        unpriced_tokens=sum(line.unpriced_tokens for line in lines),
        converted=None if converted is None else exact(converted),
        currency=settings.currency,
        rates=used,
        notes=notes,
    )


def period(
    month: str | None,
    since: date | None,
    until: date | None,
    settings: Settings,
    now: datetime | None = None,
) -> tuple[date, date]:
    """[start, end) days from ``--month`` or ``--since/--until`` (default: this month)."""
    if month and (since or until):
        raise CostsplitError("give either --month or --since/--until, not both")
    if month:
        try:
            first = date.fromisoformat(f"{month}-01")
        except ValueError:
            raise CostsplitError(f"--month must be YYYY-MM, got {month!r}") from None
        return first, date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    today = (
        (now or datetime.now(ZoneInfo(settings.timezone)))
        .astimezone(ZoneInfo(settings.timezone))
        .date()
    )
    start = since or today.replace(day=1)
    end = until or date.fromordinal(today.toordinal() + 1)
    if end <= start:
        raise CostsplitError(f"--until ({end}) must be after --since ({start})")
    return start, end


def spend_summary(
    settings: Settings,
    start: date,
    end: date,
    *,
    by: str = "model",
    workspace: str | None = None,
    scenario: str | None = None,
    ingest: bool = True,
) -> SpendSummary:
    """Ingest and roll up when possible, then summarise the spend of [start, end)."""
    from costsplit import rollup, store

    notes = []
    if ingest and _spool_has_segments(settings):
        try:
            from costsplit.ingest import ingest_spool

            ingest_spool(settings, lock_timeout=0.5)
        except DatabaseLocked:
            notes.append("database busy: spool not ingested, numbers may be stale")
    with store.connect(settings.database, lock_timeout=2.0) as con:
        rollup.refresh(con, settings)
        rows = rollup.spend_rows(con, settings, start, end, workspace=workspace, scenario=scenario)
    return summarise(rows, settings, start=start, end=end, by=by, workspace=workspace,
                     scenario=scenario, notes=notes)  # fmt: skip


def _spool_has_segments(settings: Settings) -> bool:
    try:
        with os.scandir(settings.spool_dir) as entries:
            return any(e.name.endswith(".jsonl") for e in entries)
    except OSError:
        return False


def render(summary: SpendSummary) -> None:
    """Print ``summary`` as a table (rich), totals per currency and the unpriced usage."""
    from rich.console import Console
    from rich.table import Table

    scope = " ".join(
        part for part in (
            f"workspace {summary.workspace}" if summary.workspace else "",
            f"scenario {summary.scenario}" if summary.scenario else "",
        ) if part
    )  # fmt: skip
    title = f"Spend {summary.start} to {summary.end} (end exclusive) by {summary.by}"
    table = Table(title=f"{title}{' — ' + scope if scope else ''}")
    table.add_column(summary.by)
    table.add_column("currency")
    for name in ("calls", "input tokens", "output tokens", "cost", "unpriced tokens"):
        table.add_column(name, justify="right")
    for line in summary.lines:
        key = f"{line.key} (adjustment of {line.adjustment_of})" if line.adjustment_of else line.key
        table.add_row(key, line.currency, f"{line.calls:,}", f"{line.input_tokens:,}",
                      f"{line.output_tokens:,}", str(line.cost),
                      f"{line.unpriced_tokens:,}" if line.unpriced_tokens else "")  # fmt: skip
    console = Console()
    console.print(table)
    for cur, total in summary.totals.items():
        console.print(f"total {cur}: {total}")
    if summary.converted is not None and summary.rates:
        rates = ", ".join(
            f"{r.from_currency}->{r.to_currency} {r.rate} ({r.month}"
            + (f", {r.source})" if r.source else ")")
            for r in summary.rates
        )
        console.print(f"total in {summary.currency}: {summary.converted} at {rates}")
    if summary.unpriced_tokens or summary.unpriced_calls:
        console.print(
            f"[bold red]UNPRICED: {summary.unpriced_calls:,} calls, "
            f"{summary.unpriced_tokens:,} tokens have no price in the price book "
            "(not counted as zero; add a price row)[/]"
        )
    for note in summary.notes:
        console.print(f"note: {note}")
