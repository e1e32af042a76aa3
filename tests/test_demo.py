"""The demo, reduced: a month of traffic through the real recording transport, end to end."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from costsplit import rollup
from costsplit.demo import run_demo
from costsplit.money import round_total
from costsplit.store import connect

REPO = Path(__file__).resolve().parents[1]
_OPENED: list[str] | None = None  # files opened while a test listens (audit hooks stay forever)


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | Path):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def test_reduced_demo_report_equals_the_rollup(tmp_path, monkeypatch):
    global _OPENED
    # Run from the repository root, where config/costsplit.toml names a real-looking SMTP
    # server: the demo must use only the settings it writes for itself.
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COSTSPLIT_CONFIG", str(REPO / "config" / "costsplit.toml"))
    now = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)
    _OPENED = []
    try:
        result = run_demo(calls=600, folder=tmp_path / "demo", now=now, threads=8)
    finally:
        opened, _OPENED = _OPENED, None
    settings_files = {p for p in opened if p.endswith(".toml")}
    assert settings_files == {str(tmp_path / "demo" / "costsplit.toml")}
    assert result.settings.source == tmp_path / "demo" / "costsplit.toml"
    assert result.settings.smtp.host == "localhost"
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
        # Realistic sizes: qwen3-max calls above its first tier bound (32K), implicit cache hits.
        long_calls, cached = con.execute(
            "SELECT count(*) FILTER (WHERE model_requested = 'qwen3-max' AND input_tokens > 32768),"
            " sum(cached_tokens) FROM events"
        ).fetchone()
    # Every planned call is one event, stamped inside the simulated month (Shanghai time).
    assert recorded[0] == 600
    assert recorded[1] >= datetime(2026, 9, 30, 16, 0, tzinfo=UTC)
    assert recorded[2] < datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    assert long_calls > 10 and cached > 100_000
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
