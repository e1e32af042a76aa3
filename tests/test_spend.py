"""`costsplit spend` and currency conversion: exact decimals, per-currency totals, unpriced."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest
from click.testing import CliRunner
from eventrows import insert_events

from costsplit import rollup, spend
from costsplit.cli import main
from costsplit.config import load_settings
from costsplit.events import UsageEvent
from costsplit.spool import Spool
from costsplit.store import connect

CONFIG = """
[[workspaces]]
id = "ws-alpha"
name = "Alpha"
region = "ap-southeast-1"
key_fingerprints = ["sha256:00000000000000a1"]
default_scenario = "chat"

[[workspaces]]
id = "ws-china"
name = "China"
region = "cn-beijing"
key_fingerprints = ["sha256:00000000000000c1"]

[[exchange_rates]]
month = "2026-03"
from = "CNY"
to = "USD"
rate = "0.1435"
date = "2026-03-31"
source = "treasury"
"""


@pytest.fixture
def world(tmp_path):
    """A config file and a database holding a few March calls (USD, CNY and an unknown model)."""
    config = tmp_path / "costsplit.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, environ={"COSTSPLIT_HOME": str(tmp_path / "home")})
    a, cn = "sha256:00000000000000a1", "sha256:00000000000000c1"
    events = [
        UsageEvent(started_at="2026-03-02T03:00:00Z", key_fingerprint=a, scenario="triage",
                   model_requested="qwen-plus", input_tokens=1000, output_tokens=500),
        UsageEvent(started_at="2026-03-03T03:00:00Z", key_fingerprint=a, scenario="triage",
                   model_requested="qwen-flash", input_tokens=10_000, output_tokens=1000),
        UsageEvent(started_at="2026-03-03T03:00:00Z", key_fingerprint=a,
                   model_requested="qwen9-ultra", input_tokens=70, output_tokens=30),
        UsageEvent(started_at="2026-03-04T03:00:00Z", key_fingerprint=cn, scenario="search",
                   model_requested="qwen-plus", input_tokens=1000, output_tokens=500),
        UsageEvent(started_at="2026-04-01T03:00:00Z", key_fingerprint=a, scenario="triage",
                   model_requested="qwen-plus", input_tokens=1000),
    ]  # fmt: skip
    with connect(settings.database) as con:
        insert_events(con, events)
    return config, settings


def test_convert_uses_the_months_rate_and_never_guesses(world):
    _, settings = world
    assert spend.convert(Decimal("0.0018"), "CNY", "USD", "2026-03", settings) == Decimal(
        "0.0002583"
    )
    assert spend.convert(Decimal("5"), "USD", "USD", "2026-03", settings) == Decimal("5")
    assert spend.convert(Decimal("1"), "CNY", "USD", "2026-04", settings) is None
    assert spend.convert(Decimal("1"), "USD", "CNY", "2026-03", settings) is None
    rate = spend.exchange_rate("CNY", "USD", "2026-03", settings)
    assert (rate.rate, rate.date, rate.source) == (Decimal("0.1435"), "2026-03-31", "treasury")


def test_spend_json_is_exact_with_per_currency_totals_and_unpriced(world):
    config, _ = world
    result = CliRunner().invoke(
        main,
        ["spend", "--config", str(config), "--month", "2026-03", "--by", "workspace", "--json"],
    )
    assert result.exit_code == 0, result.output
    usd = (1000 * Decimal("0.4") + 500 * Decimal("1.2") + 10_000 * Decimal("0.05")
           + 1000 * Decimal("0.4")) / 1_000_000  # fmt: skip
    cny = (1000 * Decimal("0.8") + 500 * Decimal("2")) / 1_000_000
    assert (usd, cny) == (Decimal("0.0019"), Decimal("0.0018"))
    assert json.loads(result.output) == {
        "period": {"start": "2026-03-01", "end": "2026-04-01"},
        "by": "workspace",
        "workspace": None,
        "scenario": None,
        "lines": [
            {"workspace": "ws-alpha", "currency": "USD", "calls": 3, "input_tokens": 11_070,
             "output_tokens": 1530, "cost": "0.0019", "unpriced_calls": 1,
             "unpriced_tokens": 100, "adjustment_of": ""},
            {"workspace": "ws-china", "currency": "CNY", "calls": 1, "input_tokens": 1000,
             "output_tokens": 500, "cost": "0.0018", "unpriced_calls": 0,
             "unpriced_tokens": 0, "adjustment_of": ""},
        ],
        "totals": {"CNY": "0.0018", "USD": "0.0019"},
        "unpriced": {"calls": 1, "tokens": 100},
        "converted": {
            "currency": "USD",
            "total": "0.0021583",  # 0.0019 + 0.0018 × 0.1435
            "rates": [{"month": "2026-03", "from": "CNY", "to": "USD", "rate": "0.1435",
                       "date": "2026-03-31", "source": "treasury"}],
        },
        "notes": [],
    }  # fmt: skip


def test_spend_for_one_scenario_by_day_matches_the_rollup(world):
    config, settings = world
    result = CliRunner().invoke(
        main,
        ["spend", "--config", str(config), "--scenario", "triage", "--since", "2026-03-01",
         "--until", "2026-04-02", "--by", "day", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(x["day"], x["cost"]) for x in data["lines"]] == [
        ("2026-03-02", "0.001"), ("2026-03-03", "0.0009"), ("2026-04-01", "0.0004")
    ]  # fmt: skip
    assert data["totals"] == {"USD": "0.0023"}
    with connect(settings.database) as con:
        rows = rollup.spend_rows(
            con, settings, date(2026, 3, 1), date(2026, 4, 2), scenario="triage"
        )
    assert str(sum(r.cost for r in rows)) == data["totals"]["USD"]  # the report's numbers


def test_spend_table_shows_unpriced_loudly_and_missing_rates(world):
    config, _ = world
    result = CliRunner().invoke(main, ["spend", "--config", str(config), "--month", "2026-04"])
    assert result.exit_code == 0, result.output
    assert "total USD: 0.0004" in result.output
    result = CliRunner().invoke(main, ["spend", "--config", str(config), "--month", "2026-03"])
    assert "UNPRICED: 1 calls, 100 tokens" in result.output
    assert "total CNY: 0.0018" in result.output
    assert "total in USD: 0.0021583 at CNY->USD 0.1435 (2026-03, treasury)" in result.output


def test_rollup_close_and_reprice_commands(world, tmp_path):
    config, _ = world
    runner = CliRunner()
    out = runner.invoke(main, ["rollup", "--config", str(config)])
    assert (out.exit_code, out.output) == (
        0,
        "rolled up every open day: 5 rows, 0 adjustment rows\n",
    )
    out = runner.invoke(main, ["close", "--config", str(config), "2026-03"])
    assert out.exit_code == 0 and out.output.startswith("closed 2026-03 (events ingested up to ")
    out = runner.invoke(main, ["close", "--config", str(config), "2026-03"])
    assert out.exit_code == 1 and "2026-03 is already closed" in out.output
    out = runner.invoke(
        main, ["reprice", "--config", str(config), "--since", "2026-03-01", "--dry-run"]
    )
    assert out.output == (
        "ws-alpha  USD  0.0004 -> 0.0004  (+0)\n"
        "closed, not re-priced: 2026-03\n"
        "dry run: nothing changed\n"
    )


def test_spend_ingests_the_spool_first(world):
    config, settings = world
    with Spool(settings.spool_dir) as spool:
        spool.append(UsageEvent(started_at="2026-03-05T03:00:00Z", scenario="fresh",
                                key_fingerprint="sha256:00000000000000a1",
                                model_requested="qwen-plus", input_tokens=5000))  # fmt: skip
    out = CliRunner().invoke(
        main,
        ["spend", "--config", str(config), "--scenario", "fresh", "--month", "2026-03", "--json"],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["totals"] == {"USD": str(5000 * Decimal("0.4") / 1_000_000)}


def test_bad_period_options_are_one_line_errors(world):
    config, _ = world
    out = CliRunner().invoke(
        main, ["spend", "--config", str(config), "--month", "2026-3x", "--json"]
    )
    assert (out.exit_code, out.output) == (
        1,
        "costsplit: error: --month must be YYYY-MM, got '2026-3x'\n",
    )
