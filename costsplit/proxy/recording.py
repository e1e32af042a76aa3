"""The seam between the forwarder and the recording core (``costsplit.record``).

``ProxyRecording.begin`` opens one ``costsplit.record.Exchange`` per proxied call, with one
``Recorder`` per route (``recorder="proxy"``, the route's region for hosts that name none, such
as a simulator or a gateway). The forwarder then drives the exchange exactly as the recording
client does: ``response``, ``chunk`` for every piece of the body, ``end``, or ``close`` when the
caller went away, or ``error``. Events go to this process's own spool segment.

A per-key default scenario (``[proxy] key_scenarios``: key fingerprint → scenario) is the
default scenario of the recorder the call goes through (one per route and scenario), so an
``X-Costsplit-Scenario`` header still wins.

A non-streamed call's exchange is ended with ``end_soon``: together with the other calls
whose answers were read in the same turn of the event loop, one after another, before any of
their answers goes out. Ended between other calls' network work, the recording code ran with
cold caches; ended in a row, the proxy spent 1-11% less CPU per call under load in alternating
runs against ending each at once (``benchmarks/bench_proxy.py``; the host's noise is as
large), at the price of one turn of the loop per call.

``Passthrough`` records nothing and rewrites nothing: ``costsplit proxy --no-record``, which
exists to measure what recording costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from costsplit.config import Settings
from costsplit.proxy.routes import Target
from costsplit.record import Exchange, Recorder, recording_errors
from costsplit.spool import open_spool


class ProxyRecording:
    """Opens a recorded exchange for each proxied call."""

    records = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key_scenarios = dict(settings.proxy.key_scenarios)
        self._recorders: dict[tuple[str, str | None], Recorder] = {}
        self._routes: dict[str, Recorder] = {}  # route name -> its recorder without a default
        self._ending: list[Exchange] = []  # exchanges to end in this turn of the event loop

    def recorder(self, target: Target, scenario: str | None = None) -> Recorder:
        """The route's recorder; with a per-key default ``scenario``, one per scenario (the
        recorder's default: an ``X-Costsplit-Scenario`` header still wins)."""
        route = target.route
        recorder = self._recorders.get((route.name, scenario))
        if recorder is None:
            recorder = Recorder(
                None, self.settings, recorder="proxy", region=route.region, scenario=scenario
            )
            self._recorders[(route.name, scenario)] = recorder
            if scenario is None:
                self._routes[route.name] = recorder
        return recorder

    def begin(
        self, method: str, target: Target, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Exchange:
        """The exchange for one call; raises ``ModelNotGranted`` when grants are enforced."""
        recorder = self._routes.get(target.route.name) or self.recorder(target)
        if self.key_scenarios:
            default = self._key_scenario(recorder, headers)
            if default is not None:
                recorder = self.recorder(target, default)
        return recorder.begin(method, target.url, headers, body)

    async def end_soon(self, exchange: Exchange) -> None:
        """End ``exchange`` (its event written) in a row with the other exchanges ended in this
        turn of the event loop; return once it is ended, before the caller's answer goes out.
        """
        if not self._ending:
            asyncio.get_running_loop().call_soon(self._end_all)
        self._ending.append(exchange)
        try:
            await asyncio.sleep(0)  # _end_all runs first: it was scheduled before this resumes
        finally:
            exchange.end()  # nothing more once _end_all ended it; ends it if cancelled first

    def _end_all(self) -> None:
        ending, self._ending = self._ending, []
        for exchange in ending:
            exchange.end()

    def health(self) -> dict[str, object]:
        """This process's recording: events held for want of disk space, errors so far."""
        return {
            "recording": True,
            "events_held": open_spool(self.settings).held,
            "recording_errors": recording_errors(),
        }

    def _key_scenario(self, recorder: Recorder, headers: Iterable[tuple[str, str]]) -> str | None:
        # The recorder knows each key's fingerprint already (hashed once per Authorization value).
        for name, value in headers:
            if name.lower() == "authorization":
                fingerprint = recorder.key(value).fingerprint
                return self.key_scenarios.get(fingerprint) if fingerprint else None
        return None


class _Unrecorded:
    """An exchange that forwards everything unchanged and records nothing."""

    __slots__ = ()
    request_body = None

    def keeper(self) -> None:
        return None

    def response(self, status: int, headers: object) -> None:
        pass

    def chunk(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""

    def close(self) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        pass


class Passthrough:
    """Records nothing (``--no-record``)."""

    records = False
    _exchange = _Unrecorded()

    def begin(self, method: str, target: Target, headers: object, body: bytes) -> _Unrecorded:
        return self._exchange

    def health(self) -> dict[str, object]:
        return {"recording": False, "events_held": 0, "recording_errors": 0}
