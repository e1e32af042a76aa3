"""The demo, reduced: a month of traffic through the real recording transport, end to end."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from costsplit import rollup
from costsplit.demo import run_demo
from costsplit.money import round_total
from costsplit.store import connect


def test_reduced_demo_report_equals_the_rollup(tmp_path):
    now = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
    result = run_demo(calls=600, folder=tmp_path / "demo", now=now, threads=8)
    assert result.month == "2026-10"
    assert sorted(p.name for p in result.files) == [
        "costsplit-2026-10.csv",
        "costsplit-2026-10.eml",
        "costsplit-2026-10.html",
    ]
    settings = result.settings
    assert settings.database.is_relative_to(tmp_path)  # its own world, never the user's
    with connect(settings.database) as con:
        rows = rollup.spend_rows(con, settings, date(2026, 10, 1), date(2026, 11, 1))
        recorded = con.execute(
            "SELECT count(*), min(started_at), max(started_at) FROM events"
        ).fetchone()
    # Every planned call is one event, stamped inside the simulated month (Shanghai time).
    assert recorded[0] == 600
    assert recorded[1] >= datetime(2026, 9, 30, 16, 0, tzinfo=UTC)
    assert recorded[2] < datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    report = result.report
    assert report.calls == sum(r.calls for r in rows) == 600
    exact = {}
    for row in rows:
        exact[row.currency] = exact.get(row.currency, Decimal(0)) + row.cost
    assert {t.currency: t.total for t in report.totals} == exact
    assert {t.currency: t.shown for t in report.totals} == {
        c: round_total(v) for c, v in exact.items()
    }
    assert set(exact) == {"USD", "CNY"}
    assert report.converted_total == sum(t.converted_shown for t in report.totals)
    workspaces = {s.workspace_id for s in report.sections}
    assert {
        "ws-support-sg",
        "ws-research-sg",
        "ws-support-cn",
        "ws-analytics-cn",
        "unattributed",
    } <= workspaces
    assert report.attention.denied_calls > 0
    assert report.attention.unpriced_calls == 0
    models = {r.model for r in rows}
    scenarios = {r.scenario for r in rows}
    assert len(models) >= 6 and len(scenarios) >= 8
    html = next(p for p in result.files if p.suffix == ".html").read_text()
    assert report.reporting_currency + " " + f"{report.converted_total:,.2f}" in html
