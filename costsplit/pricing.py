"""Pricing in SQL: every call priced by its own tier, summed into spend rows, exactly.

Cost is linear in each token class once a call's price row, tier and billing case are fixed,
so the events are first grouped by everything that fixes them: the raw attribution columns,
the reporting day, the *price period* (which price-book dates the call falls between), the
*tier bucket* (which tier bounds its input tokens exceed) and the billing case (batch,
thinking, explicit cache, multimodal input, audio output, plan). Then each small group is
attributed, joined to its price row and tier, and costed with DECIMAL rates. The per-group
sum equals the per-call sum to the last digit, and the 10M-row pass is a plain integer
GROUP BY.

The billing rules below are applied once, when the prices are loaded: ``price_rates`` holds,
per price row, tier bucket, price period and billing case (the case bits of a group's key
but the plan one), one rate per token class, so a group's cost is a plain sum of token counts
times rates (times 0 for a plan call). Written as one CASE per call kind in the pricing
statement, the rules made DuckDB spend about a third more time planning it, which is most of
the cost of an incremental refresh; every statement reads the whole rate table, hence no
rows for the plan bit (it would double them). The attribution and price tables live in the
database (``m007_price_tables``) and are refilled only when the settings, the books or the
derivation of rates change, so a new connection loads nothing.

Billing rules (reference §7.1), with the rates from ``costsplit.pricebook.rates``:
  * explicit-cache call (``cache_creation_tokens > 0`` or ``cache_type = 'ephemeral'``, as
    the provider reported it): uncached input at the input price, cached tokens at
    ``explicit_read``, creation tokens at ``explicit_write``; otherwise cached tokens are
    implicit hits (``implicit_read``);
  * output at the thinking price only when ``reasoning_tokens > 0``;
  * batch: ``batch_ratio`` of the whole real-time price (plain input and output, or the
    per-modality prices, and the per-image price), no cache discount;
  * omni rows: per-modality input; output text at the text-only or multimodal-input price, or
    only the audio output when audio was produced;
  * ``image_count × per_image`` added where the row has a per-image price;
  * a subscription-plan call (``billing_plan = 'plan'``) costs 0 per token;
  * no price row: NULL cost, counted as unpriced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb

from costsplit.config import Settings
from costsplit.pricebook import FOREVER, PriceBook, rates

REGION_CURRENCY = {"cn-beijing": "CNY"}  # every other region bills USD
RATE_NAMES = (
    "in_rate", "implicit_rate", "ew_rate", "er_rate", "out_rate", "think_rate", "batch_in",
    "batch_out", "batch_think", "image_rate", "in_text", "in_audio", "in_image", "in_video",
    "out_text_when_input_text_only", "out_text_when_input_multimodal", "out_audio",
    "batch_in_text", "batch_in_audio", "batch_in_image", "batch_in_video",
    "batch_out_text_when_input_text_only", "batch_out_text_when_input_multimodal",
    "batch_out_audio", "batch_image_rate",
)  # fmt: skip
_NO_END = 2**62
# A group key's low bits: the billing case, then outcome, estimate and usage flags.
BATCH, PLAN, THINKING, EXPLICIT, MULTIMODAL, AUDIO_OUT = 1, 2, 4, 8, 16, 32
_CASES = 64  # every combination of the six billing-case bits
_RATED = _CASES - 1 - PLAN  # the bits that choose a call's rates
# Token classes (the group's sums) and their rate in ``price_rates``: cost = Σ tokens × rate.
TOKEN_RATES = {
    "input_tokens": "r_input", "cached_tokens": "r_cached",
    "cache_creation_tokens": "r_cache_creation", "output_tokens": "r_output",
    "audio_tokens": "r_audio", "image_tokens": "r_image", "video_tokens": "r_video",
    "audio_output_tokens": "r_audio_output", "image_count": "r_image_count",
}  # fmt: skip
_BUCKET_SHIFT = 11  # bits of a group's key below its tier bucket (see priced_select)


@dataclasses.dataclass(frozen=True, slots=True)
class PricingPlan:
    """What the SQL needs besides the price tables: period and tier boundaries."""

    boundaries: tuple[datetime, ...]  # price-book and discount dates, sorted
    bounds: tuple[int, ...]  # tier bounds (input tokens), sorted
    discounts: bool


_KEYS = {"fingerprint": "VARCHAR", "workspace_id": "VARCHAR"}
_WORKSPACES = {"id": "VARCHAR", "region": "VARCHAR", "default_scenario": "VARCHAR"}
_PRICES = {
    "region": "VARCHAR", "name": "VARCHAR", "currency": "VARCHAR", "omni": "BOOLEAN",
    "period": "INTEGER", "bucket": "INTEGER",
    **{name: "DECIMAL(38, 10)" for name in RATE_NAMES},
}  # fmt: skip
_DISCOUNTS = {
    "kind": "INTEGER", "workspace": "VARCHAR", "model": "VARCHAR", "period_lo": "INTEGER",
    "period_hi": "INTEGER", "multiplier": "DECIMAL(38, 6)",
}  # fmt: skip


def prepare(
    con: duckdb.DuckDBPyConnection, settings: Settings, book: PriceBook, digest: str = ""
) -> PricingPlan:
    """Fill the attribution and price tables for ``settings`` and ``book``; return the plan.

    The tables keep what they hold between runs: with the ``digest`` (of the settings and
    books) of what they hold, this costs one catalog lookup.
    """
    segments = book.segments()
    dates = {m for _, _, _, lo, hi in segments for m in (lo, hi)}
    dates |= {d.valid_from for d in book.discounts}
    dates |= {d.valid_to or FOREVER for d in book.discounts}
    boundaries = tuple(sorted(dates - {FOREVER}))
    bounds = tuple(sorted({t.up_to for row in book.rows for t in row.tiers[:-1] if t.up_to}))
    plan = PricingPlan(boundaries, bounds, bool(book.discounts))
    # What the tables hold depends on the settings, the books and how rates are derived.
    digest = digest and f"{digest}/{hashlib.sha256(_RATES_SELECT.encode()).hexdigest()[:8]}"
    if digest and _loaded(con) == digest:
        return plan

    def period(moment: datetime) -> int:  # periods before ``moment``'s: the count of dates ≤ it
        return len(boundaries) + 1 if moment >= FOREVER else sum(b <= moment for b in boundaries)

    def bucket(tokens: int) -> int:  # buckets of calls with at most ``tokens`` input tokens
        return sum(b < tokens + 1 for b in bounds) if tokens < _NO_END else len(bounds) + 1

    # Cleared first, so a load that stops half way (outside a transaction) is redone.
    con.execute("COMMENT ON TABLE price_rates IS NULL")
    keys = [(fp, w.id) for w in settings.workspaces for fp in w.key_fingerprints]
    _fill(con, "price_keys", _KEYS, keys)
    workspaces = [(w.id, w.region, w.default_scenario) for w in settings.workspaces]
    _fill(con, "price_workspaces", _WORKSPACES, workspaces)
    values = []
    for row, region, name, lo, hi in segments:
        low = -1
        for tier in row.tiers:
            # Beyond the last bound the last tier still prices the call.
            high = _NO_END if tier is row.tiers[-1] or tier.up_to is None else tier.up_to
            r = rates(row, tier)
            # One row per (period, bucket) it prices: the join is then on equalities only.
            for p in range(period(lo), min(period(hi), len(boundaries) + 1)):
                for b in range(bucket(low), min(bucket(high), len(bounds) + 1)):
                    values.append((region, name, row.currency, row.modalities is not None, p, b,
                                   *[r[n] for n in RATE_NAMES]))  # fmt: skip
            low = high
    spec = ", ".join(f"{column} {kind}" for column, kind in _PRICES.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_prices ({spec})")
    _fill(con, "_cs_prices", _PRICES, values)

    names_of: dict[str, set[str]] = {}
    for row in book.rows:
        for name in row.names:
            names_of.setdefault(name, set()).update(row.names)
    disc = [
        (d.specificity, d.workspace, model, period(d.valid_from), period(d.valid_to or FOREVER),
         d.multiplier)
        for d in book.discounts
        for model in (sorted(names_of.get(d.model, {d.model})) if d.model else [""])
    ]  # fmt: skip
    _fill(con, "price_discounts", _DISCOUNTS, disc)
    con.execute("DELETE FROM price_rates")
    con.execute(f"INSERT INTO price_rates {_RATES_SELECT}")
    con.execute("DROP TABLE _cs_prices")
    # The digest rides on the table as its comment: rolled back with it, read in one lookup.
    con.execute(f"COMMENT ON TABLE price_rates IS '{digest}'")
    return plan


# The billing rules, per price row and billing case (see the module docstring): each token
# class's rate. The cached, creation and modality rates are differences from the plain input
# rate, as those tokens are also counted in input_tokens.
_RATES_SELECT = f"""
    WITH c AS (
        SELECT p.*, billing::INTEGER AS billing,
               (billing & {BATCH}) > 0 AS batch,
               (billing & {THINKING}) > 0 AS thinking, (billing & {EXPLICIT}) > 0 AS explicit,
               (billing & {MULTIMODAL}) > 0 AS multimodal,
               (billing & {AUDIO_OUT}) > 0 AS audio_out
        FROM _cs_prices p, range({_CASES}) t(billing)
        WHERE billing & {_RATED} = billing
    )
    SELECT region, name, currency, period, bucket, billing,
        CASE WHEN omni AND batch THEN batch_in_text WHEN omni THEN in_text
             WHEN batch THEN batch_in ELSE in_rate END,
        CASE WHEN batch OR omni THEN 0 WHEN explicit THEN er_rate - in_rate
             ELSE implicit_rate - in_rate END,
        CASE WHEN batch OR omni OR NOT explicit THEN 0 ELSE ew_rate - in_rate END,
        CASE WHEN omni AND audio_out THEN 0
             WHEN omni AND batch AND multimodal THEN batch_out_text_when_input_multimodal
             WHEN omni AND batch THEN batch_out_text_when_input_text_only
             WHEN omni AND multimodal THEN out_text_when_input_multimodal
             WHEN omni THEN out_text_when_input_text_only
             WHEN batch AND thinking THEN batch_think WHEN batch THEN batch_out
             WHEN thinking THEN think_rate ELSE out_rate END,
        CASE WHEN NOT omni THEN 0 WHEN batch THEN batch_in_audio - batch_in_text
             ELSE in_audio - in_text END,
        CASE WHEN NOT omni THEN 0 WHEN batch THEN batch_in_image - batch_in_text
             ELSE in_image - in_text END,
        CASE WHEN NOT omni THEN 0 WHEN batch THEN batch_in_video - batch_in_text
             ELSE in_video - in_text END,
        CASE WHEN NOT omni OR NOT audio_out THEN 0 WHEN batch THEN batch_out_audio
             ELSE out_audio END,
        CASE WHEN batch THEN batch_image_rate ELSE image_rate END
    FROM c
"""


def _loaded(con: duckdb.DuckDBPyConnection) -> str | None:
    # Ask the catalog: a failed statement would abort the caller's transaction.
    row = con.execute(
        "SELECT comment FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'price_rates'"
    ).fetchone()
    return row[0] if row else None


def _fill(
    con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, str], rows: list[tuple]
) -> None:
    """Replace the rows of table ``name`` by ``rows``.

    The rows travel as one JSON parameter (decimals as strings, so never a float), parsed
    in DuckDB: a multi-row VALUES or executemany costs 50-1000x more here.
    """
    con.execute(f"DELETE FROM {name}")
    if not rows:
        return
    shape = json.dumps([{column: kind.replace(" ", "") for column, kind in columns.items()}])
    data = json.dumps([dict(zip(columns, map(_json_value, row), strict=True)) for row in rows])
    con.execute(
        f"INSERT INTO {name} SELECT unnest(from_json(?::JSON, ?), recursive := true)",
        [data, shape],
    )


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def day_expr(tz: ZoneInfo, column: str) -> str:
    """SQL for the reporting-timezone day of a TIMESTAMPTZ ``column``.

    Zones with one fixed offset (Asia/Shanghai since 1991, UTC) use integer arithmetic, many
    times faster than a time-zone conversion per row.
    """
    offset = _fixed_offset(tz)
    if offset is not None:
        days = f"(epoch_us({column}) + {offset}) // 86400000000"
        return f"(DATE '1970-01-01' + CAST({days} AS INTEGER))"
    return f"CAST(timezone('{tz.key}', {column}) AS DATE)"


def day_number_expr(tz: ZoneInfo, column: str) -> str:
    """SQL for the reporting-timezone day of ``column`` as days since 1970-01-01 (an integer)."""
    offset = _fixed_offset(tz)
    if offset is not None:
        return f"((epoch_us({column}) + {offset}) // 86400000000)"
    return f"(CAST(timezone('{tz.key}', {column}) AS DATE) - DATE '1970-01-01')"


def _fixed_offset(tz: ZoneInfo) -> int | None:
    probes = [datetime(y, m, 15, tzinfo=tz) for y in range(1995, 2041) for m in (1, 4, 7, 10)]
    offsets = {p.utcoffset() for p in probes}
    if len(offsets) != 1:
        return None
    only: timedelta = offsets.pop()  # type: ignore[assignment]
    return int(only.total_seconds()) * 1_000_000


def ts(moment: datetime) -> str:
    """A TIMESTAMPTZ literal."""
    return f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat()}'"


def priced_select(
    plan: PricingPlan,
    where: str,
    tz: ZoneInfo,
    *,
    day_sql: str | None = None,
    adjustment_of: str = "",
) -> str:
    """A SELECT yielding ``daily_spend`` rows for the events matching ``where``."""
    day = f"({day_sql} - DATE '1970-01-01')" if day_sql else day_number_expr(tz, "started_at")
    period = " + ".join(f"(started_at >= {ts(b)})::BIGINT" for b in plan.boundaries) or "0"
    period_shift = _BUCKET_SHIFT + (len(plan.bounds) + 1).bit_length()
    day_shift = max(32, period_shift + (len(plan.boundaries) + 1).bit_length())
    if day_shift > 47:  # days since 1970 take 16 bits of the 63
        raise ValueError(f"too many price-book dates for one group key ({len(plan.boundaries)})")
    bucket = " + ".join(f"(input_tokens > {b})::INTEGER" for b in plan.bounds) or "0"
    currency_case = " ".join(f"WHEN '{r}' THEN '{c}'" for r, c in REGION_CURRENCY.items())
    # Attribution, as expressions over a group and its key's and workspace's rows.
    ws = "coalesce(k.workspace_id, nullif(g.workspace_observed, ''), 'unattributed')"
    model = "coalesce(nullif(g.model_requested, ''), g.model_returned)"
    region = "coalesce(nullif(g.region, ''), w.region, '')"
    price_period = f"(bits >> {period_shift}) & {(1 << (day_shift - period_shift)) - 1}"
    # The most specific discount in force (workspace+model > workspace > model), else none.
    multiplier = (
        f"""coalesce((SELECT arg_max(d.multiplier, d.kind) FROM price_discounts d
            WHERE (d.workspace = '' OR d.workspace = {ws}) AND (d.model = '' OR d.model = {model})
              AND {price_period} >= d.period_lo AND {price_period} < d.period_hi), 1)"""
        if plan.discounts
        else "1"
    )
    # NULL without a price row: unpriced, never zero. A plan call costs 0 per token.
    plan_free = f"((bits & {PLAN}) = 0)::INTEGER"
    cost = " + ".join(f"g.{tokens} * r.{rate}" for tokens, rate in TOKEN_RATES.items())

    def outcome(test: str) -> str:  # calls whose group key passes ``test``
        return f"coalesce(sum(calls) FILTER ({test}), 0)"

    return f"""
    WITH g AS (
        -- One BIGINT key holds the day and everything that fixes a call's price and counts
        -- besides the names: hashing it is much cheaper than a dozen keys or FILTERed
        -- counts, and bitwise OR costs less than overflow-checked additions.
        SELECT key_fingerprint, workspace_observed, scenario, region,
               model_requested, model_returned,
               {BATCH} * batch::INTEGER
               | {PLAN} * (billing_plan = 'plan')::INTEGER
               | {THINKING} * (reasoning_tokens > 0)::INTEGER
               | {EXPLICIT} * (cache_creation_tokens > 0
                      OR coalesce(cache_type = 'ephemeral', false))::INTEGER
               | {MULTIMODAL} * (audio_tokens > 0 OR image_tokens > 0 OR video_tokens > 0)::INTEGER
               | {AUDIO_OUT} * (audio_output_tokens > 0)::INTEGER
               | 64 * CASE outcome WHEN 'ok' THEN 1 WHEN 'http_error' THEN 2
                      WHEN 'network_error' THEN 2 WHEN 'denied' THEN 3
                      WHEN 'denied_local' THEN 3 WHEN 'interrupted' THEN 4 ELSE 0 END
               | 512 * (usage_source = 'estimated')::INTEGER
               | 1024 * (input_tokens > 0 OR output_tokens > 0 OR image_count > 0)::INTEGER
               | {1 << _BUCKET_SHIFT} * ({bucket})
               | {1 << period_shift} * ({period})
               | {1 << day_shift} * ({day}) AS bits,
               count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_tokens) AS cached_tokens,
               sum(cache_creation_tokens) AS cache_creation_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(image_tokens) AS image_tokens,
               sum(audio_tokens) AS audio_tokens, sum(video_tokens) AS video_tokens,
               sum(audio_output_tokens) AS audio_output_tokens, sum(image_count) AS image_count
        FROM events
        WHERE {where}
        GROUP BY ALL
    )
    -- One SELECT over the groups: layers of CTEs cost DuckDB more planning than the rows.
    SELECT DATE '1970-01-01' + CAST(bits >> {day_shift} AS INTEGER) AS day,
           {ws} AS workspace_id,
           coalesce(nullif(g.scenario, ''), nullif(w.default_scenario, ''), 'unassigned')
               AS scenario,
           {model} AS model, {region} AS region,
           coalesce(r.currency, CASE {region} {currency_case} ELSE 'USD' END) AS currency,
           {"true" if adjustment_of else "false"} AS is_adjustment,
           '{adjustment_of}' AS adjustment_of,
           sum(calls) AS calls,
           {outcome("(bits >> 6) & 7 = 1")} AS ok_calls,
           {outcome("(bits >> 6) & 7 = 2")} AS failed_calls,
           {outcome("(bits >> 6) & 7 = 3")} AS denied_calls,
           {outcome("(bits >> 6) & 7 = 4")} AS interrupted_calls,
           {outcome("(bits & 512) > 0")} AS estimated_calls,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cached_tokens) AS cached_tokens, sum(cache_creation_tokens) AS cache_creation_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(image_tokens) AS image_tokens,
           sum(audio_tokens) AS audio_tokens, sum(video_tokens) AS video_tokens,
           CAST(coalesce(sum(CAST(({cost}) * {multiplier} * {plan_free} AS DECIMAL(38, 16))), 0)
                * CAST(0.000001 AS DECIMAL(7, 6)) AS DECIMAL(38, 22)) AS cost,
           {outcome("r.name IS NULL AND (bits & 1024) > 0")} AS unpriced_calls,
           coalesce(sum(input_tokens + output_tokens) FILTER (r.name IS NULL), 0)
               AS unpriced_tokens
    FROM g
    LEFT JOIN price_keys k ON k.fingerprint = g.key_fingerprint
    LEFT JOIN price_workspaces w ON w.id = {ws}
    LEFT JOIN price_rates r
      ON r.region = {region} AND r.name = {model} AND r.period = {price_period}
     AND r.bucket = (bits >> {_BUCKET_SHIFT}) & {(1 << (period_shift - _BUCKET_SHIFT)) - 1}
     AND r.billing = (bits & {_RATED})::INTEGER
    GROUP BY ALL
    """
