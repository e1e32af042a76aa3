"""Render reports: self-contained HTML, plain text, CSV for finance, and the email message.

Templates live in the project's ``reports/`` folder; a user's ``settings.templates_dir`` is
searched first (a ``ChoiceLoader``), so overriding ``monthly.html.j2`` there replaces ours.
Jinja autoescapes every HTML template (workspace and scenario names are user input; only the
``*.txt.j2`` plain-text templates are exempt, being no HTML) and runs with
``StrictUndefined`` (a typo in a template is an error, not an empty cell).

The CSV is written with the ``csv`` module, not a template: quoting is its job. It has one row
per workspace × scenario × model × currency with exact decimal strings, and a totals line per
currency that is the exact sum of the rows above it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from collections import defaultdict
from decimal import Decimal
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

import jinja2

from costsplit.charts import chart_png, svg_bars
from costsplit.config import Settings
from costsplit.errors import ReportError
from costsplit.money import format_amount

TEMPLATES = Path(__file__).resolve().parent.parent / "reports"

# The finance CSV: a row per group of CSV_KEYS with the CSV_SUMS, then totals lines.
CSV_KEYS = ("workspace_id", "workspace_name", "cost_centre", "scenario", "model", "currency")
CSV_SUMS = (
    "calls",
    "ok_calls",
    "failed_calls",
    "denied_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost",
    "unpriced_calls",
    "unpriced_tokens",
)
CSV_COLUMNS = ("month", *CSV_KEYS, *CSV_SUMS)


def environment(settings: Settings) -> jinja2.Environment:
    """The Jinja environment: the user's templates first, then the shipped ones."""
    return _environment(settings.templates_dir)


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir:
        loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # HTML is always escaped (names are user input); plain-text templates are not HTML.
        autoescape=lambda name: not (name or "").endswith(".txt.j2"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["money"] = format_amount
    env.filters["num"] = lambda n: f"{n:,}"
    env.filters["signed"] = lambda d: (
        ("+" if d > 0 else "") + format_amount(d) if d is not None else "—"
    )
    # A change against a month with nothing shown is "new", not an infinite percentage.
    env.filters["pct"] = lambda d: "new" if d is None else f"{d:+.1f}%" if d else "0.0%"
    env.globals["svg_bars"] = svg_bars
    return env


def render(settings: Settings, template: str, **context) -> str:
    """Render ``template`` with ``context``; a template error is a ``ReportError``."""
    try:
        return environment(settings).get_template(template).render(**context)
    except jinja2.TemplateError as exc:
        raise ReportError(f"template {template}: {exc}") from exc


def report_html(settings: Settings, report, *, images: str = "svg") -> str:
    """The report as one self-contained HTML page (``images="cid"`` for the email part)."""
    return render(settings, f"{_name(report)}.html.j2", report=report, images=images)


def report_text(settings: Settings, report) -> str:
    """The report as plain text (the email's first alternative)."""
    return render(settings, f"{_name(report)}.txt.j2", report=report)


def _name(report) -> str:
    return "digest" if hasattr(report, "week") else "monthly"


def monthly_csv(rows, month: str) -> str:
    """Finance CSV: one row per workspace × scenario × model × currency, then totals lines."""
    keys, sums = CSV_KEYS, CSV_SUMS
    groups: dict[tuple, dict[str, object]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        group = groups[tuple(getattr(row, k) or "" for k in keys)]
        for name in sums:
            group[name] += getattr(row, name)
    totals: dict[str, dict[str, object]] = defaultdict(lambda: defaultdict(int))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for key in sorted(groups):
        group = groups[key]
        for name in sums:
            totals[key[5]][name] += group[name]
        writer.writerow([month, *key, *(_cell(group[name]) for name in sums)])
    for currency in sorted(totals):
        writer.writerow(
            [
                month,
                "TOTAL",
                "",
                "",
                "",
                "",
                currency,
                *(_cell(totals[currency][name]) for name in sums),
            ]
        )
    return out.getvalue()


def _cell(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def message_id(report_name: str, period: str, recipient: str, sender: str) -> str:
    """A Message-ID stable per (report, period, recipient): a re-send is the same message."""
    digest = hashlib.sha256(f"{report_name}\n{period}\n{recipient.lower()}".encode()).hexdigest()[
        :32
    ]
    domain = sender.rsplit("@", 1)[-1] or "costsplit.invalid"
    return f"<{digest}.{period}@{domain}>"


def email_message(
    settings: Settings, report, *, report_name: str, period: str, recipient: str, when
) -> EmailMessage:
    """The report as an email: multipart/alternative (text, then HTML with its PNG charts
    attached inline as ``cid:`` parts of a multipart/related)."""
    message = EmailMessage()
    message["Subject"] = report.title
    message["From"] = formataddr(("costsplit", settings.smtp.sender))
    message["To"] = recipient
    message["Date"] = format_datetime(when)
    message["Message-ID"] = message_id(report_name, period, recipient, settings.smtp.sender)
    message["X-Costsplit-Report"] = f"{report_name} {period}"
    message.set_content(report_text(settings, report))
    message.add_alternative(report_html(settings, report, images="cid"), subtype="html")
    html_part = message.get_payload()[1]
    for n, chart in enumerate(_charts_of(report), start=1):
        png = chart_png(chart, f"Daily spend ({chart.currency})")
        html_part.add_related(
            png,
            "image",
            "png",
            cid=f"<chart-{n}@costsplit>",
            filename=f"chart-{n}.png",
            disposition="inline",
        )
    return message


def _charts_of(report) -> tuple:
    return report.all_charts() if hasattr(report, "all_charts") else ()


def write_files(directory: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write ``{name: content}`` under ``directory`` (created); return the paths written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in files.items():
            path = directory / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ReportError(f"{directory}: cannot write report: {exc.strerror}") from exc
    return written
