"""Pricing against an oracle: a plain per-call pricer written from the reference rules.

The oracle below reads the price books' JSON itself and prices one call at a time with
Python ``Decimal``s, straight from the billing rules (reference §7.1); it shares no code with
``costsplit.prices`` or ``costsplit.pricing``. The property: for any set of events, the SQL
rollup (grouped, then priced) gives the oracle's per-(day, workspace, scenario, model,
region, currency) sums exactly, whatever the insertion order and however ingestion is split
into refreshes; scenarios sum to their workspace and workspaces to the total, per currency.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import re
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from eventrows import insert_events
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from costsplit import rollup
from costsplit.config import Settings, Workspace
from costsplit.events import UsageEvent
from costsplit.prices import SHIPPED_BOOK
from costsplit.store import connect

EXACT = decimal.Context(prec=100, traps=[decimal.Inexact, decimal.Rounded])


# --- the oracle ------------------------------------------------------------------------------


@dataclasses.dataclass
class OracleRow:
    names: list[str]
    kind: str
    regions: list[str]
    currency: str
    start: datetime
    end: datetime | None
    tiers: list[
        tuple[int | None, Decimal, Decimal, Decimal]
    ]  # (up to, in, out, thinking) per token
    cache: dict[str, Decimal]
    batch_ratio: Decimal
    modalities: dict | None  # per token
    per_image: Decimal


def oracle_book(*paths) -> tuple[list[OracleRow], list[dict]]:
    """Every row of the books in order (a later match wins) and the discounts."""
    rows, discounts = [], []
    for path in paths:
        data = json.loads(path.read_text(), parse_float=Decimal)
        defaults = data.get("defaults", {})  # documented defaults: from 2025-01-01, K = 1024
        zone = ZoneInfo(defaults.get("timezone", "Asia/Shanghai"))

        def moment(text, zone=zone):
            return (
                None if text is None else datetime.combine(date.fromisoformat(text), time(), zone)
            )

        for item in data.get("prices", []):
            k = item.get("tier_k", defaults.get("tier_k", 1024))
            unit = Decimal(item.get("unit_tokens", defaults.get("unit_tokens", 1_000_000)))

            def per_token(value, unit=unit):
                return EXACT.divide(Decimal(str(value)), unit)

            def bound(text, k=k):
                if text is None:
                    return None
                number, suffix = re.fullmatch(r"(\d+)([KM]?)", text).groups()
                return int(number) * {"": 1, "K": k, "M": 1_000_000}[suffix]

            tiers = [
                (bound(t.get("up_to")), per_token(t["input"]), per_token(t.get("output", 0)),
                 per_token(t.get("output_thinking", t.get("output", 0))))
                for t in item["tiers"]
            ]  # fmt: skip
            modalities = item.get("modalities")
            if modalities:
                modalities = {side: {name: per_token(v) for name, v in prices.items()}
                              for side, prices in modalities.items()}  # fmt: skip
            ratio = item.get("batch_ratio", defaults.get("batch_ratio", "0.5"))
            start = item.get("from", defaults.get("from", "2025-01-01"))
            rows.append(OracleRow(
                names=[item["model"], *item.get("aliases", [])], kind=item.get("kind", "chat"),
                regions=item["regions"], currency=item["currency"],
                start=moment(start), end=moment(item.get("to")),
                tiers=tiers, cache={k: Decimal(str(v)) for k, v in item.get("cache", {}).items()},
                batch_ratio=Decimal(str(ratio)),
                modalities=modalities, per_image=Decimal(str(item.get("per_image", 0))),
            ))  # fmt: skip
        for item in data.get("discounts", []):
            discounts.append({**item, "from": moment(item["from"]), "to": moment(item.get("to"))})
    return rows, discounts


def oracle_price(event: UsageEvent, model: str, region: str, workspace: str, book):
    """(currency, cost) of one call; cost None when no row prices it."""
    rows, discounts = book
    at = datetime.fromisoformat(event.started_at)
    row = None
    for candidate in rows:
        if (region in candidate.regions and model in candidate.names and candidate.start <= at
                and (candidate.end is None or at < candidate.end)):  # fmt: skip
            row = candidate
    if row is None:
        return ("CNY" if region == "cn-beijing" else "USD"), None
    if event.billing_plan == "plan":
        return row.currency, Decimal(0)
    e = event
    # The tier: by this request's input tokens; it prices both input and output.
    _, price_in, price_out, price_thinking = row.tiers[-1]
    for tier in row.tiers:
        if tier[0] is None or e.input_tokens <= tier[0]:
            _, price_in, price_out, price_thinking = tier
            break
    out = price_thinking if e.reasoning_tokens > 0 else price_out
    if row.kind == "embedding":
        out = Decimal(0)
    with decimal.localcontext(EXACT):
        if row.modalities:
            m_in, m_out = row.modalities["input"], row.modalities["output"]
            media = e.audio_tokens + e.image_tokens + e.video_tokens
            cost = ((e.input_tokens - media) * m_in["text"] + e.audio_tokens * m_in["audio"]
                    + e.image_tokens * m_in["image"] + e.video_tokens * m_in["video"])  # fmt: skip
            if e.audio_output_tokens > 0:  # the text beside audio output is not billed
                cost += e.audio_output_tokens * m_out["audio"]
            elif media > 0:
                cost += e.output_tokens * m_out["text_when_input_multimodal"]
            else:
                cost += e.output_tokens * m_out["text_when_input_text_only"]
        elif e.batch:  # no cache discount in batch
            cost = e.input_tokens * price_in + e.output_tokens * out
        elif e.cache_creation_tokens > 0 or e.cache_type == "ephemeral":
            uncached = e.input_tokens - e.cached_tokens - e.cache_creation_tokens
            cost = (uncached * price_in
                    + e.cached_tokens * price_in * row.cache.get("explicit_read", 1)
                    + e.cache_creation_tokens * price_in * row.cache.get("explicit_write", 1)
                    + e.output_tokens * out)  # fmt: skip
        else:
            cost = ((e.input_tokens - e.cached_tokens) * price_in
                    + e.cached_tokens * price_in * row.cache.get("implicit_read", 1)
                    + e.output_tokens * out)  # fmt: skip
        cost += e.image_count * row.per_image
        if e.batch:  # batch: the whole real-time price at the row's ratio
            cost *= row.batch_ratio
        multiplier = None
        for d in discounts:  # only workspace-wide discounts in these books
            if (
                d["workspace"] == workspace
                and d["from"] <= at
                and (d["to"] is None or at < d["to"])
            ):
                multiplier = d["multiplier"]
        return row.currency, cost * Decimal(multiplier) if multiplier is not None else cost


def oracle_rows(events: list[UsageEvent], settings: Settings, book) -> dict[tuple, rollup.SpendRow]:
    """The expected spend rows, keyed by (day, workspace, scenario, model, region, currency)."""
    zone = ZoneInfo(settings.timezone)
    sums: dict[tuple, dict[str, object]] = {}
    for e in events:
        configured = settings.workspace_for_fingerprint(e.key_fingerprint)
        ws = configured.id if configured else (e.workspace_observed or "unattributed")
        known = settings.workspace(ws)
        scenario = e.scenario or (known.default_scenario if known else "") or "unassigned"
        region = e.region or (known.region if known else "")
        model = e.model_requested or e.model_returned
        currency, cost = oracle_price(e, model, region, ws, book)
        day = datetime.fromisoformat(e.started_at).astimezone(zone).date()
        acc = sums.setdefault((day, ws, scenario, model, region, currency), {
            "calls": 0, "ok": 0, "failed": 0, "denied": 0, "interrupted": 0, "estimated": 0,
            "tokens": [0] * 8, "cost": Decimal(0), "unpriced_calls": 0, "unpriced_tokens": 0,
        })  # fmt: skip
        acc["calls"] += 1
        acc["ok"] += e.outcome == "ok"
        acc["failed"] += e.outcome in ("http_error", "network_error")
        acc["denied"] += e.outcome in ("denied", "denied_local")
        acc["interrupted"] += e.outcome == "interrupted"
        acc["estimated"] += e.usage_source == "estimated"
        for i, n in enumerate((e.input_tokens, e.output_tokens, e.cached_tokens,
                               e.cache_creation_tokens, e.reasoning_tokens, e.image_tokens,
                               e.audio_tokens, e.video_tokens)):  # fmt: skip
            acc["tokens"][i] += n
        if cost is None:
            acc["unpriced_calls"] += e.input_tokens + e.output_tokens + e.image_count > 0
            acc["unpriced_tokens"] += e.input_tokens + e.output_tokens
        else:
            acc["cost"] = EXACT.add(acc["cost"], cost)
    out = {}
    for key, a in sums.items():
        known = settings.workspace(key[1])
        out[key] = rollup.SpendRow(
            key[0], key[1], known.name if known else key[1], known.cost_centre if known else "",
            *key[2:], a["calls"], a["ok"], a["failed"], a["denied"], a["interrupted"],
            a["estimated"], *a["tokens"], a["cost"], a["unpriced_calls"], a["unpriced_tokens"],
        )  # fmt: skip
    return out


# --- the world ---------------------------------------------------------------------------------

KEY_A, KEY_B, KEY_CN, KEY_US = (f"sha256:00000000000000{s}" for s in ("a1", "b1", "c1", "d1"))
WORKSPACES = (
    Workspace(id="ws-alpha", name="Alpha", region="ap-southeast-1", cost_centre="CC-1",
              key_fingerprints=(KEY_A,), default_scenario="chat"),
    Workspace(id="ws-beta", name="Beta", region="ap-southeast-1", key_fingerprints=(KEY_B,)),
    Workspace(id="ws-china", name="China", region="cn-beijing", key_fingerprints=(KEY_CN,),
              default_scenario="search"),
    Workspace(id="ws-us", name="US", region="us-east-1", key_fingerprints=(KEY_US,)),
)  # fmt: skip
OUR_BOOK = {
    "schema": "costsplit.pricebook/v1",
    "prices": [
        # A mid-month price change, with K = 1000 in its tier bounds.
        {"model": "qwen-plus", "aliases": ["qwen-plus-latest"], "regions": ["ap-southeast-1"],
         "currency": "USD", "from": "2026-03-16", "to": "2026-04-01", "tier_k": 1000,
         "tiers": [{"up_to": "128K", "input": "0.35", "output": "1.1", "output_thinking": "3.3"},
                   {"up_to": "256K", "input": "0.7", "output": "2.1", "output_thinking": "6.3"},
                   {"up_to": "1M", "input": "1.3", "output": "3.7", "output_thinking": "11.7"}],
         "cache": {"implicit_read": "0.2", "explicit_write": "1.25", "explicit_read": "0.1"},
         "batch_ratio": "0.5"},
        {"model": "wan-image-test", "kind": "image", "regions": ["ap-southeast-1"],
         "currency": "USD", "per_image": "0.02", "tiers": [{"input": "0"}], "batch_ratio": "0.5"},
        # Priced in 1K-token units.
        {"model": "qwen-turbo", "regions": ["cn-beijing"], "currency": "CNY",
         "from": "2026-03-20", "unit_tokens": 1000,
         "tiers": [{"input": "0.0003", "output": "0.0006", "output_thinking": "0.003"}]},
    ],
    "discounts": [{"workspace": "ws-beta", "multiplier": "0.85", "from": "2026-03-20"}],
}  # fmt: skip
UNMAPPED = "sha256:00000000000000ff"
REGIONS = ["", "ap-southeast-1", "cn-beijing", "us-east-1", "eu-central-1"]
BOUNDS = sorted({n * k for n in (32, 128, 252, 256) for k in (1000, 1024)} | {1_000_000, 1_048_576})
MOMENTS = [  # UTC instants either side of day, month and price-change boundaries in each zone
    "2026-02-28T15:59:59.999999Z", "2026-02-28T16:00:00Z", "2026-03-01T04:59:59Z",
    "2026-03-01T05:00:00Z", "2026-03-15T15:59:59.999999Z", "2026-03-15T16:00:00Z",
    "2026-03-19T16:00:00Z", "2026-03-31T15:59:59Z", "2026-03-31T16:00:00Z",
    "2026-03-31T23:59:59Z", "2026-04-01T00:00:00Z", "2026-04-01T04:00:00Z",
]  # fmt: skip
MODELS = sorted(
    {n for item in json.loads(SHIPPED_BOOK.read_text())["prices"]
     for n in (item["model"], *item.get("aliases", []))}
    | {"wan-image-test", "qwen9-unknown"}
)  # fmt: skip
HOT_MODELS = ["qwen-plus", "qwen-plus-latest", "qwen3-max", "qwen-flash", "qwen3-omni-flash",
              "text-embedding-v4", "qwen-turbo", "wan-image-test", "qwen9-unknown"]  # fmt: skip


@st.composite
def events(draw) -> UsageEvent:
    tokens = st.one_of(
        st.sampled_from(BOUNDS).flatmap(lambda b: st.sampled_from([b - 1, b, b + 1])),
        st.integers(0, 3_000),
        st.integers(0, 1_100_000),
    )
    input_tokens = draw(tokens)
    cached = draw(st.integers(0, input_tokens))
    creation = draw(st.sampled_from([0, 0, input_tokens - cached]))
    media = draw(st.lists(st.integers(0, input_tokens // 3), min_size=3, max_size=3))
    model = draw(st.one_of(st.sampled_from(HOT_MODELS), st.sampled_from(MODELS)))
    returned = draw(st.sampled_from(["", model]))
    return UsageEvent(
        started_at=draw(st.sampled_from(MOMENTS)),
        key_fingerprint=draw(st.sampled_from([KEY_A, KEY_B, KEY_CN, KEY_US, UNMAPPED])),
        workspace_observed=draw(st.sampled_from(["", "", "ws-alpha", "ws-elsewhere"])),
        scenario=draw(st.sampled_from([None, "", "triage", "search"])),
        region=draw(st.sampled_from(REGIONS)),
        model_requested=draw(st.sampled_from([model, model, model, ""])) if returned else model,
        model_returned=returned,
        batch=draw(st.booleans()),
        billing_plan=draw(st.sampled_from(["payg"] * 9 + ["plan"])),
        outcome=draw(st.sampled_from(["ok", "ok", "ok", "http_error", "denied", "interrupted"])),
        usage_source=draw(st.sampled_from(["reported", "estimated", "missing"])),
        input_tokens=input_tokens,
        output_tokens=draw(st.sampled_from([0, 1, 777, 40_000])),
        cached_tokens=cached,
        cache_creation_tokens=creation,
        cache_type=draw(st.sampled_from(["", "", "ephemeral"])),
        reasoning_tokens=draw(st.sampled_from([0, 0, 1, 300])),
        audio_tokens=media[0],
        image_tokens=media[1],
        video_tokens=media[2],
        audio_output_tokens=draw(st.sampled_from([0, 0, 250])),
        image_count=draw(st.sampled_from([0, 0, 3])),
    )  # fmt: skip


def _totals(rows, key=lambda r: ()):
    out: dict[tuple, Decimal] = {}
    for r in rows:
        k = (*key(r), r.currency)
        out[k] = out.get(k, Decimal(0)) + r.cost
    return out


@hsettings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(events(), min_size=1, max_size=25),
    zone=st.sampled_from(["Asia/Shanghai", "UTC", "America/New_York"]),
    data=st.data(),
)
def test_rollup_equals_the_per_call_oracle(tmp_path_factory, batch, zone, data):
    folder = tmp_path_factory.mktemp("oracle")
    ours = folder / "ours.json"
    ours.write_text(json.dumps(OUR_BOOK))
    settings = Settings(workspaces=WORKSPACES, timezone=zone, price_books=(ours,))
    expected = oracle_rows(batch, settings, oracle_book(SHIPPED_BOOK, ours))
    start, end = date(2026, 2, 1), date(2026, 5, 1)

    # Another order, split into several ingests with a refresh after each.
    order = data.draw(st.permutations(batch))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(batch)), max_size=3)))
    with connect(folder / "costsplit.duckdb") as con:
        for lo, hi in zip([0, *cuts], [*cuts, len(batch)], strict=True):
            insert_events(con, order[lo:hi])
            rollup.refresh(con, settings)
        rows = rollup.spend_rows(con, settings, start, end)
        assert {(r.day, r.workspace_id, r.scenario, r.model, r.region, r.currency): r
                for r in rows} == expected  # fmt: skip
        assert len(rows) == len(expected)
        # Parts add up: scenarios to their workspace, workspaces to the total, per currency.
        workspaces: dict[tuple, Decimal] = {}
        for ws in {r.workspace_id for r in rows}:
            part = rollup.spend_rows(con, settings, start, end, workspace=ws)
            for k, v in _totals(part).items():
                workspaces[k] = workspaces.get(k, Decimal(0)) + v
            scenarios: dict[tuple, Decimal] = {}
            for scn in {r.scenario for r in part}:
                only = rollup.spend_rows(con, settings, start, end, workspace=ws, scenario=scn)
                for k, v in _totals(only).items():
                    scenarios[k] = scenarios.get(k, Decimal(0)) + v
            assert scenarios == _totals(part)
        assert workspaces == _totals(rows)
        assert rollup.refresh(con, settings).rows == 0
