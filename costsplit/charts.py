"""Daily spend charts: bar geometry for inline SVG, and the same chart as PNG for email.

The HTML report draws its chart as inline SVG from ``svg_bars`` (no script, no external
resource). Mail clients often block SVG and ``data:`` URIs, so the email carries the chart as a
PNG attached inline (``cid:``). The PNG is drawn by matplotlib with the Agg backend, imported
lazily so that commands which never send email do not pay its import time.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from decimal import Decimal

from costsplit.report import Chart

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 56, 22, 10


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the day, for the <title> tooltip and the axis
    amount: Decimal
    weekend: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SvgChart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]  # (y, label) for the amount axis
    day_labels: tuple[tuple[float, str], ...]  # (x, label) every few days
    baseline: float
    left: int


def svg_bars(chart: Chart) -> SvgChart:
    """The geometry of ``chart`` as bars in a WIDTH × HEIGHT box, with a rounded top tick."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    top = _nice_ceiling(chart.peak)
    slot = plot_w / max(len(chart.days), 1)
    bars = []
    for n, (day, amount) in enumerate(zip(chart.days, chart.amounts, strict=True)):
        share = amount / top if top else 0  # Decimal; only the pixel height becomes a float
        h = float(share) * plot_h
        bars.append(
            Bar(
                x=round(LEFT + n * slot + slot * 0.15, 1),
                y=round(TOP + plot_h - h, 1),
                width=round(slot * 0.7, 1),
                height=round(h, 1),
                label=day.isoformat(),
                amount=amount.quantize(Decimal("0.01")),
                weekend=day.weekday() >= 5,
            )
        )
    ticks = tuple((round(TOP + plot_h - plot_h * i / 4, 1), _tick(top * i / 4)) for i in range(5))
    labels = tuple(
        (round(LEFT + n * slot + slot / 2, 1), day.strftime("%d"))
        for n, day in enumerate(chart.days)
        if n % 5 == 0
    )
    return SvgChart(WIDTH, HEIGHT, tuple(bars), ticks, labels, TOP + plot_h, LEFT)


def _tick(value: Decimal) -> str:
    """An axis label: grouped thousands, no trailing zeros (0.025, 2.5, 1,000)."""
    text = f"{value.normalize():,f}"
    return text if "." not in text else text.rstrip("0").rstrip(".")


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest 1, 2, 2.5 or 5 × 10^k not below ``value`` (an axis top)."""
    if value <= 0:
        return Decimal(0)
    exponent = value.adjusted()
    for mantissa in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        candidate = mantissa.scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


@functools.lru_cache(maxsize=32)
def chart_png(chart: Chart, title: str) -> bytes:
    """``chart`` as a PNG (about 720 × 220 pixels); the same chart is drawn once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 2.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    xs = list(range(1, len(chart.days) + 1))
    colours = ["#9db4d6" if d.weekday() >= 5 else "#2f5d9a" for d in chart.days]
    axes.bar(xs, [float(a) for a in chart.amounts], color=colours, width=0.7)
    axes.set_title(title, fontsize=10, loc="left")
    axes.set_xlim(0.3, len(xs) + 0.7)
    axes.set_xticks([x for x in xs if (x - 1) % 5 == 0])
    axes.tick_params(labelsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    axes.set_ylabel(chart.currency, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
