"""The seam between the forwarder and the recording core (``costsplit.record``).

``ProxyRecording.begin`` opens one ``costsplit.record.Exchange`` per proxied call, with one
``Recorder`` per route (``recorder="proxy"``, the route's region for hosts that name none, such
as a simulator or a gateway). The forwarder then drives the exchange exactly as the recording
client does: ``response``, ``chunk`` for every piece of the body, ``end``, or ``close`` when the
caller went away, or ``error``. Events go to this process's own spool segment.

A per-key default scenario (``[proxy] key_scenarios``: key fingerprint → scenario) is applied as
a ``costsplit.record.scenario`` context, so an ``X-Costsplit-Scenario`` header still wins.

``Passthrough`` records nothing and rewrites nothing: ``costsplit proxy --no-record``, which
exists to measure what recording costs.
"""

from __future__ import annotations

from collections.abc import Iterable

from costsplit.config import Settings
from costsplit.events import fingerprint_key
from costsplit.proxy.routes import Target
from costsplit.record import Exchange, Recorder, scenario


class ProxyRecording:
    """Opens a recorded exchange for each proxied call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key_scenarios = dict(settings.proxy.key_scenarios)
        self._recorders: dict[str, Recorder] = {}

    def recorder(self, target: Target) -> Recorder:
        route = target.route
        recorder = self._recorders.get(route.name)
        if recorder is None:
            recorder = Recorder(None, self.settings, recorder="proxy", region=route.region)
            self._recorders[route.name] = recorder
        return recorder

    def begin(
        self, method: str, target: Target, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Exchange:
        """The exchange for one call; raises ``ModelNotGranted`` when grants are enforced."""
        recorder = self.recorder(target)
        default = self._key_scenario(headers) if self.key_scenarios else None
        if default is None:
            return recorder.begin(method, target.url, headers, body)
        with scenario(default):
            return recorder.begin(method, target.url, headers, body)

    def _key_scenario(self, headers: Iterable[tuple[str, str]]) -> str | None:
        for name, value in headers:
            if name.lower() == "authorization":
                scheme, _, key = value.strip().partition(" ")
                key = key if scheme.lower() == "bearer" else value
                return self.key_scenarios.get(fingerprint_key(key)) if key.strip() else None
        return None


class _Unrecorded:
    """An exchange that forwards everything unchanged and records nothing."""

    __slots__ = ()
    request_headers = None
    request_body = None

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

    _exchange = _Unrecorded()

    def begin(self, method: str, target: Target, headers: object, body: bytes) -> _Unrecorded:
        return self._exchange
