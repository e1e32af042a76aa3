"""The database schema, as numbered migrations applied in order.

Each migration runs in its own transaction together with its row in ``_migrations``, so a
crash leaves the schema either before or after it. A shipped migration is never edited: a
change of schema is a new function appended to ``MIGRATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def m001_events(con: duckdb.DuckDBPyConnection) -> None:
    """Usage events as recorded: one immutable row per model call attempt (``events.COLUMNS``)."""
    con.execute(
        """
        CREATE TABLE events (
            event_id VARCHAR,
            schema_version SMALLINT,
            started_at TIMESTAMPTZ,
            latency_us BIGINT,
            first_byte_us BIGINT,
            recorder VARCHAR,
            api_style VARCHAR,
            endpoint VARCHAR,
            host VARCHAR,
            region VARCHAR,
            key_fingerprint VARCHAR,
            key_hint VARCHAR,
            workspace_observed VARCHAR,
            scenario VARCHAR,
            tags MAP(VARCHAR, VARCHAR),
            model_requested VARCHAR,
            model_returned VARCHAR,
            request_id VARCHAR,
            streamed BOOLEAN,
            batch BOOLEAN,
            billing_plan VARCHAR,
            outcome VARCHAR,
            http_status SMALLINT,
            error_code VARCHAR,
            usage_source VARCHAR,
            input_tokens BIGINT,
            output_tokens BIGINT,
            total_tokens BIGINT,
            cached_tokens BIGINT,
            cache_creation_tokens BIGINT,
            cache_type VARCHAR,
            reasoning_tokens BIGINT,
            image_tokens BIGINT,
            audio_tokens BIGINT,
            video_tokens BIGINT,
            audio_output_tokens BIGINT,
            image_count BIGINT,
            plugins MAP(VARCHAR, BIGINT)
        )
        """
    )
    con.execute(
        "CREATE TABLE ingest_log (ingested_at TIMESTAMPTZ, ingested BIGINT, duplicates BIGINT, "
        "rejected BIGINT)"
    )


def m002_events_ingested_at(con: duckdb.DuckDBPyConnection) -> None:
    """When each event reached the database, so a rollup recomputes only days with new events.

    Filled by its default: ingest inserts with a column list or ``INSERT … BY NAME`` and leaves
    it out (it is not part of the spool line, so not in ``COLUMNS``).
    """
    con.execute("ALTER TABLE events ADD COLUMN ingested_at TIMESTAMPTZ DEFAULT current_timestamp")


def m003_spool_offsets(con: duckdb.DuckDBPyConnection) -> None:
    """How far ingest has read each spool segment, committed with the rows it inserted.

    Also counts quarantined torn lines in ``ingest_log`` beside the rejected ones.
    """
    con.execute(
        "CREATE TABLE spool_offsets (segment VARCHAR, byte_offset BIGINT, updated_at TIMESTAMPTZ)"
    )
    con.execute("ALTER TABLE ingest_log ADD COLUMN quarantined BIGINT DEFAULT 0")


SPEND_COLUMNS = """
    day DATE NOT NULL, workspace_id VARCHAR NOT NULL, scenario VARCHAR NOT NULL,
    model VARCHAR NOT NULL, region VARCHAR NOT NULL, currency VARCHAR NOT NULL,
    is_adjustment BOOLEAN NOT NULL, adjustment_of VARCHAR NOT NULL,
    calls BIGINT, ok_calls BIGINT, failed_calls BIGINT, denied_calls BIGINT,
    interrupted_calls BIGINT, estimated_calls BIGINT,
    input_tokens BIGINT, output_tokens BIGINT, cached_tokens BIGINT, cache_creation_tokens BIGINT,
    reasoning_tokens BIGINT, image_tokens BIGINT, audio_tokens BIGINT, video_tokens BIGINT,
    cost DECIMAL(38, 22), unpriced_calls BIGINT, unpriced_tokens BIGINT
"""


def m004_rollups(con: duckdb.DuckDBPyConnection) -> None:
    """Daily spend (open months), closed-month snapshots, period closes and rollup bookkeeping.

    ``cost`` is exact: rates per 1M tokens have at most 10 decimals and discount multipliers 6,
    so a call's cost has at most 22. Adjustment rows (late events of a closed month) sit on the
    first day of the month they were carried into.
    """
    con.execute(f"CREATE TABLE daily_spend ({SPEND_COLUMNS})")
    con.execute(f"CREATE TABLE closed_spend ({SPEND_COLUMNS})")
    con.execute(
        "CREATE TABLE period_close "
        "(month VARCHAR PRIMARY KEY, closed_at TIMESTAMPTZ NOT NULL, settings_hash VARCHAR)"
    )
    con.execute("CREATE TABLE rollup_state (key VARCHAR PRIMARY KEY, value VARCHAR)")


def m005_deliveries(con: duckdb.DuckDBPyConnection) -> None:
    """The sent-ledger (one row per report, period and recipient) and each scheduled job's
    last run, so a restart neither re-sends a report nor forgets a run it missed."""
    con.execute(
        "CREATE TABLE sent_ledger (report VARCHAR NOT NULL, period VARCHAR NOT NULL, "
        "recipient VARCHAR NOT NULL, message_id VARCHAR NOT NULL, status VARCHAR NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error VARCHAR NOT NULL DEFAULT '', "
        "first_attempt_at TIMESTAMPTZ, sent_at TIMESTAMPTZ, "
        "PRIMARY KEY (report, period, recipient))"
    )
    con.execute(
        "CREATE TABLE job_runs (job VARCHAR PRIMARY KEY, last_run_at TIMESTAMPTZ, "
        "last_status VARCHAR NOT NULL DEFAULT '', last_error VARCHAR NOT NULL DEFAULT '')"
    )


def m006_close_coverage(con: duckdb.DuckDBPyConnection) -> None:
    """Which events each close froze, by ingest batch, so a late commit is never lost.

    One row per (closing month, month of the events, ``ingested_at`` of their batch): the
    month's own events in its snapshot, and earlier closed months' late events in the
    adjustment rows frozen with it. Events of a closed month in no row are carried as
    adjustments. Closes made before this migration are filled in by the rule they used then
    (events ingested up to each close's ``closed_at``).
    """
    con.execute(
        "CREATE TABLE close_coverage (closed_month VARCHAR NOT NULL, event_month VARCHAR NOT NULL, "
        "ingested_at TIMESTAMPTZ NOT NULL, events BIGINT NOT NULL)"
    )
    closed = dict(con.execute("SELECT month, closed_at FROM period_close").fetchall())
    zone = "Asia/Shanghai"  # the default reporting zone: the database does not record one
    for month in sorted(closed):
        # Old rule: frozen by the first close in the run of closed months from ``month`` whose
        # cumulative cutoff reached the batch.
        booked, cutoff = month, closed[month]
        while booked in closed:
            cutoff = max(cutoff, closed[booked])
            con.execute(
                """INSERT INTO close_coverage
                   SELECT ?, ?, ingested_at, count(*) FROM events
                   WHERE strftime(timezone(?, started_at), '%Y-%m') = ?
                     AND ingested_at <= ?
                     AND ingested_at NOT IN (SELECT ingested_at FROM close_coverage
                                             WHERE event_month = ?)
                   GROUP BY ingested_at""",
                [booked, month, zone, month, cutoff, month],
            )
            year, mon = int(booked[:4]), int(booked[5:])
            booked = f"{year + (mon == 12)}-{mon % 12 + 1:02d}"


def m007_price_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Attribution and rates derived from the settings and price books, kept between runs.

    ``costsplit.pricing.prepare`` refills them when the settings or books change (their digest
    is ``price_rates``' comment), so a new connection prices without loading anything. One rate
    per token class for each price row, tier bucket, price period and billing case.
    """
    con.execute("CREATE TABLE price_keys (fingerprint VARCHAR, workspace_id VARCHAR)")
    con.execute(
        "CREATE TABLE price_workspaces (id VARCHAR, region VARCHAR, default_scenario VARCHAR)"
    )
    rates = ", ".join(
        f"{name} DECIMAL(38, 10)"
        for name in ("r_input", "r_cached", "r_cache_creation", "r_output", "r_audio",
                     "r_image", "r_video", "r_audio_output", "r_image_count")
    )  # fmt: skip
    con.execute(
        "CREATE TABLE price_rates (region VARCHAR, name VARCHAR, currency VARCHAR, "
        f"period INTEGER, bucket INTEGER, billing INTEGER, {rates})"
    )
    con.execute(
        "CREATE TABLE price_discounts (kind INTEGER, workspace VARCHAR, model VARCHAR, "
        "period_lo INTEGER, period_hi INTEGER, multiplier DECIMAL(38, 6))"
    )


def m008_events_json_objects(con: duckdb.DuckDBPyConnection) -> None:
    """``events.tags`` and ``events.plugins`` become JSON text instead of MAPs.

    Nothing reads them in SQL, and ingest stores the line's JSON object as it is instead of
    building a map (about a tenth of its work). An empty map becomes ``{}``, NULL stays NULL.
    """
    for column in ("tags", "plugins"):
        con.execute(f"ALTER TABLE events ALTER {column} SET DATA TYPE JSON USING to_json({column})")


def m009_events_uuid_ids(con: duckdb.DuckDBPyConnection) -> None:
    """``events.event_id`` becomes a UUID instead of its text.

    Sixteen bytes instead of thirty-six: ingest parses, compares and compresses it for about a
    tenth less work. Recorders have always written UUIDv7 ids. An id that is not a UUID (only a
    foreign writer could have left one) is kept as the UUID of its MD5, so no row is lost and
    the same text still maps to the same id.
    """
    con.execute(
        "ALTER TABLE events ALTER event_id SET DATA TYPE UUID "
        "USING coalesce(try_cast(event_id AS UUID), md5(event_id)::UUID)"
    )


MIGRATIONS: list[Migration] = [
    m001_events,
    m002_events_ingested_at,
    m003_spool_offsets,
    m004_rollups,
    m005_deliveries,
    m006_close_coverage,
    m007_price_tables,
    m008_events_json_objects,
    m009_events_uuid_ids,
]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this database lacks; return their names."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)"
    )
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            migration(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [migration.__name__])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(migration.__name__)
    return applied
