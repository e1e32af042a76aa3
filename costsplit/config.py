"""Settings: one frozen object, loaded once, environment over file over default.

The file is TOML, found by an explicit path (``--config``), then ``COSTSPLIT_CONFIG``, then
``config/costsplit.toml`` beside the working directory; with none of them costsplit runs on its
embedded defaults under ``COSTSPLIT_HOME`` (``~/.costsplit``). Every bad value is a
``ConfigError`` naming the file, the key and its line; an unknown key is an error too.

The environment and the working directory are arguments, so a test passes a dict.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from costsplit.errors import ConfigError
from costsplit.events import fingerprint_key

DEFAULT_CONFIG = Path("config") / "costsplit.toml"
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
    capture_content: bool = False
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


def find_config_file(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str], cwd: Path
) -> Path | None:
    """The file to read: explicit, then ``COSTSPLIT_CONFIG``, then ``config/costsplit.toml``."""
    if explicit:
        return Path(explicit)
    if environ.get("COSTSPLIT_CONFIG"):
        return Path(environ["COSTSPLIT_CONFIG"])
    candidate = cwd / DEFAULT_CONFIG
    return candidate if candidate.is_file() else None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Load settings: environment over file over default. Raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    config_file = find_config_file(path, environ, cwd)
    data: dict[str, Any] = {}
    text = ""
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read config file: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib (3.11) puts the position only in the message: "... (at line 3, column 16)"
            at = re.search(r"\(at line (\d+), column (\d+)\)$", str(exc))
            if at:
                reason = str(exc)[: at.start()].rstrip()
                message = f"{config_file}:{at[1]}: invalid TOML: {reason} (column {at[2]})"
            else:
                message = f"{config_file}: invalid TOML: {exc}"
            raise ConfigError(message) from exc
    return _Reader(config_file, text, environ, cwd).settings(data)


class _Reader:
    """Turns the parsed TOML into ``Settings``, naming file, key and line on every error."""

    def __init__(self, source: Path | None, text: str, environ: Mapping[str, str], cwd: Path):
        self.source = source
        self.lines = text.splitlines()
        self.environ = environ
        self.base = source.parent.resolve() if source else cwd

    # -- error reporting -------------------------------------------------------------------
    def fail(self, key: str, message: str) -> ConfigError:
        line = self.line_of(key)
        where = (
            f"{self.source}:{line}" if self.source and line else str(self.source or "<defaults>")
        )
        return ConfigError(f"{where}: {key}: {message}")

    def line_of(self, dotted: str) -> int | None:
        """Best-effort line of a dotted key (``workspaces[1].region``) in the TOML text."""
        match = re.fullmatch(
            r"(?:(?P<table>.+?)(?:\[(?P<index>\d+)\])?\.)?(?P<leaf>[^.\[\]]+)(?:\[\d+\])?", dotted
        )
        if not match:
            return None
        table, leaf = match["table"] or "", match["leaf"]
        index = int(match["index"]) if match["index"] else None
        counts: dict[str, int] = {}
        current, current_index, fallback = "", 0, None
        for number, raw in enumerate(self.lines, start=1):
            line = raw.strip()
            header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]", line)
            if header:
                current = re.sub(r"[\s\"']", "", header[2])
                if header[1] == "[[":
                    counts[current] = counts.get(current, -1) + 1
                current_index = counts.get(current, 0)
                if current in (f"{table}.{leaf}" if table else leaf,):
                    return number
                if current == table and index in (None, current_index):
                    fallback = fallback or number
                continue
            in_place = current == table and index in (None, current_index)
            if in_place and re.match(rf"^[\"']?{re.escape(leaf)}[\"']?\s*=", line):
                return number
            # dotted keys (``reporting.timezone = …``) and inline tables (``workspaces = [{…}]``)
            if not current and table:
                top = table.split(".")[0]
                if re.match(rf"^{re.escape(table)}\.{re.escape(leaf)}\s*=", line):
                    return number
                if re.match(rf"^{re.escape(top)}\s*[.=]", line):
                    fallback = fallback or number
        return fallback

    # -- typed getters ---------------------------------------------------------------------
    def table(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail(key, "must be a table")
        for name in data:
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(f"{key}.{name}" if key else name, f"unknown key (known: {known})")
        return data

    def get(
        self, data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any
    ) -> Any:
        short = key.rsplit(".", 1)[-1].split("[")[0]
        if short not in data:
            return default
        value = data[short]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(key, f"must be {_article(names)}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, data: dict[str, Any], key: str) -> tuple[str, ...]:
        value = self.get(data, key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def decimal(self, data: dict[str, Any], key: str) -> Decimal | None:
        if isinstance(data.get(key.rsplit(".", 1)[-1]), float):
            value = data[key.rsplit(".", 1)[-1]]
            raise self.fail(
                key,
                f'must be a decimal amount written as a string such as "{value}", '
                f"got float {value!r}",
            )
        value = self.get(data, key, (str, int), None)
        if value is None:
            return None
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise self.fail(
                key, f'must be a decimal amount such as "12.50", got {value!r}'
            ) from None
        if not amount.is_finite() or amount < 0:
            raise self.fail(key, f"must be a non-negative amount, got {value!r}")
        return amount

    def path(self, value: str) -> Path:
        expanded = Path(os.path.expanduser(value))
        return expanded if expanded.is_absolute() else self.base / expanded

    def env_or(self, name: str, value: Any) -> Any:
        return self.environ.get(name, value) if self.environ.get(name) else value

    def env_int(self, name: str, value: int) -> int:
        raw = self.environ.get(name)
        if not raw:
            return value
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment {name}: must be an integer, got {raw!r}") from None

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

        recording = self.table(
            top.get("recording"), "recording", {"enforce_grants", "capture_content"}
        )
        prices = self.table(top.get("prices"), "prices", {"files"})

        workspaces = tuple(
            self.workspace(w, i) for i, w in enumerate(self.array(top, "workspaces"))
        )
        _unique(
            [w.id for w in workspaces],
            lambda i: self.fail(f"workspaces[{i}].id", "duplicate workspace id"),
        )
        scenarios = tuple(
            self.scenario(s, i, workspaces) for i, s in enumerate(self.array(top, "scenarios"))
        )
        _unique(
            [s.name for s in scenarios],
            lambda i: self.fail(f"scenarios[{i}].name", "duplicate scenario name"),
        )
        fingerprints = [fp for w in workspaces for fp in w.key_fingerprints]
        _unique(
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
            capture_content=self.get(recording, "recording.capture_content", bool, False),
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

    def array(self, top: dict[str, Any], key: str) -> list[Any]:
        value = top.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def currency(self, data: dict[str, Any], key: str, default: str) -> str:
        value = self.get(data, key, str, default)
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise self.fail(
                key, f"must be a three-letter currency code such as USD or CNY, got {value!r}"
            )
        return value

    def required(self, data: dict[str, Any], key: str) -> str:
        value = self.get(data, key, str, None)
        if not value:
            raise self.fail(key, "is required")
        return value

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
        _unique(names, lambda i: self.fail(f"proxy.routes[{i}].name", "duplicate route name"))
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


def _unique(values: list[str], error: Callable[[int], ConfigError]) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise error(i)
        seen.add(value)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
