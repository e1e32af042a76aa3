"""Settings: one frozen object, loaded once, environment over file over default.

The file is TOML, found by an explicit path (``--config``), then ``COSTSPLIT_CONFIG``, then
``config/costsplit.toml`` beside the working directory; with none of them costsplit runs on its
embedded defaults under ``COSTSPLIT_HOME`` (``~/.costsplit``). Every bad value is a
``ConfigError`` naming the file, the key and its line; an unknown key is an error too.

The environment and the working directory are arguments, so a test passes a dict.
The settings themselves are ``costsplit.settings`` (re-exported here, where callers import
them from); the file's sections are read by ``costsplit.settings_reader``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from costsplit.errors import ConfigError
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
from costsplit.settings_reader import SettingsReader

__all__ = [
    "DEFAULT_CONFIG",
    "REGIONS",
    "ExchangeRate",
    "ProxySettings",
    "Route",
    "Scenario",
    "Schedules",
    "Settings",
    "SmtpSettings",
    "Workspace",
    "find_config_file",
    "load_settings",
]

DEFAULT_CONFIG = Path("config") / "costsplit.toml"


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
    return SettingsReader(config_file, text, environ, cwd).settings(data)
