"""The monthly cost-split report and the workspace statement, as plain data.

``monthly_report(con, settings, month)`` reads the rollup once (``rollup.spend_rows`` for the
month and the month before, ``period_status``, ``last_ingested_at``) and builds a
``MonthlyReport``: every total is computed here, once, and every displayed part is apportioned
to its displayed total (see ``costsplit.money``), so templates only format. With
``workspace=`` the same report narrows to one workspace: the workspace statement.

Currencies are never added raw. A section is one workspace in one currency (a workspace lives
in one region, so normally one currency; "unattributed" can have two). Amounts are converted to
the reporting currency only with a recorded rate (``settings.exchange_rates``), and the rate,
its date and source are shown; a currency without a rate is named as such.

Template context (for people writing their own templates in ``settings.templates_dir``): the
template gets ``report`` (a ``MonthlyReport``) and ``fmt`` (amount formatter); all fields are
documented on the dataclasses below.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from costsplit.config import Settings
from costsplit.errors import ReportError
from costsplit.money import apportion, percentages, round_total

UNATTRIBUTED = "unattributed"
UNASSIGNED = "unassigned"


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    """One breakdown line (a scenario or a model) of a section."""

    label: str
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost: Decimal  # exact, priced part only
    shown: Decimal  # displayed, apportioned to the section's displayed total
    unpriced_calls: int
    failed_calls: int
    denied_calls: int


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    """One workspace in one currency."""

    anchor: str  # HTML id
    workspace_id: str
    workspace_name: str
    cost_centre: str
    region: str
    currency: str
    total: Decimal  # exact
    shown: Decimal  # displayed, apportioned to the currency's displayed grand total
    previous_shown: Decimal  # last month, rounded
    change: Decimal  # shown - previous_shown
    change_percent: Decimal | None  # None when last month was 0
    share_percent: Decimal  # of the whole (converted) or of the currency when no rate
    calls: int
    failed_calls: int
    denied_calls: int
    unpriced_calls: int
    scenarios: tuple[Line, ...]
    models: tuple[Line, ...]

    @property
    def top_scenario(self) -> Line | None:
        return self.scenarios[0] if self.scenarios else None


@dataclasses.dataclass(frozen=True, slots=True)
class CurrencyTotal:
    currency: str
    total: Decimal  # exact
    shown: Decimal
    previous_shown: Decimal
    adjustments_shown: Decimal  # late events of a closed month carried into this one
    rate: Decimal | None  # to the reporting currency
    rate_date: str
    rate_source: str
    converted_shown: Decimal | None  # shown in the reporting currency; None without a rate


@dataclasses.dataclass(frozen=True, slots=True)
class Chart:
    """Daily spend in one currency (the reporting currency when every amount converts)."""

    currency: str
    days: tuple[date, ...]
    amounts: tuple[Decimal, ...]  # exact per day

    @property
    def peak(self) -> Decimal:
        return max(self.amounts, default=Decimal(0))


@dataclasses.dataclass(frozen=True, slots=True)
class Attention:
    """What a finance reader must see first: money nobody owns and usage nobody priced."""

    unattributed: tuple[tuple[str, Decimal, int], ...]  # (currency, shown, calls)
    unassigned: tuple[tuple[str, Decimal, int], ...]  # (currency, shown, calls) in workspaces
    unpriced_calls: int
    unpriced_tokens: int
    unpriced_models: tuple[str, ...]
    denied_calls: int
    failed_calls: int
    interrupted_calls: int
    estimated_calls: int

    @property
    def any(self) -> bool:
        return bool(
            self.unattributed
            or self.unassigned
            or self.unpriced_calls
            or self.denied_calls
            or self.failed_calls
        )


@dataclasses.dataclass(frozen=True, slots=True)
class MonthlyReport:
    kind: str  # "monthly" or "statement"
    month: str  # YYYY-MM
    month_label: str  # "October 2026"
    timezone: str
    reporting_currency: str
    workspace: str | None  # the statement's workspace id
    closed: bool
    closed_at: str
    adjustments: tuple[tuple[str, Decimal], ...]  # (currency, amount) restated into this month
    last_ingested: str  # "2026-11-01 08:00 CST" or "never"
    generated_at: str
    totals: tuple[CurrencyTotal, ...]
    converted_total: Decimal | None  # sum of the converted parts shown; None if a rate is missing
    missing_rates: tuple[str, ...]
    sections: tuple[Section, ...]
    chart: Chart | None
    charts: tuple[Chart, ...]  # one per currency when there is no single converted chart
    attention: Attention
    calls: int
    workspace_name: str = ""  # the statement's workspace name (also when it spent nothing)

    @property
    def title(self) -> str:
        if self.kind == "statement":
            return f"Workspace statement — {self.workspace_name} — {self.month_label}"
        return f"Model Studio cost split — {self.month_label}"

    @property
    def biggest_scenario(self) -> tuple[Section, Line] | None:
        best = None
        for section in self.sections:
            for line in section.scenarios:
                if best is None or _converted_key(line.cost, section, self) > best[0]:
                    best = (_converted_key(line.cost, section, self), section, line)
        return (best[1], best[2]) if best else None

    def all_charts(self) -> tuple[Chart, ...]:
        return (self.chart,) if self.chart else self.charts


def _converted_key(amount: Decimal, section: Section, report: MonthlyReport) -> Decimal:
    for total in report.totals:
        if total.currency == section.currency and total.rate is not None:
            return amount * total.rate
    return amount


# -- periods ------------------------------------------------------------------------------------


def month_bounds(month: str) -> tuple[date, date]:
    """First day of ``month`` (YYYY-MM) and first day of the next (exclusive end)."""
    try:
        start = datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise ReportError(f"month must be YYYY-MM, got {month!r}") from None
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


def previous_month(month: str) -> str:
    start, _ = month_bounds(month)
    return (start - timedelta(days=1)).strftime("%Y-%m")


def last_month(now: datetime, timezone: str) -> str:
    """The calendar month before ``now`` in ``timezone`` (what a monthly run reports on)."""
    local = now.astimezone(ZoneInfo(timezone)).date().replace(day=1)
    return (local - timedelta(days=1)).strftime("%Y-%m")


# -- the report ----------------------------------------------------------------------------------


def monthly_report(
    con,
    settings: Settings,
    month: str,
    *,
    workspace: str | None = None,
    now: datetime | None = None,
) -> MonthlyReport:
    """Build the monthly report (or, with ``workspace``, that workspace's statement)."""
    from costsplit import rollup

    start, end = month_bounds(month)
    prev_start, _ = month_bounds(previous_month(month))
    rows = rollup.spend_rows(con, settings, start, end, workspace=workspace)
    previous = rollup.spend_rows(con, settings, prev_start, start, workspace=workspace)
    if workspace and not rows and settings.workspace(workspace) is None:
        raise ReportError(
            f"no workspace {workspace!r} in the settings and no spend for it in {month}"
        )
    status = rollup.period_status(con, month)
    ingested = rollup.last_ingested_at(con)
    return build_monthly(
        rows,
        previous,
        settings,
        month,
        workspace=workspace,
        closed=status.closed,
        closed_at=status.closed_at,
        adjustments=status.adjustments_total,
        last_ingested=ingested,
        now=now,
    )


def build_monthly(
    rows: Sequence,
    previous: Sequence,
    settings: Settings,
    month: str,
    *,
    workspace: str | None = None,
    closed: bool = False,
    closed_at: datetime | None = None,
    adjustments: dict[str, Decimal] | None = None,
    last_ingested: datetime | None = None,
    now: datetime | None = None,
) -> MonthlyReport:
    """The report from rollup rows (``SpendRow``): pure, so tests and other callers reuse it."""
    start, end = month_bounds(month)
    tz = ZoneInfo(settings.timezone)
    now = now or datetime.now(UTC)

    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    prev_by_currency: dict[str, Decimal] = defaultdict(Decimal)
    adj_by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        by_currency[row.currency] += row.cost
        if row.is_adjustment:
            adj_by_currency[row.currency] += row.cost
    for row in previous:
        prev_by_currency[row.currency] += row.cost

    totals = []
    missing = []
    for currency in sorted(by_currency, key=lambda c: (c != settings.currency, c)):
        exact = by_currency[currency]
        shown = round_total(exact)
        rate, rate_date, rate_source = exchange_rate(settings, month, currency, settings.currency)
        converted = None
        if currency == settings.currency:
            converted = shown
        elif rate is not None:
            converted = round_total(exact * rate)
        if converted is None:
            missing.append(currency)
        totals.append(
            CurrencyTotal(
                currency=currency,
                total=exact,
                shown=shown,
                previous_shown=round_total(prev_by_currency.get(currency, Decimal(0))),
                adjustments_shown=round_total(adj_by_currency.get(currency, Decimal(0))),
                rate=rate if currency != settings.currency else Decimal(1),
                rate_date=rate_date,
                rate_source=rate_source,
                converted_shown=converted,
            )
        )
    converted_total = None if missing else sum((t.converted_shown for t in totals), Decimal(0))
    rate_of = {t.currency: t.rate for t in totals if t.converted_shown is not None}

    sections = _sections(rows, previous, settings, totals, rate_of, missing)
    chart, charts = _charts(rows, start, end, totals, rate_of, missing, settings.currency)

    return MonthlyReport(
        kind="statement" if workspace else "monthly",
        month=month,
        month_label=start.strftime("%B %Y"),
        timezone=settings.timezone,
        reporting_currency=settings.currency,
        workspace=workspace,
        closed=closed,
        closed_at=_local(closed_at, tz) if closed_at else "",
        adjustments=tuple(sorted((c, round_total(a)) for c, a in (adjustments or {}).items() if a)),
        last_ingested=_local(last_ingested, tz) if last_ingested else "never",
        generated_at=_local(now, tz),
        totals=tuple(totals),
        converted_total=converted_total,
        missing_rates=tuple(missing),
        sections=sections,
        chart=chart,
        charts=charts,
        attention=_attention(rows, sections),
        calls=sum(row.calls for row in rows),
        workspace_name=_workspace_name(settings, workspace, sections) if workspace else "",
    )


def _workspace_name(settings: Settings, workspace: str, sections) -> str:
    if sections:
        return sections[0].workspace_name
    configured = settings.workspace(workspace)
    return configured.name if configured else workspace


def exchange_rate(
    settings: Settings, month: str, currency: str, to: str
) -> tuple[Decimal | None, str, str]:
    """The recorded rate from ``currency`` to ``to`` for ``month``, its date and source.

    The report converts with the very rate it shows (the same rows ``spend.convert`` reads).
    """
    if currency == to:
        return Decimal(1), "", ""
    for rate in settings.exchange_rates:
        if rate.month == month and rate.from_currency == currency and rate.to_currency == to:
            return rate.rate, rate.date, rate.source
    return None, "", ""


def _sections(rows, previous, settings, totals, rate_of, missing) -> tuple[Section, ...]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for row in rows:
        groups[(row.workspace_id, row.currency)].append(row)
    prev_totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in previous:
        prev_totals[(row.workspace_id, row.currency)] += row.cost

    # Displayed section totals are apportioned to each currency's displayed grand total.
    shown_of: dict[tuple[str, str], Decimal] = {}
    for total in totals:
        keys = sorted(k for k in groups if k[1] == total.currency)
        exacts = [sum((r.cost for r in groups[k]), Decimal(0)) for k in keys]
        shown_of.update(zip(keys, apportion(total.shown, exacts), strict=True))

    def weight(key: tuple[str, str]) -> Decimal:
        exact = sum((r.cost for r in groups[key]), Decimal(0))
        return exact * rate_of[key[1]] if not missing else exact

    # Shares: of the converted whole when every currency converts, else within the currency.
    share_of: dict[tuple[str, str], Decimal] = {}
    if not missing:
        keys = sorted(groups)
        share_of.update(zip(keys, percentages([weight(k) for k in keys]), strict=True))
    else:
        for total in totals:
            keys = sorted(k for k in groups if k[1] == total.currency)
            share_of.update(zip(keys, percentages([weight(k) for k in keys]), strict=True))

    sections = []
    for key in sorted(groups, key=lambda k: (-weight(k), k)):
        workspace_id, currency = key
        members = groups[key]
        configured = settings.workspace(workspace_id)
        first = members[0]
        shown = shown_of[key]
        previous_shown = round_total(prev_totals.get(key, Decimal(0)))
        change = shown - previous_shown
        sections.append(
            Section(
                anchor=f"ws-{len(sections) + 1}",
                workspace_id=workspace_id,
                workspace_name=first.workspace_name
                or (configured.name if configured else workspace_id),
                cost_centre=first.cost_centre or (configured.cost_centre if configured else ""),
                region=configured.region if configured else first.region,
                currency=currency,
                total=sum((r.cost for r in members), Decimal(0)),
                shown=shown,
                previous_shown=previous_shown,
                change=change,
                change_percent=(change * 100 / previous_shown).quantize(Decimal("0.1"))
                if previous_shown
                else None,
                share_percent=share_of[key],
                calls=sum(r.calls for r in members),
                failed_calls=sum(r.failed_calls for r in members),
                denied_calls=sum(r.denied_calls for r in members),
                unpriced_calls=sum(r.unpriced_calls for r in members),
                scenarios=_lines(members, shown, lambda r: r.scenario or UNASSIGNED),
                models=_lines(members, shown, lambda r: r.model or "(unknown model)"),
            )
        )
    return tuple(sections)


def _lines(rows: Iterable, shown_total: Decimal, label_of) -> tuple[Line, ...]:
    groups: dict[str, list] = defaultdict(list)
    for row in rows:
        groups[label_of(row)].append(row)
    labels = sorted(groups, key=lambda k: (-sum((r.cost for r in groups[k]), Decimal(0)), k))
    exacts = [sum((r.cost for r in groups[k]), Decimal(0)) for k in labels]
    shown = apportion(shown_total, exacts)
    return tuple(
        Line(
            label=label,
            calls=sum(r.calls for r in groups[label]),
            input_tokens=sum(r.input_tokens for r in groups[label]),
            output_tokens=sum(r.output_tokens for r in groups[label]),
            cached_tokens=sum(r.cached_tokens for r in groups[label]),
            reasoning_tokens=sum(r.reasoning_tokens for r in groups[label]),
            cost=exact,
            shown=part,
            unpriced_calls=sum(r.unpriced_calls for r in groups[label]),
            failed_calls=sum(r.failed_calls for r in groups[label]),
            denied_calls=sum(r.denied_calls for r in groups[label]),
        )
        for label, exact, part in zip(labels, exacts, shown, strict=True)
    )


def _charts(
    rows, start, end, totals, rate_of, missing, reporting
) -> tuple[Chart | None, tuple[Chart, ...]]:
    days = tuple(start + timedelta(days=n) for n in range((end - start).days))
    if not rows:
        return None, ()
    if not missing:
        per_day: dict[date, Decimal] = defaultdict(Decimal)
        for row in rows:
            per_day[row.day] += row.cost * rate_of[row.currency]
        return Chart(reporting, days, tuple(per_day.get(d, Decimal(0)) for d in days)), ()
    charts = []
    for total in totals:
        per_day = defaultdict(Decimal)
        for row in rows:
            if row.currency == total.currency:
                per_day[row.day] += row.cost
        charts.append(Chart(total.currency, days, tuple(per_day.get(d, Decimal(0)) for d in days)))
    return None, tuple(charts)


def _attention(rows, sections: tuple[Section, ...]) -> Attention:
    unattributed: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
    unassigned: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
    for section in sections:
        if section.workspace_id == UNATTRIBUTED:
            unattributed[section.currency][0] += section.shown
            unattributed[section.currency][1] += section.calls
            continue
        for line in section.scenarios:
            if line.label == UNASSIGNED:
                unassigned[section.currency][0] += line.shown
                unassigned[section.currency][1] += line.calls
    return Attention(
        unattributed=tuple((c, v[0], v[1]) for c, v in sorted(unattributed.items())),
        unassigned=tuple((c, v[0], v[1]) for c, v in sorted(unassigned.items())),
        unpriced_calls=sum(r.unpriced_calls for r in rows),
        unpriced_tokens=sum(r.unpriced_tokens for r in rows),
        unpriced_models=tuple(sorted({r.model for r in rows if r.unpriced_calls})),
        denied_calls=sum(r.denied_calls for r in rows),
        failed_calls=sum(r.failed_calls for r in rows),
        interrupted_calls=sum(r.interrupted_calls for r in rows),
        estimated_calls=sum(r.estimated_calls for r in rows),
    )


def _local(moment: datetime, tz: ZoneInfo) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
