"""Rollup: price every call in SQL and keep ``daily_spend`` per day × workspace × scenario × model.

Attribution happens here, not at recording: the key fingerprint's configured workspace, else the
observed workspace, else ``unattributed``; the event's scenario, else the workspace's default,
else ``unassigned``; the event's region, else the workspace's region. A call is priced by the
price row in force at its time for its region and the model name as requested
(``costsplit.prices``); a call with no such row is *unpriced*: counted, never costed as zero.

``refresh`` is incremental and idempotent. It recomputes the days of events ingested since its
watermark (less a margin for transactions that committed late), and every open day when the
settings or price books changed (a hash of them is kept in ``rollup_state``). Days of closed
months are never rewritten: their late events become adjustment rows in the first month that
was still open when they arrived (see ``costsplit.periods``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb

from costsplit.config import Settings
from costsplit.prices import PriceBook, load_price_book, rates

LATE_COMMIT_MARGIN = timedelta(minutes=5)
REGION_CURRENCY = {"cn-beijing": "CNY"}  # every other region bills USD

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
        SELECT day, workspace_id, scenario, model, region, currency, {fields}, cost,
               unpriced_calls, unpriced_tokens, is_adjustment, adjustment_of
        FROM (SELECT * FROM daily_spend UNION ALL SELECT * FROM closed_spend)
        WHERE {" AND ".join(where)}
        ORDER BY day, workspace_id, scenario, model, region, currency, is_adjustment, adjustment_of
    """
    names = {w.id: (w.name, w.cost_centre) for w in settings.workspaces}
    out = []
    for row in con.execute(sql, params).fetchall():
        day, ws, scn, model, region, currency = row[:6]
        counts = row[6 : 6 + len(_SPEND_FIELDS)]
        cost, unpriced_calls, unpriced_tokens, is_adj, adj_of = row[6 + len(_SPEND_FIELDS) :]
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


def settings_hash(settings: Settings, book: PriceBook) -> str:
    """Changes whenever anything that attribution or pricing reads changes."""
    parts = [book.digest, settings.timezone]
    for w in sorted(settings.workspaces, key=lambda w: w.id):
        parts.append(
            f"{w.id}|{w.region}|{w.default_scenario}|{','.join(sorted(w.key_fingerprints))}"
        )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def refresh(
    con: duckdb.DuckDBPyConnection, settings: Settings, *, book: PriceBook | None = None
) -> RollupResult:
    """Bring ``daily_spend`` up to date with the events, recomputing only what changed."""
    book = book or load_price_book(settings.price_books)
    digest = settings_hash(settings, book)
    state = dict(con.execute("SELECT key, value FROM rollup_state").fetchall())
    newest = last_ingested_at(con)
    full = state.get("settings_hash") != digest
    watermark = (
        None if full or "watermark" not in state else datetime.fromisoformat(state["watermark"])
    )
    if not full and watermark is not None and newest is not None and newest <= watermark:
        return RollupResult(0, False, 0, 0)  # nothing new: the common case, kept cheap
    if not full and newest is None:
        return RollupResult(0, False, 0, 0)

    tz = ZoneInfo(settings.timezone)
    closed = dict(con.execute("SELECT month, closed_at FROM period_close").fetchall())
    con.execute("BEGIN TRANSACTION")
    try:
        prepare(con, settings, book)
        if watermark is None:
            days = None  # every open day
            con.execute("DELETE FROM daily_spend")
            where = "true"
        else:
            since = watermark - LATE_COMMIT_MARGIN
            days = [
                d
                for (d,) in con.execute(
                    f"SELECT DISTINCT {day_expr(tz, 'started_at')} FROM events "
                    "WHERE ingested_at > ?",
                    [since],
                ).fetchall()
            ]
            days = [d for d in days if d.strftime("%Y-%m") not in closed]
            if days:
                con.execute(
                    "DELETE FROM daily_spend WHERE NOT is_adjustment AND day IN "
                    f"({', '.join('?' * len(days))})",
                    days,
                )
            where = _days_filter(days, tz) if days else "false"
        rows = 0
        if days is None or days:
            where = f"({where}) AND NOT ({_closed_filter(closed, tz)})"
            select = priced_select(where, tz, discounts=bool(book.discounts))
            rows = con.execute(f"INSERT INTO daily_spend {select}").fetchone()[0]
        adjustments = _rebuild_adjustments(con, closed, tz, bool(book.discounts)) if closed else 0
        if days is None:
            days = [d for (d,) in con.execute("SELECT DISTINCT day FROM daily_spend").fetchall()]
        for key, value in (
            ("settings_hash", digest),
            ("watermark", (newest or datetime.min.replace(tzinfo=UTC)).isoformat()),
        ):
            con.execute("INSERT OR REPLACE INTO rollup_state VALUES (?, ?)", [key, value])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return RollupResult(len(days), watermark is None, rows, adjustments)


def prepare(con: duckdb.DuckDBPyConnection, settings: Settings, book: PriceBook) -> None:
    """Load the settings' attribution and the book's price rows into temporary tables."""
    con.execute("CREATE OR REPLACE TEMP TABLE _cs_keys (fingerprint VARCHAR, workspace_id VARCHAR)")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _cs_ws (id VARCHAR, region VARCHAR, default_scenario VARCHAR)"
    )
    keys = [(fp, w.id) for w in settings.workspaces for fp in w.key_fingerprints]
    _insert(con, "_cs_keys", keys, 2)
    _insert(con, "_cs_ws", [(w.id, w.region, w.default_scenario) for w in settings.workspaces], 3)

    rate_names = list(rates(book.rows[0], book.rows[0].tiers[0])) if book.rows else []
    columns = ", ".join(f"{name} DECIMAL(38, 10)" for name in rate_names)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _cs_prices (region VARCHAR, name VARCHAR, currency VARCHAR, "
        "omni BOOLEAN, valid_from TIMESTAMPTZ, valid_to TIMESTAMPTZ, tier_lo BIGINT, tier_hi BIGINT"
        + (f", {columns})" if columns else ")")
    )
    values = []
    for row, region, name, lo, hi in book.segments():
        low = -1
        for tier in row.tiers:
            high = tier.up_to if tier.up_to is not None else 2**62
            if tier is row.tiers[-1]:
                high = 2**62  # beyond the last bound the last tier still prices the call
            r = rates(row, tier)
            values.append(
                (
                    region,
                    name,
                    row.currency,
                    row.modalities is not None,
                    lo,
                    hi,
                    low,
                    high,
                    *[str(r[n]) for n in rate_names],
                )
            )
            low = high
    _insert(con, "_cs_prices", values, 8 + len(rate_names))

    con.execute(
        "CREATE OR REPLACE TEMP TABLE _cs_disc (kind INTEGER, workspace VARCHAR, model VARCHAR, "
        "valid_from TIMESTAMPTZ, valid_to TIMESTAMPTZ, multiplier DECIMAL(38, 6))"
    )
    names_of = {}
    for row in book.rows:
        for name in row.names:
            names_of.setdefault(name, set()).update(row.names)
    disc = []
    for d in book.discounts:
        forever = datetime(9999, 1, 1, tzinfo=UTC)
        for model in sorted(names_of.get(d.model, {d.model})) if d.model else [""]:
            disc.append(
                (
                    d.specificity,
                    d.workspace,
                    model,
                    d.valid_from,
                    d.valid_to or forever,
                    str(d.multiplier),
                )
            )
    _insert(con, "_cs_disc", disc, 6)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple], width: int) -> None:
    # One statement with parameters: executemany costs ~1 ms a row here.
    for i in range(0, len(rows), 200):
        chunk = rows[i : i + 200]
        if not chunk:
            continue
        marks = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
        con.execute(f"INSERT INTO {table} VALUES {marks}", [v for r in chunk for v in r])


def day_expr(tz: ZoneInfo, column: str) -> str:
    """SQL for the reporting-timezone day of a TIMESTAMPTZ ``column``.

    Zones with one fixed offset (Asia/Shanghai since 1991, UTC) use integer arithmetic, about
    ten times faster than a time-zone conversion per row.
    """
    offset = _fixed_offset(tz)
    if offset is not None:
        days = f"(epoch_us({column}) + {offset}) // 86400000000"
        return f"(DATE '1970-01-01' + CAST({days} AS INTEGER))"
    return f"CAST(timezone('{tz.key}', {column}) AS DATE)"


def _fixed_offset(tz: ZoneInfo) -> int | None:
    probes = [
        datetime(year, month, 15, tzinfo=tz)
        for year in range(1995, 2041)
        for month in (1, 4, 7, 10)
    ]
    offsets = {p.utcoffset() for p in probes}
    if len(offsets) != 1:
        return None
    return int(offsets.pop().total_seconds()) * 1_000_000


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


def _ts(moment: datetime) -> str:
    return f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat()}'"


def _days_filter(days: Iterable[date], tz: ZoneInfo) -> str:
    spans = []
    for day in sorted(days):
        lo, hi = day_bounds(day, tz)
        if spans and spans[-1][1] == lo:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    return " OR ".join(f"(started_at >= {_ts(lo)} AND started_at < {_ts(hi)})" for lo, hi in spans)


def _closed_filter(closed: dict[str, datetime], tz: ZoneInfo) -> str:
    if not closed:
        return "false"
    return " OR ".join(
        f"(started_at >= {_ts(lo)} AND started_at < {_ts(hi)})"
        for lo, hi in (month_bounds(m, tz) for m in sorted(closed))
    )


def _next_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:])
    return f"{year + (mon == 12)}-{mon % 12 + 1:02d}"


def _rebuild_adjustments(
    con: duckdb.DuckDBPyConnection, closed: dict[str, datetime], tz: ZoneInfo, discounts: bool
) -> int:
    """Late events of closed months, as adjustment rows in the first month still open for them.

    An event of closed month M that arrived after M closed belongs to the next month after M
    that was still open when it arrived; months after M that closed before the event arrived
    already froze it out, so only events newer than every such close land in the first open
    month. Those already frozen into a later closed month's snapshot stay there.
    """
    con.execute("DELETE FROM daily_spend WHERE is_adjustment")
    total = 0
    for month in sorted(closed):
        cutoff = closed[month]
        booked = _next_month(month)
        while booked in closed:
            cutoff = max(cutoff, closed[booked])
            booked = _next_month(booked)
        lo, hi = month_bounds(month, tz)
        where = (
            f"started_at >= {_ts(lo)} AND started_at < {_ts(hi)} AND ingested_at > {_ts(cutoff)}"
        )
        select = priced_select(
            where, tz, discounts=discounts, day_sql=f"DATE '{booked}-01'", adjustment_of=month
        )
        total += con.execute(f"INSERT INTO daily_spend {select}").fetchone()[0]
    return total


def priced_select(
    where: str,
    tz: ZoneInfo,
    *,
    discounts: bool = False,
    day_sql: str | None = None,
    adjustment_of: str = "",
) -> str:
    """The SELECT that prices every event matching ``where`` and sums it into spend rows.

    Each call is priced on its own (its tier comes from its own input tokens). Rates are per
    1M tokens (``costsplit.prices.rates``), so the sum is scaled by 10⁻⁶ once, exactly.
    Explicit cache: ``cache_creation_tokens > 0`` or ``tags['cache_type'] = 'ephemeral'``;
    otherwise cached tokens are implicit hits.
    """
    currency_case = " ".join(f"WHEN '{r}' THEN '{c}'" for r, c in REGION_CURRENCY.items())
    day = day_sql or day_expr(tz, "started_at")
    # The most specific discount in force (workspace+model > workspace > model), else none.
    multiplier = (
        """coalesce((SELECT arg_max(d.multiplier, d.kind) FROM _cs_disc d
            WHERE (d.workspace = '' OR d.workspace = a.ws) AND (d.model = '' OR d.model = a.model)
              AND a.started_at >= d.valid_from AND a.started_at < d.valid_to), 1)"""
        if discounts
        else "1"
    )
    return f"""
    WITH ev AS (
        SELECT e.*, coalesce(nullif(e.model_requested, ''), e.model_returned) AS model,
               coalesce(k.workspace_id, nullif(e.workspace_observed, ''), 'unattributed') AS ws
        FROM events e LEFT JOIN _cs_keys k ON k.fingerprint = e.key_fingerprint
        WHERE {where}
    ), a AS (
        SELECT ev.*,
               coalesce(nullif(ev.scenario, ''), nullif(w.default_scenario, ''), 'unassigned')
                   AS scn,
               coalesce(nullif(ev.region, ''), w.region, '') AS reg
        FROM ev LEFT JOIN _cs_ws w ON w.id = ev.ws
    ), priced AS (
        SELECT a.*, p.currency AS p_currency,
        CASE
        WHEN p.name IS NULL THEN NULL
        WHEN a.billing_plan = 'plan' THEN CAST(0 AS DECIMAL(38, 16))
        ELSE CAST((
            CASE
            WHEN a.batch THEN a.input_tokens * p.batch_in + a.output_tokens
                * (CASE WHEN a.reasoning_tokens > 0 THEN p.batch_think ELSE p.batch_out END)
            WHEN p.omni THEN
                (a.input_tokens - a.audio_tokens - a.image_tokens - a.video_tokens) * p.in_text
                + a.audio_tokens * p.in_audio + a.image_tokens * p.in_image
                + a.video_tokens * p.in_video
                + CASE
                  WHEN a.audio_output_tokens > 0 THEN a.audio_output_tokens * p.out_audio
                  WHEN a.audio_tokens + a.image_tokens + a.video_tokens > 0
                      THEN a.output_tokens * p.out_text_when_input_multimodal
                  ELSE a.output_tokens * p.out_text_when_input_text_only
                  END
            WHEN a.cache_creation_tokens > 0 OR a.tags['cache_type'] = 'ephemeral' THEN
                (a.input_tokens - a.cached_tokens - a.cache_creation_tokens) * p.in_rate
                + a.cached_tokens * p.er_rate + a.cache_creation_tokens * p.ew_rate
                + a.output_tokens
                  * (CASE WHEN a.reasoning_tokens > 0 THEN p.think_rate ELSE p.out_rate END)
            ELSE
                (a.input_tokens - a.cached_tokens) * p.in_rate
                + a.cached_tokens * p.implicit_rate
                + a.output_tokens
                  * (CASE WHEN a.reasoning_tokens > 0 THEN p.think_rate ELSE p.out_rate END)
            END + a.image_count * p.image_rate
        ) * {multiplier} AS DECIMAL(38, 16))
        END AS cost_micro
        FROM a LEFT JOIN _cs_prices p
          ON p.region = a.reg AND p.name = a.model
         AND a.started_at >= p.valid_from AND a.started_at < p.valid_to
         AND a.input_tokens > p.tier_lo AND a.input_tokens <= p.tier_hi
    )
    SELECT {day} AS day, ws, scn, model, reg,
           coalesce(p_currency, CASE reg {currency_case} ELSE 'USD' END),
           {"true" if adjustment_of else "false"}, '{adjustment_of}',
           count(*), count(*) FILTER (outcome = 'ok'),
           count(*) FILTER (outcome IN ('http_error', 'network_error')),
           count(*) FILTER (outcome IN ('denied', 'denied_local')),
           count(*) FILTER (outcome = 'interrupted'), count(*) FILTER (usage_source = 'estimated'),
           sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(cache_creation_tokens),
           sum(reasoning_tokens), sum(image_tokens), sum(audio_tokens), sum(video_tokens),
           CAST(coalesce(sum(cost_micro), 0) * CAST(0.000001 AS DECIMAL(7, 6)) AS DECIMAL(38, 22)),
           count(*) FILTER (cost_micro IS NULL AND input_tokens + output_tokens + image_count > 0),
           coalesce(sum(input_tokens + output_tokens) FILTER (cost_micro IS NULL), 0)
    FROM priced
    GROUP BY ALL
    """
