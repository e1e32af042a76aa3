"""What costsplit is configured with: one frozen ``Settings`` object and its parts.

Plain frozen dataclasses with their defaults; ``costsplit.config.load_settings`` builds one
from the environment, the TOML file and these defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

REGIONS = (
    "ap-southeast-1",
    "cn-beijing",
    "us-east-1",
    "cn-hongkong",
    "ap-northeast-1",
    "eu-central-1",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    region: str
    cost_centre: str = ""
    owners: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # granted models; empty means all (the default workspace)
    key_fingerprints: tuple[str, ...] = ()  # includes those computed from key_envs
    key_envs: tuple[str, ...] = ()
    default_scenario: str = ""

    def grants(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    workspace: str
    owners: tuple[str, ...] = ()
    monthly_budget: Decimal | None = None
    budget_currency: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ExchangeRate:
    month: str  # YYYY-MM
    from_currency: str
    to_currency: str
    rate: Decimal
    date: str = ""
    source: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username_env: str = ""
    password_env: str = ""
    sender: str = "costsplit@localhost"
    timeout_seconds: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Schedules:
    ingest_seconds: int = 60
    rollup_seconds: int = 300
    monthly_report: str = "0 8 1 * *"  # cron, in the reporting timezone
    weekly_digest: str = "0 9 * * mon"
    finance_recipients: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    name: str
    upstream: str
    region: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    timeout_seconds: float = 300.0
    routes: tuple[Route, ...] = ()
    default_route: str = ""
    key_scenarios: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    source: Path | None = None
    home: Path = Path("~/.costsplit")
    database: Path = Path("~/.costsplit/costsplit.duckdb")
    spool_dir: Path = Path("~/.costsplit/spool")
    fsync_interval: float = 0.05  # seconds between group fsyncs; 0 = fsync every event
    timezone: str = "Asia/Shanghai"  # Model Studio bills on UTC+8
    currency: str = "USD"  # reporting currency
    reports_out: Path = Path("reports/out")
    templates_dir: Path | None = None
    enforce_grants: bool = False
    price_books: tuple[Path, ...] = ()  # extra price books layered over the shipped one
    exchange_rates: tuple[ExchangeRate, ...] = ()
    workspaces: tuple[Workspace, ...] = ()
    scenarios: tuple[Scenario, ...] = ()
    smtp: SmtpSettings = SmtpSettings()
    schedules: Schedules = Schedules()
    proxy: ProxySettings = ProxySettings()

    def workspace_for_fingerprint(self, fingerprint: str) -> Workspace | None:
        for workspace in self.workspaces:
            if fingerprint in workspace.key_fingerprints:
                return workspace
        return None

    def workspace(self, workspace_id: str) -> Workspace | None:
        return next((w for w in self.workspaces if w.id == workspace_id), None)
