"""The price book: shipped data, user books in JSON and TOML, validation, lookup."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from costsplit.errors import PriceBookError
from costsplit.prices import SHIPPED_BOOK, Tier, load_price_book, rates

MARCH = datetime(2026, 3, 10, tzinfo=UTC)


def write_book(path, prices=(), discounts=(), defaults=None):
    book = {
        "schema": "costsplit.pricebook/v1",
        "prices": list(prices),
        "discounts": list(discounts),
    }
    if defaults:
        book["defaults"] = defaults
    path.write_text(json.dumps(book))
    return path


def test_shipped_book_keeps_source_as_of_and_confidence_of_every_row():
    book = load_price_book()
    data = json.loads(SHIPPED_BOOK.read_text())
    assert len(book.rows) == len(data["prices"]) == 57
    for row in book.rows:
        assert row.source and row.as_of == "2026-02-20" and row.confidence
        # The reference gives no effective dates: the documented default start, no end.
        assert row.valid_from.isoformat() == "2025-01-01T00:00:00+08:00"
        assert row.valid_to is None
    assert {r.currency for r in book.rows if "cn-beijing" in r.regions} == {"CNY"}
    assert {r.currency for r in book.rows if "cn-beijing" not in r.regions} == {"USD"}


def test_lookup_by_region_model_as_requested_and_alias():
    book = load_price_book()
    intl = book.lookup("ap-southeast-1", "qwen-plus-latest", MARCH)
    assert (intl.model, intl.currency) == ("qwen-plus", "USD")
    assert intl.tiers[0] == Tier(262144, Decimal("0.4"), Decimal("1.2"), Decimal("4.0"))
    beijing = book.lookup("cn-beijing", "qwen-plus", MARCH)
    assert (beijing.currency, beijing.tiers[0].input) == ("CNY", Decimal("0.8"))
    # A snapshot priced apart from its alias in Beijing, and unknown names are not priced.
    assert book.lookup("cn-beijing", "qwen3-max-2025-09-23", MARCH).tiers[0].input == 6
    assert book.lookup("ap-southeast-1", "qwen9-ultra", MARCH) is None
    assert book.lookup("eu-central-1", "qwen-plus", MARCH) is None
    assert book.lookup("ap-southeast-1", "qwen-plus", datetime(2024, 12, 1, tzinfo=UTC)) is None


def test_amounts_are_exact_decimals_from_json_numbers_and_strings(tmp_path):
    path = tmp_path / "book.json"
    path.write_text(
        '{"prices": [{"model": "m", "regions": ["ap-southeast-1"], "currency": "USD",'
        ' "tiers": [{"input": 0.1, "output": "0.300000001"}]}]}'
    )
    (row,) = load_price_book([path], shipped=None).rows
    assert row.tiers[0].input == Decimal("0.1")  # not 0.1000000000000000055…
    assert row.tiers[0].output == Decimal("0.300000001")


@pytest.mark.parametrize(
    ("tier_k", "bounds"), [(1024, (32768, 131072, None)), (1000, (32000, 128000, None))]
)
def test_tier_bound_k_is_a_setting_of_the_row(tmp_path, tier_k, bounds):
    row = {
        "model": "m", "regions": ["ap-southeast-1"], "currency": "USD", "tier_k": tier_k,
        "tiers": [{"up_to": "32K", "input": "1"}, {"up_to": "128K", "input": "2"},
                  {"up_to": None, "input": "3"}],
    }  # fmt: skip
    (loaded,) = load_price_book([write_book(tmp_path / "b.json", [row])], shipped=None).rows
    assert tuple(t.up_to for t in loaded.tiers) == bounds
    first = bounds[0]
    assert loaded.tier_for(first).input == 1  # the bound itself is in the lower tier
    assert loaded.tier_for(first + 1).input == 2
    assert loaded.tier_for(10**9).input == 3


def test_toml_user_book_with_a_discount(tmp_path):
    path = tmp_path / "ours.toml"
    path.write_text(
        """
schema = "costsplit.pricebook/v1"

[[prices]]
model = "ft-support-qwen"
regions = ["ap-southeast-1"]
currency = "USD"
from = "2026-03-01"
tiers = [{ input = 0.5, output = "2" }]
source = "our contract"

[[discounts]]
workspace = "ws-support0000000"
model = "qwen-plus"
multiplier = "0.85"
from = 2026-03-01
to = 2026-04-01
"""
    )
    book = load_price_book([path])
    row = book.lookup("ap-southeast-1", "ft-support-qwen", MARCH)
    assert (row.tiers[0].input, row.source, row.book) == (Decimal("0.5"), "our contract", str(path))
    (discount,) = book.discounts
    assert (discount.multiplier, discount.specificity) == (Decimal("0.85"), 3)
    assert discount.valid_to.isoformat() == "2026-04-01T00:00:00+08:00"


def test_a_later_book_wins_where_it_overlaps(tmp_path):
    override = {"model": "qwen-plus", "regions": ["ap-southeast-1"], "currency": "USD",
                "from": "2026-03-16", "tiers": [{"input": "0.3", "output": "1"}]}  # fmt: skip
    book = load_price_book([write_book(tmp_path / "b.json", [override])])
    assert book.lookup("ap-southeast-1", "qwen-plus", MARCH).tiers[0].input == Decimal("0.4")
    later = datetime(2026, 3, 20, tzinfo=UTC)
    assert book.lookup("ap-southeast-1", "qwen-plus", later).tiers[0].input == Decimal("0.3")
    pieces = [(lo.date().isoformat(), hi.year) for row, region, name, lo, hi in book.segments()
              if (region, name) == ("ap-southeast-1", "qwen-plus")]  # fmt: skip
    assert sorted(pieces) == [("2025-01-01", 2026), ("2026-03-16", 9999)]


def test_rates_apply_cache_batch_and_embedding_rules():
    book = load_price_book()
    plus = book.lookup("ap-southeast-1", "qwen-plus", MARCH)
    r = rates(plus, plus.tiers[0])
    assert (r["implicit_rate"], r["ew_rate"], r["er_rate"]) == (
        Decimal("0.08"), Decimal("0.500"), Decimal("0.04"))  # fmt: skip
    assert (r["batch_in"], r["batch_out"], r["batch_think"]) == (
        Decimal("0.20"), Decimal("0.60"), Decimal("2.00"))  # fmt: skip
    turbo = book.lookup("ap-southeast-1", "qwen-turbo", MARCH)  # implicit cache only
    assert rates(turbo, turbo.tiers[0])["er_rate"] == Decimal("0.05")  # no invented discount
    emb = book.lookup("ap-southeast-1", "text-embedding-v4", MARCH)
    assert rates(emb, emb.tiers[0])["out_rate"] == 0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"regions": ["x"], "currency": "USD", "tiers": [{"input": "1"}]},
         "prices[0]: model is required"),
        ({"model": "m", "regions": ["x"], "currency": "usd", "tiers": [{"input": "1"}]},
         "prices[0] (m): currency must be a three-letter code"),
        ({"model": "m", "regions": ["x"], "currency": "USD", "tiers": [{"input": "-1"}]},
         "prices[0] (m).tiers[0].input: must be a non-negative amount"),
        ({"model": "m", "regions": ["x"], "currency": "USD", "tiers": [{"input": True}]},
         "prices[0] (m).tiers[0].input: must be a decimal amount"),
        ({"model": "m", "regions": ["x"], "currency": "USD", "tier_k": 1023,
          "tiers": [{"input": "1"}]}, "tier_k must be 1000 or 1024"),
        ({"model": "m", "regions": ["x"], "currency": "USD",
          "tiers": [{"up_to": "32Q", "input": "1"}]}, "must be a token count"),
        ({"model": "m", "regions": ["x"], "currency": "USD", "from": "2026-03-01",
          "to": "2026-02-01", "tiers": [{"input": "1"}]}, "must be after from"),
        ({"model": "m", "regions": ["x"], "currency": "USD", "tiers": [{"input": "1"}],
          "colour": "red"}, "unknown key(s): colour"),
        ({"model": "m", "regions": ["x"], "currency": "USD",
          "tiers": [{"input": "0.00000000001"}]}, "more than 10 decimals"),
    ],
)  # fmt: skip
def test_bad_rows_name_the_file_and_the_row(tmp_path, row, message):
    path = write_book(tmp_path / "bad.json", [row])
    with pytest.raises(PriceBookError) as caught:
        load_price_book([path], shipped=None)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_overlapping_rows_in_one_book_are_an_error(tmp_path):
    rows = [
        {"model": "m", "regions": ["x"], "currency": "USD", "tiers": [{"input": "1"}]},
        {"model": "n", "aliases": ["m"], "regions": ["x"], "currency": "USD",
         "from": "2026-01-01", "tiers": [{"input": "2"}]},
    ]  # fmt: skip
    with pytest.raises(PriceBookError, match=r"prices\[1\] \(n\): 'm' in x overlaps prices\[0\]"):
        load_price_book([write_book(tmp_path / "b.json", rows)], shipped=None)


def test_unreadable_and_invalid_books(tmp_path):
    with pytest.raises(PriceBookError, match="cannot read price book"):
        load_price_book([tmp_path / "missing.json"], shipped=None)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PriceBookError, match=r"bad\.json: not a valid price book"):
        load_price_book([tmp_path / "bad.json"], shipped=None)
