"""Faults on demand: latency, slow first byte, cut streams, 500s, in-stream errors, rate limits.

A request asks for faults with the header ``X-Simulator-Fault``, a comma-separated list of
``stream-error[=N]`` (native: ``event:error`` with HTTP 200 after N result events, default 1;
compatible: a ``data: {"error": ...}`` line, UNCERTAIN shape), ``cut-after=N`` (the stream
closes abruptly after N events), ``status=500``, ``latency-ms=N`` and ``first-byte-ms=N``.
Header values win over the config's global knobs.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from costsplit.simulator.config import SimulatorConfig
from costsplit.simulator.envelopes import invalid_parameter

FAULT_HEADER = "x-simulator-fault"


@dataclass(frozen=True)
class Faults:
    """The faults that apply to one request."""

    latency_ms: int = 0
    first_byte_ms: int = 0
    cut_after: int | None = None
    stream_error_after: int | None = None
    status: int | None = None


def parse_faults(header: str | None, config: SimulatorConfig, draw: Callable[[], float]) -> Faults:
    """Combine the request's fault header with the config's knobs (`draw` is the seeded RNG)."""
    values: dict[str, int | None] = {
        "latency_ms": config.latency_ms,
        "first_byte_ms": config.first_byte_ms,
        "cut_after": config.cut_after,
        "stream_error_after": None,
        "status": 500 if config.error_rate and draw() < config.error_rate else None,
    }
    for item in (header or "").split(","):
        name, _, raw = item.strip().partition("=")
        if not name:
            continue
        field = {
            "latency-ms": "latency_ms",
            "first-byte-ms": "first_byte_ms",
            "cut-after": "cut_after",
            "stream-error": "stream_error_after",
            "status": "status",
        }.get(name)
        if field is None or (not raw.strip().isdigit() and name != "stream-error"):
            raise invalid_parameter(f"Unknown simulator fault {item.strip()!r}.")
        values[field] = int(raw) if raw.strip() else 1
    return Faults(**values)  # type: ignore[arg-type]


class RateLimiter:
    """Requests per minute per canonical model, over all keys, in a sliding 60-second window."""

    def __init__(self, limits: dict[str, int], clock: Callable[[], float] = time.monotonic):
        self._limits = limits
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, model: str) -> bool:
        """Count this request; False when the model's limit for the last minute is used up."""
        limit = self._limits.get(model)
        if limit is None:
            return True
        now = self._clock()
        with self._lock:
            window = self._seen.setdefault(model, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= limit:
                return False
            window.append(now)
            return True


class SeededDraw:
    """A thread-safe uniform draw in [0, 1) from a generator seeded by the config."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._rng.random()
