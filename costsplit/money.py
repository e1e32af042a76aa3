"""Displayed money: round once, and make the parts shown add up to the totals shown.

A report shows a grand total, workspace totals and scenario and model lines. Rounding each of
them on its own makes a column that does not add up (0.335 + 0.335 shows as 0.34 + 0.34 under
a total of 0.67). The rule used on every page:

* a total is rounded once (half up, to the currency's displayed quantum, 0.01);
* its parts are *apportioned* to that displayed total by the largest-remainder method: each
  part is its exact value cut down to the quantum, and the cents left over go to the parts with
  the largest cut-off remainders.

So each displayed part is within one quantum of its exact value, every breakdown of a total
(by scenario, by model) adds up to exactly that displayed total, and the displayed total is the
correctly rounded exact total. The CSV export shows the exact decimals instead, which add up by
themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
TENTH = Decimal("0.1")


def round_total(amount: Decimal, quantum: Decimal = CENT) -> Decimal:
    """``amount`` rounded half up to ``quantum``."""
    return amount.quantize(quantum, rounding=ROUND_HALF_UP)


def apportion(total: Decimal, parts: Sequence[Decimal], quantum: Decimal = CENT) -> list[Decimal]:
    """Displayed values of ``parts`` that sum exactly to the displayed ``total``.

    ``total`` is already rounded to ``quantum`` (normally ``round_total(sum(parts))``). Ties
    between equal remainders go to the earlier part, so the result is deterministic.
    """
    if not parts:
        return []
    floors = [part.quantize(quantum, rounding=ROUND_FLOOR) for part in parts]
    units = int((total - sum(floors, Decimal(0))) / quantum)
    order = sorted(range(len(parts)), key=lambda i: (-(parts[i] - floors[i]), i))
    shown = list(floors)
    step = quantum if units >= 0 else -quantum
    if units < 0:
        order.reverse()
    for n in range(abs(units)):
        shown[order[n % len(order)]] += step
    return shown


def percentages(parts: Sequence[Decimal], quantum: Decimal = TENTH) -> list[Decimal]:
    """Shares of ``parts`` in percent, apportioned so that they add up to 100 (or 0 for none)."""
    whole = sum(parts, Decimal(0))
    if whole == 0:
        return [Decimal(0).quantize(quantum) for _ in parts]
    exact = [part * 100 / whole for part in parts]
    return apportion(Decimal(100).quantize(quantum), exact, quantum)


def format_amount(amount: Decimal | None) -> str:
    """``1234.5`` as ``1,234.50``; None as an em dash."""
    if amount is None:
        return "—"
    return f"{amount:,.2f}"
