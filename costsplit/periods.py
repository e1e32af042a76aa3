"""Periods: close a month into a frozen snapshot, and show what a price-book change moves.

``close_month`` brings the rollup up to date, then, in one transaction (one snapshot of the
events), makes sure the month's rows hold every event of the month visible then, moves them
(and the adjustment rows carried into the month) into ``closed_spend``, and records in
``close_coverage`` the ingest batches (``ingested_at``) of the events it froze; ``closed_at``
is the rollup watermark. Later runs never rewrite a closed month: any of its events outside
those batches, however late its transaction committed, becomes an adjustment row in the first
month still open after it (``rollup.refresh``).

``reprice`` prices the open days since a date with the current books and settings and compares
them with the stored rollup, per workspace and currency; unless it is a dry run it then
refreshes, which re-derives every open period (closed months stay as they were).
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb

from costsplit.config import Settings
from costsplit.errors import CostsplitError
from costsplit.prices import PriceBook, load_price_book
from costsplit.pricing import prepare, priced_select, ts
from costsplit.rollup import (
    PeriodStatus,
    day_bounds,
    exact,
    first_open_after,
    folded,
    month_bounds,
    period_status,
    rebuild_adjustments,
    refresh,
    settings_hash,
    uncovered,
)


@dataclasses.dataclass(frozen=True, slots=True)
class RepriceLine:
    """What re-pricing moves for one workspace in one currency."""

    workspace_id: str
    currency: str
    before: Decimal
    after: Decimal
    unpriced_tokens_before: int
    unpriced_tokens_after: int

    @property
    def delta(self) -> Decimal:
        return exact(self.after - self.before)


@dataclasses.dataclass(frozen=True, slots=True)
class RepriceResult:
    since: date
    lines: list[RepriceLine]
    closed_months: list[str]  # closed months at or after ``since``: frozen, not re-priced
    applied: bool


def close_month(
    con: duckdb.DuckDBPyConnection, settings: Settings, month: str, *, book: PriceBook | None = None
) -> PeriodStatus:
    """Freeze ``month`` (YYYY-MM): later rollups never rewrite it. Raises if already closed."""
    _check_month(month)
    existing = period_status(con, month)
    if existing.closed:
        raise CostsplitError(
            f"{month} is already closed (at {existing.closed_at:%Y-%m-%d %H:%M} UTC)"
        )
    book = book or load_price_book(settings.price_books)
    refresh(con, settings, book=book)
    first, nxt = _month_days(month)
    tz = ZoneInfo(settings.timezone)
    watermark = con.execute("SELECT value FROM rollup_state WHERE key = 'watermark'").fetchone()
    closed_at = (
        datetime.fromisoformat(watermark[0])
        if watermark
        else datetime.fromisoformat("0001-01-01T00:00:00+00:00")
    )
    con.execute("BEGIN TRANSACTION")
    try:
        # One snapshot: what is frozen and what is recorded as frozen are the same events,
        # even if an ingest committed since the refresh above.
        closed = dict(con.execute("SELECT month, closed_at FROM period_close").fetchall())
        lo, hi = month_bounds(month, tz)
        own = f"started_at >= {ts(lo)} AND started_at < {ts(hi)}"
        counted = con.execute(f"SELECT count(*) FROM events WHERE {own}").fetchone()[0]
        rolled = con.execute(
            "SELECT coalesce(sum(calls), 0) FROM daily_spend "
            "WHERE NOT is_adjustment AND day >= ? AND day < ?",
            [first, nxt],
        ).fetchone()[0]
        plan = prepare(con, settings, book, settings_hash(settings, book.digest))
        if counted != rolled:
            con.execute(
                "DELETE FROM daily_spend WHERE NOT is_adjustment AND day >= ? AND day < ?",
                [first, nxt],
            )
            con.execute(f"INSERT INTO daily_spend {priced_select(plan, own, tz)}")
        sources = [m for m in sorted(closed) if first_open_after(m, closed) == month]
        if sources:
            rebuild_adjustments(con, plan, closed, tz)
        for event_month, where in [(month, own), *((m, uncovered(m, tz)) for m in sources)]:
            con.execute(
                f"""INSERT INTO close_coverage SELECT ?, ?, ingested_at, count(*) FROM events
                    WHERE {where} GROUP BY ingested_at""",
                [month, event_month],
            )
        con.execute(  # one row per key in the snapshot (daily_spend may hold appended rows)
            f"INSERT INTO closed_spend BY NAME {folded('daily_spend', 'day >= ? AND day < ?')}",
            [first, nxt],
        )
        con.execute("DELETE FROM daily_spend WHERE day >= ? AND day < ?", [first, nxt])
        con.execute(
            "INSERT INTO period_close VALUES "
            "(?, ?, (SELECT value FROM rollup_state WHERE key = 'settings_hash'))",
            [month, closed_at],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return period_status(con, month)


def reprice(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    since: date,
    *,
    dry_run: bool = False,
    book: PriceBook | None = None,
) -> RepriceResult:
    """Per workspace and currency: the open days' cost since ``since`` now vs as rolled up."""
    book = book or load_price_book(settings.price_books)
    tz = ZoneInfo(settings.timezone)
    closed = sorted(m for (m,) in con.execute("SELECT month FROM period_close").fetchall())
    exclude = (
        " OR ".join(
            f"(started_at >= {ts(lo)} AND started_at < {ts(hi)})"
            for lo, hi in (month_bounds(m, tz) for m in closed)
        )
        or "false"
    )
    plan = prepare(con, settings, book, settings_hash(settings, book.digest))
    # Compare only events the stored rollup has seen, so new events do not show as a change.
    state = con.execute("SELECT value FROM rollup_state WHERE key = 'watermark'").fetchone()
    seen = f"ingested_at <= {ts(datetime.fromisoformat(state[0]))}" if state else "false"
    where = f"started_at >= {ts(day_bounds(since, tz)[0])} AND NOT ({exclude}) AND {seen}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_reprice AS {priced_select(plan, where, tz)}")
    rows = con.execute(
        """
        WITH after AS (SELECT workspace_id, currency, sum(cost) AS cost,
                              sum(unpriced_tokens) AS unpriced
                       FROM _cs_reprice GROUP BY ALL),
             before AS (SELECT workspace_id, currency, sum(cost) AS cost,
                               sum(unpriced_tokens) AS unpriced
                        FROM daily_spend WHERE NOT is_adjustment AND day >= ? GROUP BY ALL)
        SELECT coalesce(a.workspace_id, b.workspace_id), coalesce(a.currency, b.currency),
               coalesce(b.cost, 0), coalesce(a.cost, 0),
               coalesce(b.unpriced, 0), coalesce(a.unpriced, 0)
        FROM after a FULL JOIN before b
          ON a.workspace_id = b.workspace_id AND a.currency = b.currency
        ORDER BY 1, 2
        """,
        [since],
    ).fetchall()
    lines = [RepriceLine(w, c, exact(b), exact(a), int(ub), int(ua)) for w, c, b, a, ub, ua in rows]
    if not dry_run:
        refresh(con, settings, book=book)
    return RepriceResult(
        since, lines, [m for m in closed if m >= since.strftime("%Y-%m")], not dry_run
    )


def _check_month(month: str) -> None:
    try:
        date.fromisoformat(f"{month}-01")
    except ValueError:
        raise CostsplitError(f"month must be YYYY-MM, got {month!r}") from None


def _month_days(month: str) -> tuple[date, date]:
    first = date.fromisoformat(f"{month}-01")
    return first, date(first.year + (first.month == 12), first.month % 12 + 1, 1)
