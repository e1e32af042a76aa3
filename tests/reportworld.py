"""A small, fixed world for the report, delivery and scheduler tests.

Three workspaces (two in Singapore billing USD, one in Beijing billing CNY), scenarios with and
without budgets, an unmapped key, an unpriced model, denied and failed calls, spend in October
2026 and September 2026 (for the change against last month), and a CNY→USD rate for October.
Events go into a real DuckDB file and are rolled up by the real rollup.
"""

from __future__ import annotations

import email
import email.policy
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventrows import insert_events

from costsplit import rollup
from costsplit.config import load_settings
from costsplit.events import UsageEvent, fingerprint_key
from costsplit.store import connect

KEYS = {
    "support": "sk-test-support-0001",
    "research": "sk-test-research-002",
    "beijing": "sk-test-beijing-0003",
    "<script>": "sk-test-script-00004",
    "unmapped": "sk-test-unmapped-005",
}

CONFIG = """
[reporting]
timezone = "Asia/Shanghai"
currency = "USD"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
sender = "costsplit@example.com"

[schedules]
finance_recipients = ["finance@example.com"]

[[exchange_rates]]
month = "2026-10"
from = "CNY"
to = "USD"
rate = "0.1400"
date = "2026-10-31"
source = "treasury month-end rate"

[[workspaces]]
id = "ws-support"
name = "Customer support"
region = "ap-southeast-1"
cost_centre = "CC-100"
owners = ["support-lead@example.com"]
key_fingerprints = ["{support}"]

[[workspaces]]
id = "ws-research"
name = "Research"
region = "ap-southeast-1"
cost_centre = "CC-200"
owners = ["research-lead@example.com"]
key_fingerprints = ["{research}"]

[[workspaces]]
id = "ws-beijing"
name = "Beijing ops"
region = "cn-beijing"
cost_centre = "CC-300"
key_fingerprints = ["{beijing}"]

[[workspaces]]
id = "ws-xss"
name = "<script>alert(1)</script>"
region = "ap-southeast-1"
cost_centre = "CC-<b>"
key_fingerprints = ["{script}"]

[[scenarios]]
name = "chatbot"
workspace = "ws-support"
owners = ["bot-owner@example.com"]
monthly_budget = "{budget}"
budget_currency = "USD"

[[scenarios]]
name = "summaries"
workspace = "ws-research"
owners = ["research-lead@example.com"]
"""


def world_settings(tmp_path: Path, *, smtp_port: int = 2525, budget: str = "100"):
    """Write the world's config under ``tmp_path`` and load it (home from COSTSPLIT_HOME)."""
    path = tmp_path / "costsplit.toml"
    path.write_text(
        CONFIG.format(
            smtp_port=smtp_port,
            budget=budget,
            support=fingerprint_key(KEYS["support"]),
            research=fingerprint_key(KEYS["research"]),
            beijing=fingerprint_key(KEYS["beijing"]),
            script=fingerprint_key(KEYS["<script>"]),
        )
    )
    return load_settings(path)


def _event(
    key: str, at: datetime, model: str, region: str, scenario: str | None, **fields
) -> UsageEvent:
    return UsageEvent(
        started_at=at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        key_fingerprint=fingerprint_key(KEYS[key]),
        model_requested=model,
        model_returned=model,
        region=region,
        scenario=scenario,
        usage_source="reported" if fields.get("input_tokens") else "missing",
        http_status=fields.pop("http_status", 200),
        **fields,
    )


def world_events() -> list[UsageEvent]:
    """The world's events: October 2026 (the report month) and some of September."""
    sg, bj = "ap-southeast-1", "cn-beijing"
    start = datetime(2026, 9, 30, 16, 0, tzinfo=UTC)  # 2026-10-01 00:00 in Shanghai
    events = []
    for day in range(31):
        at = start + timedelta(days=day, hours=3)
        n = 1 + day % 4
        for i in range(n):
            events.append(
                _event(
                    "support",
                    at + timedelta(minutes=i),
                    "qwen-plus",
                    sg,
                    "chatbot",
                    input_tokens=12_000 + 1_000 * i,
                    output_tokens=800,
                    cached_tokens=2_048,
                    reasoning_tokens=300 if i % 2 else 0,
                )
            )
        events.append(
            _event("support", at, "qwen-flash", sg, None, input_tokens=3_333, output_tokens=333)
        )
        events.append(
            _event(
                "research",
                at,
                "qwen3-max",
                sg,
                "summaries",
                input_tokens=20_000 + day * 100,
                output_tokens=2_000,
            )
        )
        events.append(
            _event(
                "research",
                at,
                "qwen3-max",
                sg,
                "<script>alert(1)</script>",
                input_tokens=1_111,
                output_tokens=111,
            )
        )
        events.append(
            _event(
                "beijing", at, "qwen-plus", bj, "tickets", input_tokens=50_000, output_tokens=4_000
            )
        )
        if day % 3 == 0:
            events.append(
                _event(
                    "unmapped",
                    at,
                    "qwen-plus",
                    sg,
                    "mystery",
                    input_tokens=7_000,
                    output_tokens=700,
                )
            )
        if day % 7 == 0:
            events.append(
                _event(
                    "research",
                    at,
                    "qwen9-imaginary",
                    sg,
                    "summaries",
                    input_tokens=5_000,
                    output_tokens=500,
                )
            )
            events.append(
                _event(
                    "support",
                    at,
                    "qwen3-max",
                    sg,
                    "chatbot",
                    outcome="denied_local",
                    http_status=None,
                )
            )
            events.append(
                _event(
                    "support",
                    at,
                    "qwen-plus",
                    sg,
                    "chatbot",
                    outcome="http_error",
                    http_status=429,
                    error_code="Throttling",
                )
            )
        events.append(
            _event(
                "<script>",
                at,
                "qwen-flash",
                sg,
                "<script>alert(1)</script>",
                input_tokens=900,
                output_tokens=90,
            )
        )
    september = datetime(2026, 9, 10, 4, 0, tzinfo=UTC)
    for day in range(10):
        at = september + timedelta(days=day)
        events.append(
            _event(
                "support", at, "qwen-plus", sg, "chatbot", input_tokens=30_000, output_tokens=3_000
            )
        )
        events.append(
            _event(
                "beijing", at, "qwen-plus", bj, "tickets", input_tokens=40_000, output_tokens=2_000
            )
        )
    return events


def build_world(tmp_path: Path, *, smtp_port: int = 2525, budget: str = "100"):
    """Settings for the world, with its events ingested and rolled up in a real database."""
    settings = world_settings(tmp_path, smtp_port=smtp_port, budget=budget)
    with connect(settings.database) as con:
        insert_events(con, world_events())
        rollup.refresh(con, settings)
    return settings


class Inbox:
    """An aiosmtpd handler keeping every message it accepts as (recipients, message)."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((tuple(envelope.rcpt_tos), message))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
