"""Rollup: price every call in SQL and keep ``daily_spend`` per day × workspace × scenario × model.

Attribution happens here, not at recording: the key fingerprint's configured workspace, else the
observed workspace, else ``unattributed``; the event's scenario, else the workspace's default,
else ``unassigned``; the event's region, else the workspace's region. A call is priced by the
price row in force at its time for its region and the model name as requested
(``costsplit.prices``); a call with no such row is *unpriced*: counted, never costed as zero.

``refresh`` is incremental and idempotent. It prices the events whose ``ingested_at`` is newer
than its watermark (the newest ``ingested_at`` the previous refresh saw) and appends their rows
to ``daily_spend``; every open day when the settings or price books changed (a hash of them is
kept in ``rollup_state``). Days of closed months are never rewritten: their late events become
adjustment rows in the first month still open after them (see ``costsplit.periods``).

Appended rows. Every column of a spend row is a sum, so ``daily_spend`` may hold several rows
of one key and every reader sums them (``folded``). Appending costs one INSERT per refresh;
adding into the stored rows in place cost a MERGE more (about a third of an incremental
refresh). Once ``FOLD_AFTER_ROWS`` rows were appended, a refresh folds the table back to one
row per key (about 20 ms CPU for a month of ten million events, once per hundred or so
refreshes of 10,000 events), so reads stay as cheap as before.

Late commits. ``ingested_at`` is the *start* of the ingest transaction, so a transaction that
began before a refresh and committed after it carries an ``ingested_at`` at or below that
refresh's watermark and is not in the next refresh's new events. A refresh sees one by
counting: the events are the previous refresh's count plus those newer than its watermark,
unless a late commit landed (events are never deleted). Only then do two checks run:
  * the margin (``LATE_COMMIT_MARGIN``, 5 minutes): the next refresh re-counts every open day
    holding an event ingested less than 5 minutes before its watermark and recomputes a day
    whose event count differs from its rolled-up calls. This catches cheaply any transaction
    that committed within 5 minutes of starting;
  * the total: when the events outnumber (or are outnumbered by) the rolled-up calls, the
    refresh counts the events of every open day and recomputes the days that differ. This
    catches a slower transaction, at the cost of one count per day over the open events.
So an event is never lost from the open months; it is counted from the first refresh after
its commit, like any new event. For closed months, each close records the ingest batches it
froze (``close_coverage``) and events of that month in no recorded batch become adjustments,
whenever they committed. One case stays open: two ingest transactions that start in the same
microsecond share an ``ingested_at``, and if only one of them was frozen by a close the other's
events of that month are taken as frozen too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb

from costsplit.config import Settings
from costsplit.prices import PriceBook, book_digest, load_price_book
from costsplit.pricing import PricingPlan, day_expr, prepare, priced_select, ts

# A refresh re-counts the days of events ingested this long before its watermark (see above).
LATE_COMMIT_MARGIN = timedelta(minutes=5)

_SPEND_FIELDS = (
    "calls",
    "ok_calls",
    "failed_calls",
    "denied_calls",
    "interrupted_calls",
    "estimated_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "image_tokens",
    "audio_tokens",
    "video_tokens",
)
_KEYS = ("day", "workspace_id", "scenario", "model", "region", "currency", "is_adjustment",
         "adjustment_of")  # fmt: skip
_SUMS = (*_SPEND_FIELDS, "cost", "unpriced_calls", "unpriced_tokens")
# Rows an incremental refresh may append before the next one folds the table (see above).
FOLD_AFTER_ROWS = 20_000


@dataclasses.dataclass(frozen=True, slots=True)
class SpendRow:
    """One day × workspace × scenario × model × region × currency of spend, attribution resolved."""

    day: date
    workspace_id: str
    workspace_name: str
    cost_centre: str
    scenario: str
    model: str
    region: str
    currency: str
    calls: int
    ok_calls: int
    failed_calls: int
    denied_calls: int
    interrupted_calls: int
    estimated_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    image_tokens: int
    audio_tokens: int
    video_tokens: int
    cost: Decimal  # the priced part only
    unpriced_calls: int
    unpriced_tokens: int
    is_adjustment: bool = False  # late events of a closed month carried into this month
    adjustment_of: str = ""  # "YYYY-MM" of the closed month


@dataclasses.dataclass(frozen=True, slots=True)
class RollupResult:
    """What a refresh did: days recomputed, whether all open days were, adjustment rows."""

    days: int
    full: bool
    rows: int
    adjustments: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodStatus:
    """A month's close state; ``adjustments_total`` is carried INTO it from closed months."""

    month: str
    closed: bool
    closed_at: datetime | None
    adjustments_total: dict[str, Decimal]


# --- reading ------------------------------------------------------------------------------


def spend_rows(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    start: date,
    end: date,
    *,
    workspace: str | None = None,
    scenario: str | None = None,
) -> list[SpendRow]:
    """Spend rows for days ``start`` ≤ day < ``end`` (reporting timezone), closed months frozen."""
    where, params = ["day >= ? AND day < ?"], [start, end]
    if workspace is not None:
        where.append("workspace_id = ?")
        params.append(workspace)
    if scenario is not None:
        where.append("scenario = ?")
        params.append(scenario)
    fields = ", ".join(_SPEND_FIELDS)
    sql = f"""
        SELECT day, workspace_id, scenario, model, region, currency, is_adjustment,
               adjustment_of, {fields}, cost, unpriced_calls, unpriced_tokens
        FROM (SELECT * FROM daily_spend UNION ALL SELECT * FROM closed_spend)
        WHERE {" AND ".join(where)}
        ORDER BY day, workspace_id, scenario, model, region, currency, is_adjustment, adjustment_of
    """
    # Rows of one key come together: add up the appended ones (see ``folded``). Summing here
    # costs well under a millisecond; a GROUP BY in the query cost about 10 ms more CPU.
    keyed: list[list] = []
    for row in con.execute(sql, params).fetchall():
        if keyed and keyed[-1][:8] == list(row[:8]):
            last = keyed[-1]
            last[8:] = [a + b for a, b in zip(last[8:], row[8:], strict=True)]
        else:
            keyed.append(list(row))
    names = {w.id: (w.name, w.cost_centre) for w in settings.workspaces}
    out = []
    for row in keyed:
        day, ws, scn, model, region, currency, is_adj, adj_of = row[:8]
        counts = row[8 : 8 + len(_SPEND_FIELDS)]
        cost, unpriced_calls, unpriced_tokens = row[8 + len(_SPEND_FIELDS) :]
        name, centre = names.get(ws, (ws, ""))
        out.append(
            SpendRow(
                day,
                ws,
                name,
                centre,
                scn,
                model,
                region,
                currency,
                *counts,
                exact(cost),
                unpriced_calls,
                unpriced_tokens,
                is_adj,
                adj_of,
            )
        )
    return out


def period_status(con: duckdb.DuckDBPyConnection, month: str) -> PeriodStatus:
    """Whether ``month`` (YYYY-MM) is closed, and the adjustments carried into it per currency."""
    closed = con.execute("SELECT closed_at FROM period_close WHERE month = ?", [month]).fetchone()
    first = date.fromisoformat(f"{month}-01")
    totals = con.execute(
        """SELECT currency, sum(cost) FROM
               (SELECT * FROM daily_spend UNION ALL SELECT * FROM closed_spend)
           WHERE is_adjustment AND day = ? GROUP BY currency ORDER BY currency""",
        [first],
    ).fetchall()
    return PeriodStatus(
        month,
        closed is not None,
        closed[0] if closed else None,
        {cur: exact(total) for cur, total in totals},
    )


def folded(source: str, where: str = "true") -> str:
    """SQL: the spend rows of ``source`` matching ``where``, summed into one row per key.

    ``daily_spend`` may hold several rows of one key: an incremental refresh appends the rows
    of its new events rather than adding them in place (see ``refresh``). Every column is a
    sum, so summing again reads the same as a table folded to one row per key.
    """
    sums = ", ".join(f"sum({c}) AS {c}" for c in _SUMS)
    return f"SELECT {', '.join(_KEYS)}, {sums} FROM {source} WHERE {where} GROUP BY ALL"


def _event_count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM events").fetchone()[0]


def last_ingested_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When the newest event reached the database (None for an empty one)."""
    return con.execute("SELECT max(ingested_at) FROM events").fetchone()[0]


def exact(amount: Decimal | None) -> Decimal:
    """``amount`` without trailing zeros and never in exponent form (0 for None)."""
    if amount is None:
        return Decimal(0)
    if amount == amount.to_integral_value():
        return amount.quantize(Decimal(1))
    return amount.normalize()


# --- refreshing ---------------------------------------------------------------------------


def settings_hash(settings: Settings, book_digest: str) -> str:
    """Changes whenever anything that attribution or pricing reads changes."""
    parts = [book_digest, settings.timezone]
    for w in sorted(settings.workspaces, key=lambda w: w.id):
        parts.append(
            f"{w.id}|{w.region}|{w.default_scenario}|{','.join(sorted(w.key_fingerprints))}"
        )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def refresh(
    con: duckdb.DuckDBPyConnection, settings: Settings, *, book: PriceBook | None = None
) -> RollupResult:
    """Bring ``daily_spend`` up to date with the events, recomputing only what changed."""
    digest = settings_hash(settings, book.digest if book else book_digest(settings.price_books))
    # One transaction is one snapshot: what it reads as newest is exactly what it rolls up,
    # and the months it reads as closed are the ones it leaves alone.
    con.execute("BEGIN TRANSACTION")
    try:
        result = _refresh(con, settings, book, digest)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return result


def _refresh(
    con: duckdb.DuckDBPyConnection, settings: Settings, book: PriceBook | None, digest: str
) -> RollupResult:
    # The state and the closed months in one statement (each statement costs ≈ 0.3 ms).
    state: dict[str, str] = {}
    closed: set[str] = set()
    for key, value in con.execute(
        "SELECT key, value FROM rollup_state UNION ALL SELECT NULL, month FROM period_close"
    ).fetchall():
        if key is None:
            closed.add(value)
        else:
            state[key] = value
    full = state.get("settings_hash") != digest
    watermark = (
        None if full or "watermark" not in state else datetime.fromisoformat(state["watermark"])
    )
    if watermark is None:
        count, newest, new, late = _event_count(con), last_ingested_at(con), None, True
    else:
        # Filtered on ingested_at, the scan skips the row groups older than the watermark.
        count, newest, new = con.execute(
            "SELECT (SELECT count(*) FROM events), max(ingested_at), count(*) FROM events "
            "WHERE ingested_at > ?",
            [watermark],
        ).fetchone()
        # Events are never deleted: the same count means nothing new (the common case).
        if state.get("events") == str(count):
            return RollupResult(0, False, 0, 0)
        # So the previous snapshot's count plus the events newer than its watermark is every
        # event, unless a late commit landed at or below it.
        late = "events" not in state or count != int(state["events"]) + new

    book = book or load_price_book(settings.price_books)
    tz = ZoneInfo(settings.timezone)
    newest = newest or watermark
    open_only = f"NOT ({_closed_filter(closed, tz)})"
    plan = prepare(con, settings, book, digest)
    appended = 0
    if watermark is None:
        con.execute("DELETE FROM daily_spend")
        rows = con.execute(
            f"INSERT INTO daily_spend {priced_select(plan, open_only, tz)}"
        ).fetchone()[0]
        days = [d for (d,) in con.execute("SELECT DISTINCT day FROM daily_spend").fetchall()]
    else:
        days, rows = _append_new_events(con, plan, tz, watermark, open_only) if new else (set(), 0)
        appended = int(state.get("appended", 0)) + rows
        if late:
            days |= _recompute_late_commits(con, plan, tz, watermark, open_only)
        days = sorted(days)
    adjustments = rebuild_adjustments(con, plan, closed, tz) if closed else 0
    if late and count != _rolled_up_calls(con):
        days = sorted({*days, *_recount_open_days(con, plan, tz, open_only)})
    if appended > FOLD_AFTER_ROWS:
        _fold(con)
        appended = 0
    _save_state(con, state, {
        "settings_hash": digest,
        "watermark": (newest or datetime(1970, 1, 1, tzinfo=UTC)).isoformat(),
        "events": str(count),
        "appended": str(appended),
    })  # fmt: skip
    return RollupResult(len(days), watermark is None, rows, adjustments)


def _save_state(con: duckdb.DuckDBPyConnection, state: dict, values: dict[str, str]) -> None:
    if state.keys() >= values.keys():  # an UPDATE costs half an upsert
        cases = " ".join(f"WHEN '{key}' THEN ?" for key in values)
        marks = ", ".join("?" * len(values))
        updated = con.execute(
            f"UPDATE rollup_state SET value = CASE key {cases} END WHERE key IN ({marks})",
            [*values.values(), *values],
        ).fetchone()[0]
        if updated == len(values):
            return
    con.execute(
        f"INSERT OR REPLACE INTO rollup_state VALUES {', '.join(['(?, ?)'] * len(values))}",
        [part for pair in values.items() for part in pair],
    )


def _append_new_events(
    con: duckdb.DuckDBPyConnection,
    plan: PricingPlan,
    tz: ZoneInfo,
    watermark: datetime,
    open_only: str,
) -> tuple[set[date], int]:
    """Price the events newer than ``watermark`` and append their rows to ``daily_spend``.

    Every column of a spend row is a sum, so the new events' rows appended beside their days'
    stored rows read the same (``folded``) as those days recomputed, at the cost of the new
    events alone. One INSERT: adding them into the stored rows in place (pricing into a
    temporary table, then a MERGE) cost about 10 ms more CPU per refresh, mostly planning.
    """
    where = f"ingested_at > {ts(watermark)} AND {open_only}"
    written = con.execute(
        f"INSERT INTO daily_spend {priced_select(plan, where, tz)} RETURNING day"
    ).fetchall()
    return {d for (d,) in written}, len(written)


def _fold(con: duckdb.DuckDBPyConnection) -> None:
    """Sum ``daily_spend`` back into one row per key (once per ``FOLD_AFTER_ROWS`` rows)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_folded AS {folded('daily_spend')}")
    con.execute("DELETE FROM daily_spend")
    con.execute("INSERT INTO daily_spend BY NAME SELECT * FROM _cs_folded")
    con.execute("DROP TABLE _cs_folded")


def _recompute_late_commits(
    con: duckdb.DuckDBPyConnection,
    plan: PricingPlan,
    tz: ZoneInfo,
    watermark: datetime,
    open_only: str,
) -> set[date]:
    """Recompute whole the days whose events and rolled-up calls disagree.

    A transaction that committed after the last refresh read its watermark may carry an
    ``ingested_at`` just below it; such events are only in the days touched shortly before the
    watermark, so those days' event counts are checked against the rolled-up calls.
    """
    since = ts(watermark - LATE_COMMIT_MARGIN)
    day = day_expr(tz, "started_at")
    suspects = [d for (d,) in con.execute(
        f"SELECT DISTINCT {day} FROM events WHERE ingested_at > {since} AND {open_only}"
    ).fetchall()]  # fmt: skip
    if not suspects:
        return set()
    marks = ", ".join("?" * len(suspects))
    counted = dict(con.execute(
        f"SELECT {day} AS d, count(*) FROM events WHERE ({_days_filter(suspects, tz)}) GROUP BY d"
    ).fetchall())  # fmt: skip
    rolled = dict(con.execute(
        f"SELECT day, sum(calls) FROM daily_spend WHERE NOT is_adjustment AND day IN ({marks}) "
        "GROUP BY day", suspects,
    ).fetchall())  # fmt: skip
    bad = sorted(d for d in suspects if counted.get(d, 0) != rolled.get(d, 0))
    _recompute_days(con, plan, tz, open_only, bad)
    return set(bad)


def _recompute_days(
    con: duckdb.DuckDBPyConnection, plan: PricingPlan, tz: ZoneInfo, open_only: str, days: list
) -> None:
    """Replace the rolled-up rows of ``days`` (open months only) by a fresh pricing pass."""
    if not days:
        return
    marks = ", ".join("?" * len(days))
    con.execute(f"DELETE FROM daily_spend WHERE NOT is_adjustment AND day IN ({marks})", days)
    where = f"({_days_filter(days, tz)}) AND {open_only}"
    con.execute(f"INSERT INTO daily_spend {priced_select(plan, where, tz)}")


def _rolled_up_calls(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(
        "SELECT (SELECT coalesce(sum(calls), 0) FROM daily_spend)"
        " + (SELECT coalesce(sum(calls), 0) FROM closed_spend)"
    ).fetchone()[0]


def _recount_open_days(
    con: duckdb.DuckDBPyConnection, plan: PricingPlan, tz: ZoneInfo, open_only: str
) -> set[date]:
    """Recompute whole every open day whose event count differs from its rolled-up calls.

    The backstop for a transaction that committed later than ``LATE_COMMIT_MARGIN`` after
    it started: one count per day over all open events, run only when the rolled-up calls
    and the events disagree in total.
    """
    day = day_expr(tz, "started_at")
    counted = dict(con.execute(
        f"SELECT {day} AS d, count(*) FROM events WHERE {open_only} GROUP BY d"
    ).fetchall())  # fmt: skip
    rolled = dict(con.execute(
        "SELECT day, sum(calls) FROM daily_spend WHERE NOT is_adjustment GROUP BY day"
    ).fetchall())  # fmt: skip
    bad = sorted(d for d in counted.keys() | rolled.keys() if counted.get(d) != rolled.get(d))
    _recompute_days(con, plan, tz, open_only, bad)
    return set(bad)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC bounds [start, end) of a reporting-timezone day."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    nxt = day + timedelta(days=1)
    return start.astimezone(UTC), datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)


def month_bounds(month: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC bounds [start, end) of a reporting-timezone month ``YYYY-MM``."""
    first = date.fromisoformat(f"{month}-01")
    nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return day_bounds(first, tz)[0], day_bounds(nxt, tz)[0]


def _days_filter(days: Iterable[date], tz: ZoneInfo) -> str:
    spans = []
    for day in sorted(days):
        lo, hi = day_bounds(day, tz)
        if spans and spans[-1][1] == lo:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    return " OR ".join(f"(started_at >= {ts(lo)} AND started_at < {ts(hi)})" for lo, hi in spans)


def _closed_filter(closed: Collection[str], tz: ZoneInfo) -> str:
    if not closed:
        return "false"
    return " OR ".join(
        f"(started_at >= {ts(lo)} AND started_at < {ts(hi)})"
        for lo, hi in (month_bounds(m, tz) for m in sorted(closed))
    )


def _next_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:])
    return f"{year + (mon == 12)}-{mon % 12 + 1:02d}"


def first_open_after(month: str, closed: Collection[str]) -> str:
    """The first month after ``month`` that is not closed: where its late events are carried."""
    booked = _next_month(month)
    while booked in closed:
        booked = _next_month(booked)
    return booked


def uncovered(month: str, tz: ZoneInfo) -> str:
    """SQL filter: events of closed ``month`` that no close froze (see ``m006_close_coverage``)."""
    lo, hi = month_bounds(month, tz)
    return (
        f"started_at >= {ts(lo)} AND started_at < {ts(hi)} AND ingested_at NOT IN "
        f"(SELECT ingested_at FROM close_coverage WHERE event_month = '{month}')"
    )


def rebuild_adjustments(
    con: duckdb.DuckDBPyConnection, plan: PricingPlan, closed: Collection[str], tz: ZoneInfo
) -> int:
    """Late events of closed months, as adjustment rows in the first month still open after.

    Each close records the ingest batches it froze (``close_coverage``): the month's own
    events in its snapshot and earlier months' late events in the adjustment rows closed with
    it. An event of closed month M in no recorded batch, whenever its transaction committed,
    is carried into the first month after M that is open now. Months whose events all sit in
    recorded batches (compared by count, cheap) are skipped.
    """
    con.execute("DELETE FROM daily_spend WHERE is_adjustment")
    cases = " ".join(
        f"WHEN started_at >= {ts(lo)} AND started_at < {ts(hi)} THEN '{m}'"
        for m, (lo, hi) in ((m, month_bounds(m, tz)) for m in sorted(closed))
    )
    counted = dict(con.execute(
        f"SELECT CASE {cases} END AS m, count(*) FROM events "
        f"WHERE {_closed_filter(closed, tz)} GROUP BY m"
    ).fetchall())  # fmt: skip
    covered = dict(con.execute(
        "SELECT event_month, sum(events) FROM close_coverage GROUP BY event_month"
    ).fetchall())  # fmt: skip
    total = 0
    for month in sorted(closed):
        if counted.get(month, 0) == covered.get(month, 0):
            continue
        booked = first_open_after(month, closed)
        select = priced_select(
            plan, uncovered(month, tz), tz, day_sql=f"DATE '{booked}-01'", adjustment_of=month
        )
        total += con.execute(f"INSERT INTO daily_spend {select}").fetchone()[0]
    return total
