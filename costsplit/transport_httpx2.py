"""Recording transports for httpx2, the HTTP client of the ``openai`` SDK from v3 on.

    from openai import OpenAI
    import costsplit

    client = OpenAI(
        api_key=os.getenv("DASHSCOPE_API_KEY"),
        base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        http_client=costsplit.recording_client(),  # the one added line
    )

httpx and httpx2 classes cannot be mixed, so these are the twins of ``costsplit.transport``'s,
built from the same mixins over the library-independent ``costsplit.record`` core.
"""

from __future__ import annotations

from typing import Any

import httpx2

from costsplit.config import Settings
from costsplit.record import Sink
from costsplit.transport import (
    AsyncRecordingBody,
    AsyncRecordingMixin,
    SyncRecordingBody,
    SyncRecordingMixin,
    split_transport_options,
)


class _Body(SyncRecordingBody, httpx2.SyncByteStream):
    pass


class _AsyncBody(AsyncRecordingBody, httpx2.AsyncByteStream):
    pass


class Httpx2RecordingTransport(SyncRecordingMixin, httpx2.BaseTransport):
    """An httpx2 transport that records each exchange of ``transport`` (default: HTTPTransport)."""

    _lib = httpx2
    _body = _Body


class AsyncHttpx2RecordingTransport(AsyncRecordingMixin, httpx2.AsyncBaseTransport):
    """The async twin of ``Httpx2RecordingTransport``."""

    _lib = httpx2
    _body = _AsyncBody


def recording_client(
    settings: Settings | None = None,
    *,
    scenario: str | None = None,
    tags: dict[str, str] | None = None,
    region: str | None = None,
    transport: httpx2.BaseTransport | None = None,
    sink: Sink | None = None,
    **client_kwargs: Any,
) -> httpx2.Client:
    """An ``httpx2.Client`` for ``OpenAI(http_client=...)`` whose calls are all recorded.

    ``settings`` default to ``load_settings()``; events go to their spool (or ``sink``).
    ``region`` is used when the host names none (a gateway, a simulator); ``scenario`` and
    ``tags`` are this client's defaults. Other keyword arguments go to ``httpx2.Client``
    (connection options such as ``verify`` or ``limits`` to the inner transport).
    """
    options = split_transport_options(client_kwargs)
    inner = transport if transport is not None else httpx2.HTTPTransport(**options)
    recording = Httpx2RecordingTransport(
        inner, settings=settings, sink=sink, scenario=scenario, tags=tags, region=region
    )
    return httpx2.Client(transport=recording, **client_kwargs)


def async_recording_client(
    settings: Settings | None = None,
    *,
    scenario: str | None = None,
    tags: dict[str, str] | None = None,
    region: str | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    sink: Sink | None = None,
    **client_kwargs: Any,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``AsyncOpenAI(http_client=...)``; see ``recording_client``."""
    options = split_transport_options(client_kwargs)
    inner = transport if transport is not None else httpx2.AsyncHTTPTransport(**options)
    recording = AsyncHttpx2RecordingTransport(
        inner, settings=settings, sink=sink, scenario=scenario, tags=tags, region=region
    )
    return httpx2.AsyncClient(transport=recording, **client_kwargs)
