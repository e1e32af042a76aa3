"""The monthly report, the workspace statement and the digest: numbers, pages and goldens.

Golden files live in tests/golden/. After an intended change of a template or of the report
model, regenerate them with:

    COSTSPLIT_REGOLD=1 .venv/bin/pytest tests/test_report.py

and review the diff. Outputs are normalised before comparison: the ingest time (the wall
clock of the test run), MIME boundaries and PNG bytes.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import os
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reportworld import build_world

from costsplit import rollup
from costsplit.digest import last_week, week_bounds, weekly_digest
from costsplit.errors import ReportError
from costsplit.jobs import write_digest, write_monthly
from costsplit.money import apportion, percentages, round_total
from costsplit.render import monthly_csv
from costsplit.report import last_month, month_bounds, monthly_report
from costsplit.store import connect

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixture is per test
        patch.setenv("COSTSPLIT_HOME", str(folder / "home"))
        settings = build_world(folder)
    with connect(settings.database) as con:
        report = monthly_report(con, settings, "2026-10", now=NOW)
        rows = rollup.spend_rows(con, settings, date(2026, 10, 1), date(2026, 11, 1))
    out = folder / "out"
    files = write_monthly(
        settings, "2026-10", formats=("html", "csv", "email", "text"), out=out, now=NOW
    )
    files += write_monthly(
        settings, "2026-10", workspace="ws-support", formats=("html", "text"), out=out, now=NOW
    )
    files += write_digest(settings, "2026-W43", formats=("html", "text"), out=out, now=NOW)
    return settings, report, rows, {f.name: f for f in files}


def normalise(text: str) -> str:
    text = re.sub(
        r"data last ingested \d{4}-\d\d-\d\d \d\d:\d\d \w+",
        "data last ingested <ingest time>",
        text,
    )
    text = re.sub(r"==============\d+==", "<boundary>", text)
    return text


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    text = normalise(text)
    if os.environ.get("COSTSPLIT_REGOLD"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden {name}: run with COSTSPLIT_REGOLD=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name",
    [
        "costsplit-2026-10.html",
        "costsplit-2026-10.txt",
        "costsplit-2026-10.csv",
        "statement-ws-support-2026-10.html",
        "statement-ws-support-2026-10.txt",
        "digest-2026-W43.html",
        "digest-2026-W43.txt",
    ],
)
def test_templates_match_their_goldens(world, name):
    _, _, _, files = world
    check_golden(name, files[name].read_text(encoding="utf-8"))


def test_email_file_structure_matches_golden(world):
    _, _, _, files = world
    message = email.message_from_bytes(
        files["costsplit-2026-10.eml"].read_bytes(), policy=email.policy.default
    )
    lines = [f"{k}: {v}" for k, v in message.items() if k != "Content-Type"]
    for part in message.walk():
        size = len(part.get_payload(decode=True) or b"") if not part.is_multipart() else 0
        lines.append(
            f"{part.get_content_type()} cid={part.get('Content-ID', '')} "
            f"file={part.get_filename() or ''} disposition={part.get_content_disposition() or ''}"
            + (
                f" png={part.get_payload(decode=True)[:8]!r}"
                if part.get_content_type() == "image/png"
                else ""
            )
            + (" empty" if not part.is_multipart() and not size else "")
        )
    check_golden("costsplit-2026-10.eml.txt", "\n".join(lines) + "\n")


def test_report_totals_equal_the_rollup(world):
    _, report, rows, _ = world
    exact = {}
    for row in rows:
        exact[row.currency] = exact.get(row.currency, Decimal(0)) + row.cost
    assert {t.currency: t.total for t in report.totals} == exact
    assert {t.currency: t.shown for t in report.totals} == {
        c: round_total(v) for c, v in exact.items()
    }
    assert report.calls == sum(r.calls for r in rows)
    # CNY converts with the recorded rate, shown beside it; the grand total is the sum shown.
    cny = next(t for t in report.totals if t.currency == "CNY")
    assert (cny.rate, cny.rate_date, cny.rate_source) == (
        Decimal("0.1400"),
        "2026-10-31",
        "treasury month-end rate",
    )
    assert cny.converted_shown == round_total(exact["CNY"] * Decimal("0.14"))
    assert report.converted_total == sum(t.converted_shown for t in report.totals)
    for total in report.totals:
        sections = [s for s in report.sections if s.currency == total.currency]
        assert sum(s.shown for s in sections) == total.shown
        assert sum(s.total for s in sections) == total.total
        for section in sections:
            assert sum(line.shown for line in section.scenarios) == section.shown
            assert sum(line.shown for line in section.models) == section.shown
    assert sum(s.share_percent for s in report.sections) == Decimal("100.0")


def test_report_shows_what_needs_attention(world):
    _, report, _, _ = world
    a = report.attention
    assert [c for c, _, _ in a.unattributed] == ["USD"]
    assert a.unattributed[0][2] == 11
    assert a.unpriced_models == ("qwen9-imaginary",)
    assert (a.unpriced_calls, a.denied_calls, a.failed_calls) == (5, 5, 5)
    assert [c for c, _, _ in a.unassigned] == ["USD"]
    assert report.closed is False
    section, line = report.biggest_scenario
    assert (section.workspace_name, line.label) == ("Research", "summaries")


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def amount(cell: str) -> Decimal:
    return Decimal(cell.split()[-1].replace(",", ""))


def test_every_table_on_the_page_adds_up(world):
    _, report, _, files = world
    parser = Tables()
    parser.feed(files["costsplit-2026-10.html"].read_text())
    breakdowns = [t for t in parser.tables if t[0][0] in ("Scenario", "Model")]
    assert len(breakdowns) == 2 * len(report.sections)
    for table in breakdowns:
        lines, total = table[1:-1], table[-1]
        assert total[0] == "Total"
        assert sum(amount(row[-1]) for row in lines) == amount(total[-1])
        assert sum(int(row[1].replace(",", "")) for row in lines) == int(total[1].replace(",", ""))
    overview = next(t for t in parser.tables if t[0][0] == "Workspace")
    for currency in ("USD", "CNY"):
        parts = [
            amount(r[3])
            for r in overview[1:]
            if r[3].startswith(currency) and not r[0].startswith("Total")
        ]
        total = next(row for row in overview if row[0] == f"Total {currency}")
        assert sum(parts) == amount(total[3])
    by_currency = next(t for t in parser.tables if t[0][0] == "Currency")
    assert sum(amount(row[-1]) for row in by_currency[1:-1]) == amount(by_currency[-1][-1])


def test_csv_rows_add_up_to_the_totals_lines_exactly(world):
    _, _, rows, files = world
    table = list(csv.DictReader(io.StringIO(files["costsplit-2026-10.csv"].read_text())))
    lines = [r for r in table if r["workspace_id"] != "TOTAL"]
    totals = {r["currency"]: r for r in table if r["workspace_id"] == "TOTAL"}
    for currency, total in totals.items():
        mine = [r for r in lines if r["currency"] == currency]
        for column in (
            "cost",
            "calls",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "reasoning_tokens",
        ):
            assert sum(Decimal(r[column]) for r in mine) == Decimal(total[column])
        assert Decimal(total["cost"]) == sum(
            (r.cost for r in rows if r.currency == currency), Decimal(0)
        )
    assert all("E" not in r["cost"] for r in table)  # never exponent form


def test_html_is_self_contained_and_escapes_names(world):
    _, _, _, files = world
    for name in (
        "costsplit-2026-10.html",
        "statement-ws-support-2026-10.html",
        "digest-2026-W43.html",
    ):
        page = files[name].read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), name
        assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page), name
        assert "<script" not in page.lower(), name
        assert "<link" not in page.lower(), name
    page = files["costsplit-2026-10.html"].read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "CC-&lt;b&gt;" in page
    assert "<svg" in page
    text = files["costsplit-2026-10.txt"].read_text()
    assert "<script>alert(1)</script>" in text  # plain text is not HTML: shown as typed


def test_statement_is_one_workspace(world):
    settings, _, _, _ = world
    with connect(settings.database) as con:
        statement = monthly_report(con, settings, "2026-10", workspace="ws-support", now=NOW)
        with pytest.raises(ReportError, match="no workspace 'ws-nope'"):
            monthly_report(con, settings, "2026-10", workspace="ws-nope", now=NOW)
    assert [s.workspace_id for s in statement.sections] == ["ws-support"]
    assert statement.title == "Workspace statement — Customer support — October 2026"
    assert statement.sections[0].share_percent == Decimal("100.0")


def test_digest_compares_weeks_and_projects_budgets(world):
    settings, _, _, _ = world
    with connect(settings.database) as con:
        digest = weekly_digest(con, settings, "2026-W43", now=NOW)
        rows = rollup.spend_rows(con, settings, date(2026, 10, 19), date(2026, 10, 26))
    assert (digest.start, digest.end) == (date(2026, 10, 19), date(2026, 10, 26))
    usd = next(t for t in digest.totals if t[0] == "USD")
    assert usd[1] == round_total(sum((r.cost for r in rows if r.currency == "USD"), Decimal(0)))
    assert sum(line.shown for line in digest.lines if line.currency == "USD") == usd[1]
    chatbot = next(line for line in digest.lines if line.scenario == "chatbot")
    assert chatbot.top_models[0][0] == "qwen-plus"
    budget = chatbot.budget
    assert (budget.budget, budget.currency, budget.month) == (Decimal(100), "USD", "2026-10")
    # Month to date as of Sunday 25 October: 25 of 31 days elapsed.
    assert budget.projected == budget.spent * 31 / 25


def test_periods_in_the_reporting_timezone():
    assert month_bounds("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    assert week_bounds("2026-W01") == (date(2025, 12, 29), date(2026, 1, 5))
    # 2026-10-31 17:00 UTC is already 1 November in Shanghai: October just ended.
    assert last_month(datetime(2026, 10, 31, 17, 0, tzinfo=UTC), "Asia/Shanghai") == "2026-10"
    assert last_month(datetime(2026, 10, 31, 15, 0, tzinfo=UTC), "Asia/Shanghai") == "2026-09"
    assert last_week(datetime(2026, 10, 26, 1, 0, tzinfo=UTC), "Asia/Shanghai") == "2026-W43"
    with pytest.raises(ReportError, match="YYYY-MM"):
        month_bounds("2026-13")


def test_empty_month_renders(tmp_path, costsplit_home):
    settings = build_world(tmp_path)
    paths = write_monthly(
        settings, "2025-01", formats=("html", "csv"), out=tmp_path / "empty", now=NOW
    )
    page = paths[0].read_text()
    assert "No spend this month." in page
    assert paths[1].read_text().splitlines() == [monthly_csv([], "2025-01").strip()]


@given(st.lists(st.decimals(min_value=0, max_value=10_000, places=6), min_size=1, max_size=30))
def test_apportioned_parts_add_up_to_the_rounded_total(parts):
    total = round_total(sum(parts, Decimal(0)))
    shown = apportion(total, parts)
    assert sum(shown) == total
    assert all(abs(s - p) < Decimal("0.01") for s, p in zip(shown, parts, strict=True))
    shares = percentages(parts)
    assert sum(shares) in (Decimal("100.0"), Decimal("0.0"))
