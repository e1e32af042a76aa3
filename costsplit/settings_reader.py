"""The costsplit settings file: its sections read into ``Settings``.

Each section (storage, reporting, recording, prices, exchange_rates, workspaces, scenarios,
smtp, schedules, proxy) is read with the located, typed getters of ``TomlFields``: an unknown
key, a bad type or value is a ``ConfigError`` naming the file, the key and its line. The
environment overrides the file where a ``COSTSPLIT_*`` variable says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from costsplit.errors import ConfigError
from costsplit.events import fingerprint_key
from costsplit.settings import (
    REGIONS,
    ExchangeRate,
    ProxySettings,
    Route,
    Scenario,
    Schedules,
    Settings,
    SmtpSettings,
    Workspace,
)
from costsplit.tomlkeys import TomlFields, unique


class SettingsReader(TomlFields):
    """Turns the parsed TOML into ``Settings``, naming file, key and line on every error."""

    # -- the whole file --------------------------------------------------------------------
    def settings(self, data: dict[str, Any]) -> Settings:
        top = self.table(
            data,
            "",
            {
                "storage",
                "reporting",
                "recording",
                "prices",
                "exchange_rates",
                "workspaces",
                "scenarios",
                "smtp",
                "schedules",
                "proxy",
            },
        )
        storage = self.table(
            top.get("storage"), "storage", {"home", "database", "spool", "fsync_interval_ms"}
        )
        home_value = self.env_or(
            "COSTSPLIT_HOME", self.get(storage, "storage.home", str, "~/.costsplit")
        )
        home = Path(os.path.expanduser(home_value))
        home = home if home.is_absolute() else self.base / home
        database = self.env_or(
            "COSTSPLIT_DATABASE", self.get(storage, "storage.database", str, "costsplit.duckdb")
        )
        spool = self.env_or("COSTSPLIT_SPOOL", self.get(storage, "storage.spool", str, "spool"))
        fsync_ms = self.get(storage, "storage.fsync_interval_ms", (int, float), 50)
        if fsync_ms < 0:
            raise self.fail("storage.fsync_interval_ms", "must be 0 (fsync every event) or more")

        reporting = self.table(
            top.get("reporting"), "reporting", {"timezone", "currency", "output", "templates"}
        )
        timezone = self.env_or(
            "COSTSPLIT_TIMEZONE", self.get(reporting, "reporting.timezone", str, "Asia/Shanghai")
        )
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            if self.environ.get("COSTSPLIT_TIMEZONE"):
                raise ConfigError(
                    f"environment COSTSPLIT_TIMEZONE: unknown time zone {timezone!r}"
                ) from None
            raise self.fail("reporting.timezone", f"unknown time zone {timezone!r}") from None
        currency = self.currency(reporting, "reporting.currency", "USD")
        output = self.get(reporting, "reporting.output", str, "")
        templates = self.get(reporting, "reporting.templates", str, "")

        recording = self.table(top.get("recording"), "recording", {"enforce_grants"})
        prices = self.table(top.get("prices"), "prices", {"files"})

        workspaces = tuple(
            self.workspace(w, i) for i, w in enumerate(self.array(top, "workspaces"))
        )
        unique(
            [w.id for w in workspaces],
            lambda i: self.fail(f"workspaces[{i}].id", "duplicate workspace id"),
        )
        scenarios = tuple(
            self.scenario(s, i, workspaces) for i, s in enumerate(self.array(top, "scenarios"))
        )
        unique(
            [s.name for s in scenarios],
            lambda i: self.fail(f"scenarios[{i}].name", "duplicate scenario name"),
        )
        fingerprints = [fp for w in workspaces for fp in w.key_fingerprints]
        unique(
            fingerprints,
            lambda i: self.fail("workspaces", f"key {fingerprints[i]} belongs to two workspaces"),
        )

        return Settings(
            source=self.source,
            home=home,
            database=_under(home, database),
            spool_dir=_under(home, spool),
            fsync_interval=fsync_ms / 1000,
            timezone=timezone,
            currency=currency,
            reports_out=self.path(output) if output else home / "reports" / "out",
            templates_dir=self.path(templates) if templates else None,
            enforce_grants=self.get(recording, "recording.enforce_grants", bool, False),
            price_books=tuple(self.path(p) for p in self.strings(prices, "prices.files")),
            exchange_rates=tuple(
                self.rate(r, i) for i, r in enumerate(self.array(top, "exchange_rates"))
            ),
            workspaces=workspaces,
            scenarios=scenarios,
            smtp=self.smtp(top.get("smtp")),
            schedules=self.schedules(top.get("schedules")),
            proxy=self.proxy(top.get("proxy")),
        )

    def workspace(self, data: Any, i: int) -> Workspace:
        key = f"workspaces[{i}]"
        data = self.table(
            data,
            key,
            {
                "id",
                "name",
                "region",
                "cost_centre",
                "owners",
                "models",
                "key_fingerprints",
                "key_envs",
                "default_scenario",
            },
        )
        region = self.required(data, f"{key}.region")
        if region not in REGIONS:
            raise self.fail(
                f"{key}.region", f"unknown region {region!r} (known: {', '.join(REGIONS)})"
            )
        fingerprints = list(self.strings(data, f"{key}.key_fingerprints"))
        for fp in fingerprints:
            if not re.fullmatch(r"sha256:[0-9a-f]{16}", fp):
                raise self.fail(
                    f"{key}.key_fingerprints",
                    f"{fp!r} is not a fingerprint (run `costsplit fingerprint`)",
                )
        key_envs = self.strings(data, f"{key}.key_envs")
        for name in key_envs:
            # The key itself is read here and only its fingerprint is kept.
            if self.environ.get(name):
                fingerprints.append(fingerprint_key(self.environ[name]))
        workspace_id = self.required(data, f"{key}.id")
        return Workspace(
            id=workspace_id,
            name=self.get(data, f"{key}.name", str, workspace_id),
            region=region,
            cost_centre=self.get(data, f"{key}.cost_centre", str, ""),
            owners=self.strings(data, f"{key}.owners"),
            models=self.strings(data, f"{key}.models"),
            key_fingerprints=tuple(dict.fromkeys(fingerprints)),
            key_envs=key_envs,
            default_scenario=self.get(data, f"{key}.default_scenario", str, ""),
        )

    def scenario(self, data: Any, i: int, workspaces: tuple[Workspace, ...]) -> Scenario:
        key = f"scenarios[{i}]"
        data = self.table(
            data, key, {"name", "workspace", "owners", "monthly_budget", "budget_currency"}
        )
        workspace = self.required(data, f"{key}.workspace")
        if workspaces and workspace not in {w.id for w in workspaces}:
            raise self.fail(f"{key}.workspace", f"no workspace with id {workspace!r}")
        budget = self.decimal(data, f"{key}.monthly_budget")
        return Scenario(
            name=self.required(data, f"{key}.name"),
            workspace=workspace,
            owners=self.strings(data, f"{key}.owners"),
            monthly_budget=budget,
            budget_currency=self.currency(data, f"{key}.budget_currency", "USD")
            if budget is not None
            else "",
        )

    def rate(self, data: Any, i: int) -> ExchangeRate:
        key = f"exchange_rates[{i}]"
        data = self.table(data, key, {"month", "from", "to", "rate", "date", "source"})
        month = self.required(data, f"{key}.month")
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
            raise self.fail(f"{key}.month", f"must be YYYY-MM, got {month!r}")
        rate = self.decimal(data, f"{key}.rate")
        if rate is None or rate == 0:
            raise self.fail(
                f"{key}.rate", "is required and must be positive (write it as a string)"
            )
        return ExchangeRate(
            month=month,
            from_currency=self.currency(data, f"{key}.from", ""),
            to_currency=self.currency(data, f"{key}.to", ""),
            rate=rate,
            date=self.get(data, f"{key}.date", str, ""),
            source=self.get(data, f"{key}.source", str, ""),
        )

    def smtp(self, data: Any) -> SmtpSettings:
        data = self.table(
            data,
            "smtp",
            {
                "host",
                "port",
                "security",
                "username_env",
                "password_env",
                "sender",
                "timeout_seconds",
            },
        )
        security = self.get(data, "smtp.security", str, "none")
        if security not in ("none", "starttls", "tls"):
            raise self.fail("smtp.security", f"must be none, starttls or tls, got {security!r}")
        port = self.get(data, "smtp.port", int, 465 if security == "tls" else 25)
        if not 0 < port < 65536:
            raise self.fail("smtp.port", f"must be a TCP port, got {port}")
        return SmtpSettings(
            host=self.env_or("COSTSPLIT_SMTP_HOST", self.get(data, "smtp.host", str, "localhost")),
            port=self.env_int("COSTSPLIT_SMTP_PORT", port),
            security=security,
            username_env=self.get(data, "smtp.username_env", str, ""),
            password_env=self.get(data, "smtp.password_env", str, ""),
            sender=self.get(data, "smtp.sender", str, "costsplit@localhost"),
            timeout_seconds=self.get(data, "smtp.timeout_seconds", float, 30.0),
        )

    def schedules(self, data: Any) -> Schedules:
        data = self.table(
            data,
            "schedules",
            {
                "ingest_seconds",
                "rollup_seconds",
                "monthly_report",
                "weekly_digest",
                "finance_recipients",
            },
        )
        for key in ("ingest_seconds", "rollup_seconds"):
            if self.get(data, f"schedules.{key}", int, 1) <= 0:
                raise self.fail(f"schedules.{key}", "must be a positive number of seconds")
        for key in ("monthly_report", "weekly_digest"):
            value = self.get(data, f"schedules.{key}", str, "* * * * *")
            if len(value.split()) != 5:
                raise self.fail(
                    f"schedules.{key}", f"must be a five-field cron expression, got {value!r}"
                )
        defaults = Schedules()
        return Schedules(
            ingest_seconds=self.get(data, "schedules.ingest_seconds", int, defaults.ingest_seconds),
            rollup_seconds=self.get(data, "schedules.rollup_seconds", int, defaults.rollup_seconds),
            monthly_report=self.get(data, "schedules.monthly_report", str, defaults.monthly_report),
            weekly_digest=self.get(data, "schedules.weekly_digest", str, defaults.weekly_digest),
            finance_recipients=self.strings(data, "schedules.finance_recipients"),
        )

    def proxy(self, data: Any) -> ProxySettings:
        data = self.table(
            data,
            "proxy",
            {
                "host",
                "port",
                "max_body_bytes",
                "max_header_bytes",
                "timeout_seconds",
                "routes",
                "default_route",
                "key_scenarios",
            },
        )
        routes = []
        for i, route in enumerate(data.get("routes", [])):
            key = f"proxy.routes[{i}]"
            route = self.table(route, key, {"name", "upstream", "region"})
            upstream = self.required(route, f"{key}.upstream")
            if not re.match(r"^https?://[^/]+", upstream):
                raise self.fail(f"{key}.upstream", f"must be an http(s) URL, got {upstream!r}")
            region = self.get(route, f"{key}.region", str, "")
            if region and region not in REGIONS:
                raise self.fail(f"{key}.region", f"unknown region {region!r}")
            routes.append(
                Route(
                    name=self.required(route, f"{key}.name"),
                    upstream=upstream.rstrip("/"),
                    region=region,
                )
            )
        names = [r.name for r in routes]
        unique(names, lambda i: self.fail(f"proxy.routes[{i}].name", "duplicate route name"))
        default_route = self.get(data, "proxy.default_route", str, names[0] if names else "")
        if default_route and default_route not in names:
            raise self.fail("proxy.default_route", f"no route named {default_route!r}")
        key_scenarios = self.table(
            data.get("key_scenarios"),
            "proxy.key_scenarios",
            set(data.get("key_scenarios", {}) or {}),
        )
        if not all(isinstance(v, str) for v in key_scenarios.values()):
            raise self.fail("proxy.key_scenarios", "must map key fingerprints to scenario names")
        defaults = ProxySettings()
        return ProxySettings(
            host=self.get(data, "proxy.host", str, defaults.host),
            port=self.get(data, "proxy.port", int, defaults.port),
            max_body_bytes=self.get(data, "proxy.max_body_bytes", int, defaults.max_body_bytes),
            max_header_bytes=self.get(
                data, "proxy.max_header_bytes", int, defaults.max_header_bytes
            ),
            timeout_seconds=self.get(
                data, "proxy.timeout_seconds", float, defaults.timeout_seconds
            ),
            routes=tuple(routes),
            default_route=default_route,
            key_scenarios=dict(key_scenarios),
        )


def _under(home: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else home / path
