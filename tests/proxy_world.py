"""Shared world of the proxy tests: a proxy in front of a simulator, and the events it spooled."""

from __future__ import annotations

import re
import time
from pathlib import Path

from costsplit.config import ProxySettings, Route, Settings
from costsplit.events import line_fields
from costsplit.proxy import RunningProxy, run_in_thread
from costsplit.spool import spooled_lines

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CREATED = re.compile(rb'"created": ?\d+')
DATE = re.compile(rb'(?i)("date": ")[^"]*"')


def proxy_settings(home: Path, upstream: str, region: str = "ap-southeast-1", **proxy) -> Settings:
    routes = proxy.pop("routes", (Route("sim", upstream, region),))
    return Settings(
        home=home,
        database=home / "costsplit.duckdb",
        spool_dir=home / "spool",
        proxy=ProxySettings(routes=routes, **proxy),
    )


def start_proxy(home: Path, upstream: str, **proxy) -> tuple[RunningProxy, Settings]:
    settings = proxy_settings(home, upstream, **proxy)
    return run_in_thread(settings), settings


def events(settings: Settings) -> list[dict]:
    """Every event in the spool, in order of writing."""
    return [line_fields(line) for line in spooled_lines(settings.spool_dir)]


def wait_events(settings: Settings, count: int, deadline: float = 10.0) -> list[dict]:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        found = events(settings)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"expected {count} events, found {len(events(settings))}")


def normalise(output: bytes | str) -> bytes:
    """Output with the ids and timestamps the simulator randomises replaced by placeholders."""
    data = output.encode() if isinstance(output, str) else output
    data = DATE.sub(rb'\1<date>"', CREATED.sub(b'"created":0', data))
    return UUID.sub(b"<uuid>", data)


def tokens(event: dict) -> dict:
    """The facts of an event a test compares (whole, minus ids, times and host)."""
    names = (
        "recorder", "api_style", "endpoint", "region", "key_fingerprint", "key_hint",
        "workspace_observed", "scenario", "tags", "model_requested", "streamed", "outcome",
        "http_status", "error_code", "usage_source", "input_tokens", "output_tokens",
        "total_tokens", "cached_tokens",
    )  # fmt: skip
    return {name: event[name] for name in names}
