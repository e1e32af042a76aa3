"""Reading price books: Model Studio prices as effective-dated data, loaded and validated.

The shipped book is ``config/prices.json`` (list prices from the reference table); users layer
their own books over it with ``[prices] files = [...]`` in the settings (JSON or TOML, same
keys). A later book wins where its rows overlap an earlier book's rows for the same region and
model name; two overlapping rows in one book are an error. Every amount is a ``Decimal`` read
from the text (JSON with ``parse_float=Decimal``, TOML with ``parse_float=Decimal``), never a
float. Every problem is a ``PriceBookError`` naming the file and the row.

A row prices one model (and its aliases: the names a caller may request) in some regions and
one currency, from ``from`` (inclusive) to ``to`` (exclusive). Tiers are chosen by the
request's input tokens; bounds are written ``"32K"``/``"1M"`` or as integers, and K is the
row's ``tier_k`` (1000 or 1024; the reference marks this UNCERTAIN). Discounts are multipliers
per workspace and/or model with their own dates. See the README, "Prices and rollups".
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from costsplit.errors import PriceBookError
from costsplit.pricebook import (
    FOREVER,
    KINDS,
    RATE_SCALE,
    Discount,
    PriceBook,
    PriceRow,
    Tier,
    check_discount_overlaps,
    check_overlaps,
    rates,
)

# The model lives in costsplit.pricebook; these names stay importable from here.
__all__ = [
    "FOREVER",
    "SHIPPED_BOOK",
    "Discount",
    "PriceBook",
    "PriceRow",
    "Tier",
    "book_digest",
    "load_price_book",
    "rates",
]

SHIPPED_BOOK = Path(__file__).resolve().parent.parent / "config" / "prices.json"
SCHEMA = "costsplit.pricebook/v1"
DEFAULT_FROM = "2025-01-01"  # the reference gives no effective dates; see config/prices.json
MULTIPLIER_SCALE = 6

_ROW_KEYS = {
    "model", "aliases", "kind", "regions", "region", "currency", "from", "to", "tier_k",
    "unit_tokens", "tiers", "cache", "batch_ratio", "modalities", "per_image", "as_of",
    "confidence", "source", "notes",
}  # fmt: skip
_DISCOUNT_KEYS = {"workspace", "model", "multiplier", "from", "to", "note", "source"}
_MODALITY_IN = ("text", "audio", "image", "video")
_MODALITY_OUT = ("text_when_input_text_only", "text_when_input_multimodal", "audio")


def book_digest(
    extra: tuple[Path, ...] | list[Path] = (), *, shipped: Path | None = SHIPPED_BOOK
) -> str:
    """The digest ``load_price_book`` would give, from the files' bytes alone (no parsing)."""
    digest = hashlib.sha256()
    for path in [Path(p) for p in (shipped, *extra) if p is not None]:
        try:
            digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError as exc:
            raise PriceBookError(f"{path}: cannot read price book: {exc.strerror}") from exc
    return digest.hexdigest()[:16]


def load_price_book(
    extra: tuple[Path, ...] | list[Path] = (), *, shipped: Path | None = SHIPPED_BOOK
) -> PriceBook:
    """Load the shipped book then ``extra`` books (JSON or TOML); raise ``PriceBookError``."""
    rows: list[PriceRow] = []
    discounts: list[Discount] = []
    files: list[str] = []
    digest = hashlib.sha256()
    for path in [p for p in (shipped, *extra) if p is not None]:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PriceBookError(f"{path}: cannot read price book: {exc.strerror}") from exc
        digest.update(str(path).encode() + b"\0" + raw + b"\0")
        data = _parse(path, raw)
        book_rows, book_discounts = _Book(path, data).read()
        check_overlaps(book_rows)
        rows.extend(book_rows)
        discounts.extend(book_discounts)
        files.append(str(path))
    check_discount_overlaps(discounts)
    return PriceBook(tuple(rows), tuple(discounts), tuple(files), digest.hexdigest()[:16])


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"), parse_float=Decimal)
        else:
            data = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PriceBookError(f"{path}: not a valid price book: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceBookError(f"{path}: a price book is an object with 'prices' and 'discounts'")
    return data


class _Book:
    """Reads one parsed book into rows, naming the file and row on every error."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data
        unknown = set(data) - {"schema", "description", "defaults", "notes", "prices", "discounts"}
        if unknown:
            raise PriceBookError(f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise PriceBookError(f"{path}: schema must be {SCHEMA!r}, got {schema!r}")
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise PriceBookError(f"{path}: defaults must be a table")
        self.defaults = defaults
        tz_name = defaults.get("timezone", "Asia/Shanghai")
        try:
            self.tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise PriceBookError(
                f"{path}: defaults.timezone: unknown time zone {tz_name!r}"
            ) from None

    def fail(self, where: str, message: str) -> PriceBookError:
        return PriceBookError(f"{self.path}: {where}: {message}")

    def read(self) -> tuple[list[PriceRow], list[Discount]]:
        prices = self.data.get("prices", [])
        discounts = self.data.get("discounts", [])
        if not isinstance(prices, list) or not isinstance(discounts, list):
            raise PriceBookError(f"{self.path}: prices and discounts must be lists")
        rows = [self.row(item, i) for i, item in enumerate(prices)]
        return rows, [self.discount(item, i) for i, item in enumerate(discounts)]

    def amount(self, where: str, value: Any, *, scale: int | None = None) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            raise self.fail(where, f'must be a decimal amount such as "1.2", got {value!r}')
        try:
            amount = Decimal(str(value).strip()) if isinstance(value, str) else Decimal(value)
        except InvalidOperation:
            raise self.fail(
                where, f'must be a decimal amount such as "1.2", got {value!r}'
            ) from None
        if not amount.is_finite() or amount < 0:
            raise self.fail(where, f"must be a non-negative amount, got {value!r}")
        if scale is not None and amount != amount.quantize(Decimal(1).scaleb(-scale)):
            raise self.fail(where, f"has more than {scale} decimals: {value!r}")
        return amount

    def moment(self, where: str, value: Any, default: Any) -> datetime | None:
        value = default if value is None else value
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=self.tz)
        if isinstance(value, date):
            return datetime.combine(value, time(), self.tz)
        if not isinstance(value, str):
            raise self.fail(where, f"must be a date YYYY-MM-DD, got {value!r}")
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return datetime.combine(date.fromisoformat(value), time(), self.tz)
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(
                where, f"must be a date YYYY-MM-DD or an ISO time, got {value!r}"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=self.tz)

    def bound(self, where: str, value: Any, tier_k: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([KkMm]?)\s*", value) if isinstance(value, str) else None
        if not match:
            raise self.fail(
                where, f'must be a token count such as 32768, "32K" or "1M", got {value!r}'
            )
        unit = {"": 1, "k": tier_k, "m": 1_000_000}[match[2].lower()]
        return int(match[1]) * unit

    def row(self, item: Any, i: int) -> PriceRow:
        if not isinstance(item, dict):
            raise self.fail(f"prices[{i}]", "must be a table")
        model = item.get("model")
        where = f"prices[{i}] ({model})" if model else f"prices[{i}]"
        if not isinstance(model, str) or not model:
            raise self.fail(where, "model is required")
        unknown = set(item) - _ROW_KEYS
        if unknown:
            raise self.fail(where, f"unknown key(s): {', '.join(sorted(unknown))}")
        aliases = item.get("aliases", []) or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise self.fail(where, "aliases must be a list of model names")
        regions = item.get("regions", [item["region"]] if "region" in item else [])
        if isinstance(regions, str):
            regions = [regions]
        if not regions or not all(isinstance(r, str) and r for r in regions):
            raise self.fail(where, "regions is required (a list of region ids such as cn-beijing)")
        currency = item.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise self.fail(
                where, f"currency must be a three-letter code such as USD or CNY, got {currency!r}"
            )
        kind = item.get("kind", "chat")
        if kind not in KINDS:
            raise self.fail(where, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        tier_k = item.get("tier_k", self.defaults.get("tier_k", 1024))
        if tier_k not in (1000, 1024):
            raise self.fail(where, f"tier_k must be 1000 or 1024, got {tier_k!r}")
        unit_tokens = item.get("unit_tokens", self.defaults.get("unit_tokens", 1_000_000))
        if (
            not isinstance(unit_tokens, int)
            or isinstance(unit_tokens, bool)
            or unit_tokens <= 0
            or 1_000_000 % unit_tokens
        ):
            raise self.fail(
                where,
                f"unit_tokens must divide 1000000 (e.g. 1000 or 1000000), got {unit_tokens!r}",
            )
        per_million = Decimal(1_000_000 // unit_tokens)
        default_from = self.defaults.get("from", DEFAULT_FROM)
        valid_from = self.moment(f"{where}.from", item.get("from"), default_from)
        if valid_from is None:
            raise self.fail(where, "from is required (here or in defaults.from)")
        valid_to = self.moment(f"{where}.to", item.get("to"), None)
        if valid_to is not None and valid_to <= valid_from:
            raise self.fail(where, f"to ({item.get('to')}) must be after from")

        tiers_in = item.get("tiers")
        if not isinstance(tiers_in, list) or not tiers_in:
            raise self.fail(where, "tiers must be a non-empty list")
        tiers: list[Tier] = []
        for t, tier in enumerate(tiers_in):
            tw = f"{where}.tiers[{t}]"
            if not isinstance(tier, dict) or set(tier) - {
                "up_to",
                "input",
                "output",
                "output_thinking",
            }:
                raise self.fail(tw, "must have only up_to, input, output, output_thinking")
            if "input" not in tier:
                raise self.fail(tw, "input price is required")
            up_to = self.bound(f"{tw}.up_to", tier.get("up_to"), tier_k)
            output = self.amount(f"{tw}.output", tier.get("output", 0))
            tiers.append(
                Tier(
                    up_to=up_to,
                    input=self.amount(f"{tw}.input", tier["input"]) * per_million,
                    output=output * per_million,
                    output_thinking=self.amount(
                        f"{tw}.output_thinking", tier.get("output_thinking", output)
                    )
                    * per_million,
                )
            )
            if t and (
                tiers[t - 1].up_to is None or (up_to is not None and up_to <= tiers[t - 1].up_to)
            ):
                raise self.fail(tw, "tiers must be in increasing up_to order, unbounded last")

        cache = item.get("cache") or {}
        if not isinstance(cache, dict) or set(cache) - {
            "implicit_read",
            "explicit_write",
            "explicit_read",
        }:
            raise self.fail(
                f"{where}.cache", "may hold only implicit_read, explicit_write, explicit_read"
            )
        ratios = {
            k: self.amount(f"{where}.cache.{k}", v) for k, v in cache.items() if v is not None
        }
        batch_ratio = self.amount(
            f"{where}.batch_ratio",
            item.get("batch_ratio")
            if item.get("batch_ratio") is not None
            else self.defaults.get("batch_ratio", "0.5"),
        )

        modalities = None
        if item.get("modalities") is not None:
            mod = item["modalities"]
            if (
                not isinstance(mod, dict)
                or not isinstance(mod.get("input"), dict)
                or not isinstance(mod.get("output"), dict)
            ):
                raise self.fail(f"{where}.modalities", "must have input and output tables")
            modalities = {}
            for name in _MODALITY_IN:
                if name not in mod["input"]:
                    raise self.fail(f"{where}.modalities.input", f"{name} price is required")
                modalities[f"in_{name}"] = (
                    self.amount(f"{where}.modalities.input.{name}", mod["input"][name])
                    * per_million
                )
            for name in _MODALITY_OUT:
                if name not in mod["output"]:
                    raise self.fail(f"{where}.modalities.output", f"{name} price is required")
                modalities[f"out_{name}"] = (
                    self.amount(f"{where}.modalities.output.{name}", mod["output"][name])
                    * per_million
                )
        per_image = item.get("per_image")
        row = PriceRow(
            model=model,
            aliases=tuple(aliases),
            kind=kind,
            regions=tuple(regions),
            currency=currency,
            valid_from=valid_from,
            valid_to=valid_to,
            tier_k=tier_k,
            unit_tokens=unit_tokens,
            tiers=tuple(tiers),
            implicit_read=ratios.get("implicit_read"),
            explicit_write=ratios.get("explicit_write"),
            explicit_read=ratios.get("explicit_read"),
            batch_ratio=batch_ratio,
            modalities=modalities,
            per_image=None if per_image is None else self.amount(f"{where}.per_image", per_image),
            as_of=str(item.get("as_of", "")),
            confidence=str(item.get("confidence", "")),
            source=str(item.get("source", "")),
            notes=str(item.get("notes", "")),
            book=str(self.path),
            index=i,
        )
        for tier in row.tiers:
            for name, rate in rates(row, tier).items():
                if rate != rate.quantize(Decimal(1).scaleb(-RATE_SCALE)):
                    raise self.fail(
                        where,
                        f"{name} works out to {rate} per 1M tokens: "
                        f"more than {RATE_SCALE} decimals",
                    )
        return row

    def discount(self, item: Any, i: int) -> Discount:
        where = f"discounts[{i}]"
        if not isinstance(item, dict):
            raise self.fail(where, "must be a table")
        unknown = set(item) - _DISCOUNT_KEYS
        if unknown:
            raise self.fail(where, f"unknown key(s): {', '.join(sorted(unknown))}")
        workspace, model = item.get("workspace", ""), item.get("model", "")
        if not isinstance(workspace, str) or not isinstance(model, str) or not (workspace or model):
            raise self.fail(where, "needs a workspace, a model or both")
        if "multiplier" not in item:
            raise self.fail(where, 'multiplier is required (e.g. "0.9" for 10% off)')
        default_from = self.defaults.get("from", DEFAULT_FROM)
        valid_from = self.moment(f"{where}.from", item.get("from"), default_from)
        valid_to = self.moment(f"{where}.to", item.get("to"), None)
        if valid_from is None or (valid_to is not None and valid_to <= valid_from):
            raise self.fail(where, "needs from, and to after from")
        return Discount(
            workspace=workspace,
            model=model,
            multiplier=self.amount(
                f"{where}.multiplier", item["multiplier"], scale=MULTIPLIER_SCALE
            ),
            valid_from=valid_from,
            valid_to=valid_to,
            note=str(item.get("note", "")),
            book=str(self.path),
            index=i,
        )
