"""The weekly scenario digest and budget use, as plain data.

``weekly_digest(con, settings, week)`` compares an ISO week (Monday to Sunday in the reporting
timezone) with the week before, per scenario, with its top models (``scenarios=`` narrows it
to some (workspace, scenario) pairs: the digest an owner gets of their own scenarios); where a
scenario has a ``monthly_budget`` it shows the month-to-date spend, the share of the budget
used and a month-end projection (month-to-date spend per elapsed day × days in the month).
``budget_uses(con, settings, today)`` is the same budget arithmetic for the scheduler's alerts.

Displayed amounts follow ``costsplit.money``: each currency's weekly total is rounded once and
the scenario lines are apportioned to it.
"""

from __future__ import annotations

import calendar
import dataclasses
from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from costsplit.config import Scenario, Settings
from costsplit.errors import ReportError
from costsplit.money import apportion, round_total
from costsplit.report import UNASSIGNED, exchange_rate


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetUse:
    scenario: str
    workspace_id: str
    owners: tuple[str, ...]
    month: str
    currency: str
    budget: Decimal
    spent: Decimal  # month to date, in the budget currency (exact)
    projected: Decimal  # at month end, same currency (exact)
    spent_percent: Decimal
    projected_percent: Decimal
    unconverted: tuple[str, ...]  # currencies spent without a rate to the budget currency

    @property
    def spent_shown(self) -> Decimal:
        return round_total(self.spent)

    @property
    def projected_shown(self) -> Decimal:
        return round_total(self.projected)


@dataclasses.dataclass(frozen=True, slots=True)
class DigestLine:
    workspace_id: str
    workspace_name: str
    scenario: str
    currency: str
    this_week: Decimal  # exact
    shown: Decimal
    last_shown: Decimal
    change: Decimal
    change_percent: Decimal | None
    calls: int
    failed_calls: int
    top_models: tuple[tuple[str, Decimal, int], ...]  # (model, rounded cost, calls), top 3
    budget: BudgetUse | None


@dataclasses.dataclass(frozen=True, slots=True)
class Digest:
    week: str  # 2026-W44
    start: date
    end: date  # exclusive
    timezone: str
    generated_at: str
    last_ingested: str
    totals: tuple[tuple[str, Decimal, Decimal], ...]  # (currency, this week shown, last week shown)
    lines: tuple[DigestLine, ...]
    scope: tuple[str, ...] = ()  # scenario names when narrowed to some scenarios

    @property
    def title(self) -> str:
        last = self.end - timedelta(days=1)
        scope = f" — {', '.join(self.scope)}" if self.scope else ""
        return f"Scenario digest{scope} — {self.week} ({self.start:%d %b} – {last:%d %b %Y})"


def week_bounds(week: str) -> tuple[date, date]:
    """Monday of ISO ``week`` (YYYY-Www) and the Monday after."""
    try:
        start = datetime.strptime(week + "-1", "%G-W%V-%u").date()
    except ValueError:
        raise ReportError(f"week must be YYYY-Www (ISO week), got {week!r}") from None
    return start, start + timedelta(days=7)


def last_week(now: datetime, timezone: str) -> str:
    """The last complete ISO week before ``now`` in ``timezone``."""
    local = now.astimezone(ZoneInfo(timezone)).date()
    previous = local - timedelta(days=local.weekday() + 7)
    year, number, _ = previous.isocalendar()
    return f"{year}-W{number:02d}"


def weekly_digest(
    con,
    settings: Settings,
    week: str,
    *,
    now: datetime | None = None,
    scenarios: Collection[tuple[str, str]] | None = None,
) -> Digest:
    """The digest for ISO ``week``: this week against last, top models, budget use; only the
    (workspace id, scenario) pairs in ``scenarios`` when given."""
    from costsplit import rollup

    start, end = week_bounds(week)
    rows = rollup.spend_rows(con, settings, start, end)
    previous = rollup.spend_rows(con, settings, start - timedelta(days=7), start)
    if scenarios is not None:
        wanted = set(scenarios)
        rows = [r for r in rows if (r.workspace_id, r.scenario or UNASSIGNED) in wanted]
        previous = [r for r in previous if (r.workspace_id, r.scenario or UNASSIGNED) in wanted]
    as_of = end - timedelta(days=1)
    budgets = {(b.workspace_id, b.scenario): b for b in budget_uses(con, settings, as_of)}
    tz = ZoneInfo(settings.timezone)
    ingested = rollup.last_ingested_at(con)

    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    for row in rows:
        groups[(row.workspace_id, row.scenario or UNASSIGNED, row.currency)].append(row)
    last: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for row in previous:
        last[(row.workspace_id, row.scenario or UNASSIGNED, row.currency)] += row.cost
    for key in last:
        groups.setdefault(key, [])

    exact = {key: sum((r.cost for r in members), Decimal(0)) for key, members in groups.items()}
    currencies = sorted({key[2] for key in groups}, key=lambda c: (c != settings.currency, c))
    shown: dict[tuple[str, str, str], Decimal] = {}
    totals = []
    for currency in currencies:
        keys = sorted(k for k in groups if k[2] == currency)
        total = round_total(sum((exact[k] for k in keys), Decimal(0)))
        shown.update(zip(keys, apportion(total, [exact[k] for k in keys]), strict=True))
        last_total = round_total(sum((last[k] for k in keys), Decimal(0)))
        totals.append((currency, total, last_total))

    lines = []
    for key in sorted(groups, key=lambda k: (k[2] != settings.currency, -exact[k], k)):
        workspace_id, scenario, currency = key
        members = groups[key]
        models: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
        for row in members:
            models[row.model][0] += row.cost
            models[row.model][1] += row.calls
        top = sorted(models.items(), key=lambda item: (-item[1][0], item[0]))[:3]
        last_shown = round_total(last.get(key, Decimal(0)))
        change = shown[key] - last_shown
        configured = settings.workspace(workspace_id)
        lines.append(
            DigestLine(
                workspace_id=workspace_id,
                workspace_name=members[0].workspace_name
                if members
                else (configured.name if configured else workspace_id),
                scenario=scenario,
                currency=currency,
                this_week=exact[key],
                shown=shown[key],
                last_shown=last_shown,
                change=change,
                change_percent=(change * 100 / last_shown).quantize(Decimal("0.1"))
                if last_shown
                else None,
                calls=sum(r.calls for r in members),
                failed_calls=sum(r.failed_calls for r in members),
                top_models=tuple((m, round_total(v[0]), v[1]) for m, v in top),
                budget=budgets.get((workspace_id, scenario)),
            )
        )
    return Digest(
        week=week,
        start=start,
        end=end,
        timezone=settings.timezone,
        generated_at=(now or datetime.now(UTC)).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
        last_ingested=ingested.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
        if ingested
        else "never",
        totals=tuple(totals),
        lines=tuple(lines),
        scope=tuple(sorted({name for _, name in scenarios})) if scenarios is not None else (),
    )


def budget_uses(con, settings: Settings, today: date) -> list[BudgetUse]:
    """Month-to-date use of every scenario budget, as of ``today`` (included) in its month."""
    from costsplit import rollup

    budgeted = [s for s in settings.scenarios if s.monthly_budget is not None]
    if not budgeted:
        return []
    start = today.replace(day=1)
    month = start.strftime("%Y-%m")
    days_in_month = calendar.monthrange(start.year, start.month)[1]
    elapsed = (today - start).days + 1
    uses = []
    for scenario in budgeted:
        rows = rollup.spend_rows(
            con,
            settings,
            start,
            today + timedelta(days=1),
            workspace=scenario.workspace,
            scenario=scenario.name,
        )
        uses.append(_use(scenario, rows, month, elapsed, days_in_month, settings))
    return uses


def _use(scenario: Scenario, rows, month, elapsed, days_in_month, settings) -> BudgetUse:
    spent = Decimal(0)
    unconverted = set()
    for row in rows:
        if row.currency == scenario.budget_currency:
            spent += row.cost
            continue
        rate, _, _ = exchange_rate(settings, month, row.currency, scenario.budget_currency)
        if rate is None:
            unconverted.add(row.currency)
        else:
            spent += row.cost * rate
    projected = spent * days_in_month / elapsed
    budget = scenario.monthly_budget or Decimal(0)
    return BudgetUse(
        scenario=scenario.name,
        workspace_id=scenario.workspace,
        owners=scenario.owners,
        month=month,
        currency=scenario.budget_currency,
        budget=budget,
        spent=spent,
        projected=projected,
        spent_percent=(spent * 100 / budget).quantize(Decimal("0.1")) if budget else Decimal(0),
        projected_percent=(projected * 100 / budget).quantize(Decimal("0.1"))
        if budget
        else Decimal(0),
        unconverted=tuple(sorted(unconverted)),
    )
