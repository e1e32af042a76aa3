"""What a price book is: effective-dated price rows, their tiers and rates, and how they layer.

A ``PriceRow`` prices one model (and its aliases: the names a caller may request) in some
regions and one currency from ``valid_from`` (inclusive) to ``valid_to`` (exclusive); its tiers
are chosen by the request's input tokens. A ``PriceBook`` holds the rows of every loaded book
in layering order: a later book's row wins where it overlaps an earlier one for the same region
and name (``lookup``, ``segments``); two overlapping rows in one book are an error
(``check_overlaps``). ``rates`` turns a row's tier into the per-1M-token numbers SQL multiplies
tokens by. Reading and validating book files is ``costsplit.prices``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from costsplit.errors import PriceBookError

KINDS = ("chat", "vision", "omni", "translation", "embedding", "image")
MILLION = Decimal(1_000_000)
RATE_SCALE = 10  # decimals of a rate per 1M tokens, as stored in SQL (DECIMAL(38, 10))
FOREVER = datetime(9999, 1, 1, tzinfo=ZoneInfo("UTC"))


@dataclasses.dataclass(frozen=True, slots=True)
class Tier:
    """Prices per ``unit_tokens`` for requests with at most ``up_to`` input tokens."""

    up_to: int | None  # None: no upper bound
    input: Decimal
    output: Decimal
    output_thinking: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class PriceRow:
    """One model's prices in some regions and one currency over a period."""

    model: str
    aliases: tuple[str, ...]
    kind: str
    regions: tuple[str, ...]
    currency: str
    valid_from: datetime
    valid_to: datetime | None
    tier_k: int
    unit_tokens: int
    tiers: tuple[Tier, ...]
    implicit_read: Decimal | None = None
    explicit_write: Decimal | None = None
    explicit_read: Decimal | None = None
    batch_ratio: Decimal = Decimal("0.5")
    modalities: dict[str, Decimal] | None = None  # in_text, in_audio, …, out_audio
    per_image: Decimal | None = None
    as_of: str = ""
    confidence: str = ""
    source: str = ""
    notes: str = ""
    book: str = ""
    index: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model, *self.aliases)

    @property
    def where(self) -> str:
        return f"{self.book}: prices[{self.index}] ({self.model})"

    def tier_for(self, input_tokens: int) -> Tier:
        """The tier pricing a request with ``input_tokens`` input tokens (the last one beyond)."""
        for tier in self.tiers:
            if tier.up_to is None or input_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]


@dataclasses.dataclass(frozen=True, slots=True)
class Discount:
    """A negotiated multiplier on cost for a workspace and/or a model over a period."""

    workspace: str  # "" = every workspace
    model: str  # "" = every model; otherwise a model or alias name
    multiplier: Decimal
    valid_from: datetime
    valid_to: datetime | None
    note: str = ""
    book: str = ""
    index: int = 0

    @property
    def specificity(self) -> int:
        return (2 if self.workspace else 0) + (1 if self.model else 0)


@dataclasses.dataclass(frozen=True, slots=True)
class PriceBook:
    """All loaded books, in layering order, and a digest that changes when any of them does."""

    rows: tuple[PriceRow, ...]
    discounts: tuple[Discount, ...]
    files: tuple[str, ...]
    digest: str

    def lookup(self, region: str, model: str, at: datetime) -> PriceRow | None:
        """The row in force for ``model`` (as requested) in ``region`` at ``at``, or None."""
        found = None
        for row in self.rows:  # later books come later: the last match wins
            if region in row.regions and model in row.names and _covers(row, at):
                found = row
        return found

    def segments(self) -> list[tuple[PriceRow, str, str, datetime, datetime]]:
        """Non-overlapping (row, region, name, from, to) pieces: later books cut earlier ones."""
        taken: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
        pieces = []
        for row in reversed(self.rows):
            start, end = row.valid_from, row.valid_to or FOREVER
            for region in row.regions:
                for name in row.names:
                    covered = taken.setdefault((region, name), [])
                    for lo, hi in _subtract((start, end), covered):
                        pieces.append((row, region, name, lo, hi))
                    covered.append((start, end))
        return pieces


def rates(row: PriceRow, tier: Tier) -> dict[str, Decimal]:
    """Every rate of ``tier`` per 1M tokens after ratios: the numbers SQL multiplies tokens by.

    A cache ratio the row does not give is 1 (no discount: costsplit never invents one). Batch
    calls pay ``batch_ratio`` of the whole real-time price with no cache discount: the plain
    input and output prices, the per-modality prices and the per-image price (``batch_*``).
    Embeddings bill input only.
    """
    input_, output, thinking = tier.input, tier.output, tier.output_thinking
    if row.kind == "embedding":
        output = thinking = Decimal(0)
    one = Decimal(1)
    out = {
        "in_rate": input_,
        "implicit_rate": input_ * (row.implicit_read if row.implicit_read is not None else one),
        "ew_rate": input_ * (row.explicit_write if row.explicit_write is not None else one),
        "er_rate": input_ * (row.explicit_read if row.explicit_read is not None else one),
        "out_rate": output,
        "think_rate": thinking,
        "batch_in": input_ * row.batch_ratio,
        "batch_out": output * row.batch_ratio,
        "batch_think": thinking * row.batch_ratio,
        "image_rate": (row.per_image or Decimal(0)) * MILLION,
    }
    for name in (
        "in_text",
        "in_audio",
        "in_image",
        "in_video",
        "out_text_when_input_text_only",
        "out_text_when_input_multimodal",
        "out_audio",
    ):
        out[name] = (row.modalities or {}).get(name, Decimal(0))
        out[f"batch_{name}"] = out[name] * row.batch_ratio
    out["batch_image_rate"] = out["image_rate"] * row.batch_ratio
    return out


def _covers(row: PriceRow, at: datetime) -> bool:
    return row.valid_from <= at and (row.valid_to is None or at < row.valid_to)


def _overlap(
    a_from: datetime, a_to: datetime | None, b_from: datetime, b_to: datetime | None
) -> bool:
    return a_from < (b_to or FOREVER) and b_from < (a_to or FOREVER)


def _subtract(
    span: tuple[datetime, datetime], covered: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    pieces = [span]
    for lo, hi in covered:
        nxt = []
        for a, b in pieces:
            if hi <= a or lo >= b:
                nxt.append((a, b))
                continue
            if a < lo:
                nxt.append((a, lo))
            if hi < b:
                nxt.append((hi, b))
        pieces = nxt
    return pieces


def check_overlaps(rows: list[PriceRow]) -> None:
    """Raise ``PriceBookError`` if two rows of one book price a name in a region at once."""
    seen: dict[tuple[str, str], list[PriceRow]] = {}
    for row in rows:
        for region in row.regions:
            for name in row.names:
                for other in seen.get((region, name), []):
                    if other is not row and _overlap(
                        row.valid_from, row.valid_to, other.valid_from, other.valid_to
                    ):
                        raise PriceBookError(
                            f"{row.where}: {name!r} in {region} overlaps prices[{other.index}] "
                            f"({other.model}) in the same book; give one of them from/to dates"
                        )
                seen.setdefault((region, name), []).append(row)


def check_discount_overlaps(discounts: list[Discount]) -> None:
    """Raise ``PriceBookError`` if two discounts for the same workspace and model overlap."""
    for i, a in enumerate(discounts):
        for b in discounts[:i]:
            if (a.workspace, a.model) == (b.workspace, b.model) and _overlap(
                a.valid_from, a.valid_to, b.valid_from, b.valid_to
            ):
                raise PriceBookError(
                    f"{a.book}: discounts[{a.index}] overlaps {b.book}: discounts[{b.index}] "
                    f"for workspace {a.workspace or '*'} and model {a.model or '*'}"
                )
