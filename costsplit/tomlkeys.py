"""Typed values out of a parsed TOML document, every error naming file, key and line.

``TomlFields`` wraps the parsed data's source text: ``fail(key, message)`` builds a
``ConfigError`` located at the key's line (a best-effort search that knows tables, arrays of
tables, dotted keys and inline tables, since ``tomllib`` keeps no positions), and the getters
check a value's type, an allowed key set, a decimal amount written as a string, a currency
code or a required string. ``costsplit.settings_reader`` builds ``Settings`` with them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from costsplit.errors import ConfigError


class TomlFields:
    """Located, typed access to one parsed TOML file (or the defaults when there is none)."""

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


def unique(values: list[str], error: Callable[[int], ConfigError]) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise error(i)
        seen.add(value)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
