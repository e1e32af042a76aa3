"""Rollups: worked examples priced by hand, attribution, incremental refresh, periods.

Every expected cost below is computed by hand in the test from the list prices in
config/prices.json (USD or CNY per 1M tokens), written out so a reader can check it.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from decimal import Decimal

import pytest
from eventrows import insert_events
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from costsplit import rollup
from costsplit.config import Settings, Workspace
from costsplit.events import UsageEvent
from costsplit.periods import close_month, reprice
from costsplit.store import connect

M = Decimal(1_000_000)
KEY_A, KEY_B, KEY_CN = (
    "sha256:00000000000000a1",
    "sha256:00000000000000b1",
    "sha256:00000000000000c1",
)
ALPHA = Workspace(id="ws-alpha", name="Alpha", region="ap-southeast-1", cost_centre="CC-1",
                  key_fingerprints=(KEY_A,), default_scenario="chat")  # fmt: skip
BETA = Workspace(id="ws-beta", name="Beta", region="ap-southeast-1", key_fingerprints=(KEY_B,))
CHINA = Workspace(id="ws-china", name="China", region="cn-beijing", key_fingerprints=(KEY_CN,))
SETTINGS = Settings(workspaces=(ALPHA, BETA, CHINA))


def call(**fields) -> UsageEvent:
    """A successful qwen-plus call from Alpha's key on 10 March 2026 (Beijing afternoon)."""
    base = dict(started_at="2026-03-10T06:00:00.000000Z", key_fingerprint=KEY_A,
                model_requested="qwen-plus", usage_source="reported")  # fmt: skip
    return UsageEvent(**{**base, **fields})


def rows_for(tmp_path, events, settings=SETTINGS, start=date(2026, 3, 1), end=date(2026, 4, 1)):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, events)
        rollup.refresh(con, settings)
        return rollup.spend_rows(con, settings, start, end)


def cost_of(tmp_path, *events, settings=SETTINGS) -> Decimal:
    (row,) = rows_for(tmp_path, list(events), settings)
    return row.cost


def book(tmp_path, prices=(), discounts=()) -> Settings:
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"prices": list(prices), "discounts": list(discounts)}))
    return dataclasses.replace(SETTINGS, price_books=(path,))


# --- worked examples -------------------------------------------------------------------------


def test_uncached_input_and_output(tmp_path):
    # qwen-plus, international, tier ≤256K: input 0.4, output 1.2 USD per 1M tokens.
    expected = (1000 * Decimal("0.4") + 500 * Decimal("1.2")) / M
    assert expected == Decimal("0.001")
    assert cost_of(tmp_path, call(input_tokens=1000, output_tokens=500)) == expected


def test_implicit_cache_hits_at_20_percent_of_input(tmp_path):
    expected = (400 * Decimal("0.4") + 600 * Decimal("0.4") * Decimal("0.2")) / M
    assert expected == Decimal("0.000208")
    assert cost_of(tmp_path, call(input_tokens=1000, cached_tokens=600)) == expected


def test_explicit_cache_creation_at_125_percent(tmp_path):
    # cache_creation_tokens > 0 marks the call as explicit-cache.
    expected = (500 * Decimal("0.4") + 1500 * Decimal("0.4") * Decimal("1.25")) / M
    assert expected == Decimal("0.00095")
    assert cost_of(tmp_path, call(input_tokens=2000, cache_creation_tokens=1500)) == expected


def test_explicit_cache_hit_at_10_percent_when_reported_ephemeral(tmp_path):
    expected = (500 * Decimal("0.4") + 1500 * Decimal("0.4") * Decimal("0.1")) / M
    assert expected == Decimal("0.00026")
    hit = call(input_tokens=2000, cached_tokens=1500, cache_type="ephemeral")
    assert cost_of(tmp_path, hit) == expected


def test_explicit_call_with_creation_and_hits(tmp_path):
    expected = (
        300 * Decimal("0.4") + 1200 * Decimal("0.04") + 500 * Decimal("0.5") + 10 * Decimal("1.2")
    ) / M
    assert expected == Decimal("0.00043")
    event = call(input_tokens=2000, cached_tokens=1200, cache_creation_tokens=500, output_tokens=10)
    assert cost_of(tmp_path, event) == expected


def test_thinking_price_only_when_reasoning_tokens_were_produced(tmp_path):
    thinking = (1000 * Decimal("0.4") + 500 * Decimal("4.0")) / M  # output_thinking 4.0
    plain = (1000 * Decimal("0.4") + 500 * Decimal("1.2")) / M
    rows = rows_for(tmp_path, [
        call(input_tokens=1000, output_tokens=500, reasoning_tokens=100, scenario="think"),
        call(input_tokens=1000, output_tokens=500, reasoning_tokens=0, scenario="plain"),
    ])  # fmt: skip
    assert {r.scenario: r.cost for r in rows} == {"think": thinking, "plain": plain}
    assert (thinking, plain) == (Decimal("0.0024"), Decimal("0.001"))


@pytest.mark.parametrize(
    ("input_tokens", "expected"),
    [
        # K = 1024: the 256K bound is 262,144 tokens; the whole request moves tier.
        (262_144, (262_144 * Decimal("0.4") + 1000 * Decimal("1.2")) / M),
        (262_145, (262_145 * Decimal("1.2") + 1000 * Decimal("3.6")) / M),
        (256_001, (256_001 * Decimal("0.4") + 1000 * Decimal("1.2")) / M),
    ],
)
def test_qwen_plus_tier_boundary_both_sides(tmp_path, input_tokens, expected):
    assert cost_of(tmp_path, call(input_tokens=input_tokens, output_tokens=1000)) == expected


@pytest.mark.parametrize(
    ("input_tokens", "expected"),
    [(256_000, 256_000 * Decimal("0.4") / M), (256_001, 256_001 * Decimal("1.2") / M)],
)
def test_tier_boundary_with_k_1000_from_a_user_book(tmp_path, input_tokens, expected):
    # UNCERTAIN in the reference: K may be 1,000; a row may say so.
    row = {"model": "qwen-plus", "regions": ["ap-southeast-1"], "currency": "USD",
           "tier_k": 1000, "tiers": [{"up_to": "256K", "input": "0.4", "output": "1.2"},
                                     {"up_to": "1M", "input": "1.2", "output": "3.6"}]}  # fmt: skip
    assert cost_of(tmp_path, call(input_tokens=input_tokens), settings=book(tmp_path, [row])) == (
        expected
    )


@pytest.mark.parametrize(
    ("input_tokens", "expected"),
    [(32_768, 32_768 * Decimal("1.2") / M), (32_769, 32_769 * Decimal("2.4") / M),
     (131_073, 131_073 * Decimal("3.0") / M)],
)  # fmt: skip
def test_qwen3_max_three_tiers(tmp_path, input_tokens, expected):
    assert cost_of(tmp_path, call(model_requested="qwen3-max", input_tokens=input_tokens)) == (
        expected
    )


def test_batch_at_half_price_with_no_cache_discount(tmp_path):
    expected = (1000 * Decimal("0.4") + 500 * Decimal("1.2")) * Decimal("0.5") / M
    assert expected == Decimal("0.0005")
    batch = call(batch=True, input_tokens=1000, cached_tokens=600, output_tokens=500)
    assert cost_of(tmp_path, batch) == expected


def test_batch_omni_call_at_half_of_each_modality_price(tmp_path):
    # qwen3-omni-flash: text in 0.43, audio in 3.81, multimodal text out 3.06; batch ratio 0.5.
    expected = (600 * Decimal("0.43") + 400 * Decimal("3.81") + 200 * Decimal("3.06")) / M / 2
    assert expected == Decimal("0.001197")
    omni = call(model_requested="qwen3-omni-flash", batch=True, input_tokens=1000,
                audio_tokens=400, output_tokens=200)  # fmt: skip
    assert cost_of(tmp_path, omni) == expected


def test_batch_per_image_call_at_half_price(tmp_path):
    row = {"model": "wan-image-test", "kind": "image", "regions": ["ap-southeast-1"],
           "currency": "USD", "per_image": "0.02", "tiers": [{"input": "0"}]}  # fmt: skip
    event = call(model_requested="wan-image-test", endpoint="other", image_count=3, batch=True)
    assert cost_of(tmp_path, event, settings=book(tmp_path, [row])) == Decimal("0.03")


def test_embeddings_bill_input_only(tmp_path):
    expected = 10_000 * Decimal("0.07") / M
    embedding = call(model_requested="text-embedding-v4", endpoint="embedding",
                     input_tokens=10_000, output_tokens=5)  # fmt: skip
    assert cost_of(tmp_path, embedding) == expected == Decimal("0.0007")


def test_omni_per_modality_prices(tmp_path):
    text_only = (1000 * Decimal("0.43") + 200 * Decimal("1.66")) / M
    multimodal = (500 * Decimal("0.43") + 400 * Decimal("3.81") + 100 * Decimal("0.78")
                  + 200 * Decimal("3.06")) / M  # fmt: skip
    # Audio produced: only the audio output is billed (its text is not).
    audio_out = (1000 * Decimal("0.43") + 250 * Decimal("15.11")) / M
    omni = dict(model_requested="qwen3-omni-flash", input_tokens=1000)
    rows = rows_for(tmp_path, [
        call(**omni, output_tokens=200, scenario="a-text"),
        call(**omni, output_tokens=200, audio_tokens=400, image_tokens=100, scenario="b-mm"),
        call(**omni, output_tokens=300, audio_output_tokens=250, scenario="c-audio"),
    ])  # fmt: skip
    assert [r.cost for r in rows] == [text_only, multimodal, audio_out]
    assert [r.cost for r in rows] == [
        Decimal("0.000762"),
        Decimal("0.002429"),
        Decimal("0.0042075"),
    ]


def test_per_image_price_from_a_user_book(tmp_path):
    row = {"model": "wan-image-test", "kind": "image", "regions": ["ap-southeast-1"],
           "currency": "USD", "per_image": "0.02", "tiers": [{"input": "0"}]}  # fmt: skip
    event = call(model_requested="wan-image-test", endpoint="other", image_count=3)
    assert cost_of(tmp_path, event, settings=book(tmp_path, [row])) == 3 * Decimal("0.02")


def test_beijing_calls_are_priced_in_cny(tmp_path):
    expected = (1000 * Decimal("0.8") + 500 * Decimal("2")) / M  # CNY list price
    (row,) = rows_for(
        tmp_path, [call(key_fingerprint=KEY_CN, input_tokens=1000, output_tokens=500)]
    )
    assert (row.workspace_id, row.region, row.currency, row.cost) == (
        "ws-china", "cn-beijing", "CNY", expected)  # fmt: skip
    assert expected == Decimal("0.0018")


def test_mid_month_price_change(tmp_path):
    # A new price from 16 March, Beijing time (= 15 March 16:00 UTC).
    row = {"model": "qwen-plus", "regions": ["ap-southeast-1"], "currency": "USD",
           "from": "2026-03-16", "tiers": [{"input": "0.3", "output": "1.0"}]}  # fmt: skip
    before = call(started_at="2026-03-15T15:59:59.999999Z", input_tokens=1000, output_tokens=100)
    after = call(started_at="2026-03-15T16:00:00.000000Z", input_tokens=1000, output_tokens=100)
    rows = rows_for(tmp_path, [before, after], book(tmp_path, [row]))
    assert [(r.day, r.cost) for r in rows] == [
        (date(2026, 3, 15), (1000 * Decimal("0.4") + 100 * Decimal("1.2")) / M),
        (date(2026, 3, 16), (1000 * Decimal("0.3") + 100 * Decimal("1.0")) / M),
    ]


def test_unknown_model_is_unpriced_never_zero(tmp_path):
    rows = rows_for(tmp_path, [
        call(model_requested="qwen9-ultra", input_tokens=1000, output_tokens=100),
        call(model_requested="qwen9-ultra", outcome="http_error", http_status=500),
    ])  # fmt: skip
    assert [(r.model, r.calls, r.cost, r.unpriced_calls, r.unpriced_tokens) for r in rows] == [
        ("qwen9-ultra", 2, Decimal(0), 1, 1100)
    ]


def test_negotiated_discount_for_a_workspace_and_model(tmp_path):
    discount = {"workspace": "ws-alpha", "model": "qwen-plus", "multiplier": "0.9"}
    other = {"model": "qwen-plus", "multiplier": "0.95", "from": "2026-03-12"}  # less specific
    settings = book(tmp_path, discounts=[discount, other])
    rows = rows_for(tmp_path, [
        call(input_tokens=1000, output_tokens=500),  # Alpha: 0.9
        call(key_fingerprint=KEY_B, input_tokens=1000, output_tokens=500),  # before 12 March: none
        call(key_fingerprint=KEY_B, started_at="2026-03-20T06:00:00Z", input_tokens=1000),
    ], settings)  # fmt: skip
    assert [(r.workspace_id, r.day, r.cost) for r in rows] == [
        ("ws-alpha", date(2026, 3, 10), Decimal("0.001") * Decimal("0.9")),
        ("ws-beta", date(2026, 3, 10), Decimal("0.001")),
        ("ws-beta", date(2026, 3, 20), 1000 * Decimal("0.4") / M * Decimal("0.95")),
    ]


def test_a_plan_call_costs_zero_but_an_unknown_model_stays_unpriced(tmp_path):
    rows = rows_for(tmp_path, [
        call(billing_plan="plan", input_tokens=1000, output_tokens=500, reasoning_tokens=10),
        call(billing_plan="plan", model_requested="qwen9-ultra", input_tokens=1000),
    ])  # fmt: skip
    assert [(r.model, r.calls, r.cost, r.unpriced_calls, r.unpriced_tokens) for r in rows] == [
        ("qwen-plus", 1, Decimal(0), 0, 0),
        ("qwen9-ultra", 1, Decimal(0), 1, 1000),
    ]


def test_whole_row_with_attribution_alias_and_outcomes(tmp_path):
    events = [
        call(model_requested="qwen-plus-latest", input_tokens=1000, output_tokens=500,
             cached_tokens=200, reasoning_tokens=50, image_tokens=0),
        call(model_requested="qwen-plus-latest", outcome="interrupted", usage_source="estimated",
             input_tokens=100, output_tokens=10),
        call(model_requested="qwen-plus-latest", outcome="denied_local", usage_source="missing"),
    ]  # fmt: skip
    (row,) = rows_for(tmp_path, events)
    cost = (800 * Decimal("0.4") + 200 * Decimal("0.08") + 500 * Decimal("4.0")
            + 100 * Decimal("0.4") + 10 * Decimal("1.2")) / M  # fmt: skip
    assert row == rollup.SpendRow(
        day=date(2026, 3, 10), workspace_id="ws-alpha", workspace_name="Alpha",
        cost_centre="CC-1", scenario="chat", model="qwen-plus-latest", region="ap-southeast-1",
        currency="USD", calls=3, ok_calls=1, failed_calls=0, denied_calls=1,
        interrupted_calls=1, estimated_calls=1, input_tokens=1100, output_tokens=510,
        cached_tokens=200, cache_creation_tokens=0, reasoning_tokens=50, image_tokens=0,
        audio_tokens=0, video_tokens=0, cost=cost, unpriced_calls=0, unpriced_tokens=0,
    )  # fmt: skip


def test_attribution_fallbacks(tmp_path):
    events = [
        call(key_fingerprint="sha256:0000000000000000", workspace_observed="ws-elsewhere",
             region="ap-southeast-1", scenario="x", input_tokens=1),
        call(key_fingerprint="sha256:0000000000000000", region="", input_tokens=1),
        call(key_fingerprint=KEY_B, scenario="", input_tokens=1),
        call(key_fingerprint=KEY_CN, region="", scenario="search", input_tokens=1),
    ]  # fmt: skip
    got = [(r.workspace_id, r.workspace_name, r.scenario, r.region, r.currency)
           for r in rows_for(tmp_path, events)]  # fmt: skip
    assert got == [
        ("unattributed", "unattributed", "unassigned", "", "USD"),
        ("ws-beta", "Beta", "unassigned", "ap-southeast-1", "USD"),
        ("ws-china", "China", "search", "cn-beijing", "CNY"),
        ("ws-elsewhere", "ws-elsewhere", "x", "ap-southeast-1", "USD"),
    ]


def test_days_are_reporting_timezone_days(tmp_path):
    # 15:59:59 UTC is 23:59:59 in Shanghai; 16:00 UTC is the next day there.
    events = [call(started_at="2026-03-31T15:59:59Z", input_tokens=1),
              call(started_at="2026-03-31T16:00:00Z", input_tokens=1)]  # fmt: skip
    rows = rows_for(tmp_path, events, end=date(2026, 4, 2))
    assert [r.day for r in rows] == [date(2026, 3, 31), date(2026, 4, 1)]
    utc = dataclasses.replace(SETTINGS, timezone="UTC")
    with connect(tmp_path / "costsplit.duckdb") as con:
        rollup.refresh(con, utc)  # a timezone change re-derives the open days
        assert [r.day for r in rollup.spend_rows(con, utc, date(2026, 3, 1), date(2026, 5, 1))] == [
            date(2026, 3, 31)
        ]


# --- incremental refresh, re-attribution, periods ----------------------------------------------


def test_refresh_adds_only_new_events_and_rerunning_changes_nothing(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000), call(started_at="2026-03-11T06:00:00Z")])
        first = rollup.refresh(con, SETTINGS)
        assert (first.full, first.days) == (True, 2)
        assert rollup.refresh(con, SETTINGS) == rollup.RollupResult(0, False, 0, 0)
        insert_events(con, [call(input_tokens=1000)])
        again = rollup.refresh(con, SETTINGS)
        assert (again.full, again.days) == (False, 1)
        (row, _) = rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1))
        assert (row.calls, row.input_tokens, row.cost) == (2, 2000, Decimal("0.0008"))
        assert rollup.last_ingested_at(con) is not None


def test_new_events_rows_are_appended_then_folded(tmp_path, monkeypatch):
    monkeypatch.setattr(rollup, "FOLD_AFTER_ROWS", 2)

    def stored(con):
        return con.execute(
            "SELECT scenario, calls, input_tokens FROM daily_spend ORDER BY ALL"
        ).fetchall()

    def read(con):
        rows = rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1))
        return [(r.scenario, r.calls, r.input_tokens, r.cost) for r in rows]

    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        rollup.refresh(con, SETTINGS)
        insert_events(con, [call(input_tokens=2000)])
        assert rollup.refresh(con, SETTINGS) == rollup.RollupResult(1, False, 1, 0)
        # The new event's row sits beside the stored one and reads as one row.
        assert stored(con) == [("chat", 1, 1000), ("chat", 1, 2000)]
        assert read(con) == [("chat", 2, 3000, Decimal("0.0012"))]
        insert_events(con, [call(input_tokens=4000), call(input_tokens=8000, scenario="qa")])
        rollup.refresh(con, SETTINGS)  # 3 rows appended since the full refresh: folded
        assert stored(con) == [("chat", 3, 7000), ("qa", 1, 8000)]
        assert read(con) == [
            ("chat", 3, 7000, Decimal("0.0028")),
            ("qa", 1, 8000, Decimal("0.0032")),
        ]


def test_price_tables_are_kept_between_connections_and_refilled_on_a_change(tmp_path):
    def rates_digest(con):
        return con.execute(
            "SELECT comment FROM duckdb_tables() WHERE table_name = 'price_rates'"
        ).fetchone()[0]

    def costs(con, settings):
        rows = rollup.spend_rows(con, settings, date(2026, 3, 1), date(2026, 4, 1))
        return [(r.calls, r.cost) for r in rows]

    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        rollup.refresh(con, SETTINGS)
        digest = rates_digest(con)
        # Not a real price change: shows below that a new connection prices with the stored rates.
        con.execute("UPDATE price_rates SET r_input = 2 * r_input")
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        rollup.refresh(con, SETTINGS)
        assert rates_digest(con) == digest
        assert costs(con, SETTINGS) == [(2, Decimal("0.0004") + Decimal("0.0008"))]
        # A new price book refills them, and every open day is priced again.
        row = {"model": "qwen-plus", "regions": ["ap-southeast-1"], "currency": "USD",
               "tiers": [{"input": "0.3", "output": "1.0"}]}  # fmt: skip
        cheaper = book(tmp_path, [row])
        assert rollup.refresh(con, cheaper).full
        assert rates_digest(con) != digest
        assert costs(con, cheaper) == [(2, Decimal("0.0006"))]


def test_a_late_commit_below_the_watermark_is_caught(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        rollup.refresh(con, SETTINGS)
        # An event that committed after the refresh but carries an older ingested_at.
        insert_events(con, [call(input_tokens=1000, scenario="late")])
        con.execute(
            "UPDATE events SET ingested_at = ingested_at - INTERVAL 1 MINUTE "
            "WHERE scenario = 'late'"
        )
        rollup.refresh(con, dataclasses.replace(SETTINGS))
        rows = rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1))
        assert [(r.scenario, r.calls) for r in rows] == [("chat", 1), ("late", 1)]


def test_remapping_a_key_rederives_open_periods(tmp_path):
    events = [
        call(input_tokens=1000, output_tokens=500),
        call(key_fingerprint=KEY_B, input_tokens=1000),
    ]
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, events)
        rollup.refresh(con, SETTINGS)
        moved = dataclasses.replace(
            SETTINGS,
            workspaces=(dataclasses.replace(ALPHA, key_fingerprints=(KEY_A, KEY_B)),
                        dataclasses.replace(BETA, key_fingerprints=()), CHINA),
        )  # fmt: skip
        assert rollup.refresh(con, moved).full
        rows = rollup.spend_rows(con, moved, date(2026, 3, 1), date(2026, 4, 1))
    assert [(r.workspace_id, r.scenario, r.cost) for r in rows] == [
        ("ws-alpha", "chat", Decimal("0.0014"))
    ]


def backdate(con, scenario: str, interval: str) -> None:
    """Give the events of ``scenario`` an older ``ingested_at``: a transaction that began then
    and committed only now."""
    con.execute(
        f"UPDATE events SET ingested_at = ingested_at - INTERVAL {interval} WHERE scenario = ?",
        [scenario],
    )


def test_a_commit_later_than_the_margin_is_caught_by_the_count(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        rollup.refresh(con, SETTINGS)
        insert_events(
            con, [call(input_tokens=1000, scenario="slow", started_at="2026-03-02T01:00:00Z")]
        )
        backdate(con, "slow", "1 HOUR")  # far below the watermark less the 5-minute margin
        assert rollup.refresh(con, SETTINGS).days == 1
        rows = rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1))
        assert [(r.day, r.scenario, r.calls) for r in rows] == [
            (date(2026, 3, 2), "slow", 1),
            (date(2026, 3, 10), "chat", 1),
        ]


def test_a_late_commit_ingested_before_the_close_becomes_an_adjustment(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        close_month(con, SETTINGS, "2026-03")
        # A March event whose transaction began before the close and committed after it.
        insert_events(con, [call(input_tokens=2000, scenario="late")])
        backdate(con, "late", "1 HOUR")
        closed_at = rollup.period_status(con, "2026-03").closed_at
        assert (
            con.execute("SELECT max(ingested_at) FROM events WHERE scenario = 'late'").fetchone()[0]
            < closed_at
        )
        rollup.refresh(con, SETTINGS)
        april = rollup.spend_rows(con, SETTINGS, date(2026, 4, 1), date(2026, 5, 1))
        assert [(r.day, r.scenario, r.calls, r.cost, r.adjustment_of) for r in april] == [
            (date(2026, 4, 1), "late", 1, Decimal("0.0008"), "2026-03")
        ]
        # Closing April freezes that adjustment; another old-stamped March event goes to May.
        close_month(con, SETTINGS, "2026-04")
        insert_events(con, [call(input_tokens=3000, scenario="later")])
        backdate(con, "later", "2 HOUR")
        rollup.refresh(con, SETTINGS)
        rows = rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 6, 1))
        assert [(r.day, r.scenario, r.calls, r.is_adjustment) for r in rows] == [
            (date(2026, 3, 10), "chat", 1, False),
            (date(2026, 4, 1), "late", 1, True),
            (date(2026, 5, 1), "later", 1, True),
        ]
        # Every event is in the reports exactly once.
        assert sum(r.calls for r in rows) == 3
        assert rollup.refresh(con, SETTINGS).rows == 0


def test_close_freezes_a_month_and_late_events_become_adjustments(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [call(input_tokens=1000)])
        status = close_month(con, SETTINGS, "2026-03")
        assert status.closed and status.adjustments_total == {}
        # A late March event, and a price change: the closed month keeps its snapshot.
        insert_events(con, [call(input_tokens=2000, output_tokens=100)])
        late = dataclasses.replace(SETTINGS, timezone="Asia/Shanghai")
        rollup.refresh(con, late)
        march = rollup.spend_rows(con, late, date(2026, 3, 1), date(2026, 4, 1))
        april = rollup.spend_rows(con, late, date(2026, 4, 1), date(2026, 5, 1))
        assert [(r.day, r.cost, r.is_adjustment) for r in march] == [
            (date(2026, 3, 10), Decimal("0.0004"), False)
        ]
        assert [(r.day, r.calls, r.cost, r.is_adjustment, r.adjustment_of) for r in april] == [
            (date(2026, 4, 1), 1, Decimal("0.00092"), True, "2026-03")
        ]
        assert rollup.period_status(con, "2026-04").adjustments_total == {"USD": Decimal("0.00092")}
        assert rollup.refresh(con, late).rows == 0  # idempotent
        # Closing April freezes the adjustment there; a later March event goes to May.
        close_month(con, late, "2026-04")
        insert_events(con, [call(input_tokens=3000)])
        rollup.refresh(con, late)
        may = rollup.spend_rows(con, late, date(2026, 4, 1), date(2026, 6, 1))
        assert [(r.day, r.cost, r.adjustment_of) for r in may] == [
            (date(2026, 4, 1), Decimal("0.00092"), "2026-03"),
            (date(2026, 5, 1), Decimal("0.0012"), "2026-03"),
        ]
        with pytest.raises(Exception, match="2026-03 is already closed"):
            close_month(con, late, "2026-03")


def test_reprice_shows_what_a_price_change_moves_per_workspace(tmp_path):
    with connect(tmp_path / "costsplit.duckdb") as con:
        insert_events(con, [
            call(input_tokens=1000),
            call(key_fingerprint=KEY_CN, input_tokens=1000),
            call(model_requested="qwen9-ultra", input_tokens=5),
        ])  # fmt: skip
        rollup.refresh(con, SETTINGS)
        cheaper = book(tmp_path, [
            {"model": "qwen-plus", "regions": ["ap-southeast-1"], "currency": "USD",
             "from": "2026-03-01", "tiers": [{"input": "0.2", "output": "1"}]},
            {"model": "qwen9-ultra", "regions": ["ap-southeast-1"], "currency": "USD",
             "tiers": [{"input": "10"}]},
        ])  # fmt: skip
        dry = reprice(con, cheaper, date(2026, 3, 1), dry_run=True)
        assert [(x.workspace_id, x.currency, x.before, x.after, x.delta) for x in dry.lines] == [
            ("ws-alpha", "USD", Decimal("0.0004"), Decimal("0.00025"), Decimal("-0.00015")),
            ("ws-china", "CNY", Decimal("0.0008"), Decimal("0.0008"), Decimal("0")),
        ]
        assert (dry.lines[0].unpriced_tokens_before, dry.lines[0].unpriced_tokens_after) == (5, 0)
        assert rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1))[0].cost == (
            Decimal("0.0004") - Decimal("0.0004") + Decimal("0.0004")
        )  # unchanged by a dry run
        applied = reprice(con, cheaper, date(2026, 3, 1))
        assert applied.applied
        rows = rollup.spend_rows(con, cheaper, date(2026, 3, 1), date(2026, 4, 1))
        total = sum(r.cost for r in rows if r.currency == "USD")
        assert total == Decimal("0.00025")


# --- properties ------------------------------------------------------------------------------

EVENTS = st.builds(
    call,
    started_at=st.sampled_from(
        ["2026-03-01T01:00:00Z", "2026-03-02T20:00:00Z", "2026-03-30T17:00:00Z"]
    ),
    key_fingerprint=st.sampled_from([KEY_A, KEY_B, KEY_CN, "sha256:00000000000000ff"]),
    scenario=st.sampled_from([None, "", "triage", "search"]),
    model_requested=st.sampled_from(["qwen-plus", "qwen3-max", "qwen-flash", "mystery"]),
    region=st.sampled_from(["ap-southeast-1", "cn-beijing"]),  # priced alike wherever attributed
    input_tokens=st.integers(64, 300_000),  # cached tokens are a subset of input
    output_tokens=st.integers(0, 5_000),
    cached_tokens=st.sampled_from([0, 64]),
    reasoning_tokens=st.sampled_from([0, 10]),
    batch=st.booleans(),
)
PROPERTY = hsettings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def _totals(rows):
    out: dict[str, Decimal] = {}
    for r in rows:
        out[r.currency] = out.get(r.currency, Decimal(0)) + r.cost
    return out


@PROPERTY
@given(events=st.lists(EVENTS, min_size=1, max_size=12))
def test_reattribution_moves_cost_without_changing_the_total(tmp_path_factory, events):
    folder = tmp_path_factory.mktemp("attr")
    moved = dataclasses.replace(
        SETTINGS,
        workspaces=(
            dataclasses.replace(ALPHA, key_fingerprints=(KEY_A, KEY_B, "sha256:00000000000000ff")),
            dataclasses.replace(BETA, key_fingerprints=()),
            CHINA,
        ),
    )  # fmt: skip
    with connect(folder / "costsplit.duckdb") as con:
        insert_events(con, events)
        rollup.refresh(con, SETTINGS)
        before = _totals(rollup.spend_rows(con, SETTINGS, date(2026, 3, 1), date(2026, 4, 1)))
        rollup.refresh(con, moved)
        after_rows = rollup.spend_rows(con, moved, date(2026, 3, 1), date(2026, 4, 1))
    assert _totals(after_rows) == before
    assert {r.workspace_id for r in after_rows} <= {"ws-alpha", "ws-china"}


def test_m006_fills_close_coverage_for_closes_made_before_it(tmp_path):
    import duckdb

    from costsplit.migrations import MIGRATIONS, m006_close_coverage

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    for migration in MIGRATIONS[: MIGRATIONS.index(m006_close_coverage)]:
        migration(con)
    insert_events(con, [call(scenario="before"), call(scenario="after")])
    con.execute(
        "UPDATE events SET ingested_at = TIMESTAMPTZ '2026-04-01 10:00:00+00' "
        "WHERE scenario = 'before'"
    )
    con.execute(
        "UPDATE events SET ingested_at = TIMESTAMPTZ '2026-04-03 10:00:00+00' "
        "WHERE scenario = 'after'"
    )
    con.execute("INSERT INTO period_close VALUES ('2026-03', '2026-04-02 00:00:00+00', '')")
    m006_close_coverage(con)
    # The old rule: what was ingested up to the close is frozen; the rest is carried over.
    assert con.execute(
        "SELECT closed_month, event_month, epoch(ingested_at)::BIGINT, events FROM close_coverage"
    ).fetchall() == [("2026-03", "2026-03", 1775037600, 1)]
    con.close()
