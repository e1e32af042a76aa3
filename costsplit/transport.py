"""Recording transports for httpx: wrap any inner transport, record every exchange.

    import costsplit, httpx
    client = costsplit.recording_httpx_client(scenario="nightly-summaries")
    # or: httpx.Client(transport=costsplit.RecordingTransport(httpx.HTTPTransport()))

The transports are thin adapters over ``costsplit.record`` (an exchange in, one usage event
out); ``costsplit.transport_httpx2`` holds the same adapters for httpx2, the HTTP client of the
``openai`` SDK from v3 on. The logic lives once, in the mixins here; each library gets its twin
classes by naming its module in ``_lib``.

What the caller gets is the inner transport's response: same status, headers and chunks as
they arrive (a compatible-mode stream loses only the usage-only chunk costsplit asked for).
The event is written when the response body ends, is closed by the caller (early → the
``interrupted`` outcome) or fails; a request that fails before a response is a
``network_error``. Recording never raises into the caller, except ``ModelNotGranted`` when
grants are enforced (raised before any network I/O).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import httpx

from costsplit.config import Settings
from costsplit.record import Exchange, Recorder, Sink

# Client options that configure the connection pool: given to a ready client, they go to the
# inner transport it builds (a client with ``transport=`` ignores them, and ``proxy`` would
# otherwise mount a second transport that bypasses recording).
TRANSPORT_OPTIONS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")


def make_recorder(
    recorder: Recorder | None,
    settings: Settings | None,
    sink: Sink | None,
    scenario: str | None,
    tags: dict[str, str] | None,
    region: str | None,
) -> Recorder:
    if recorder is not None:
        return recorder
    return Recorder(sink, settings, scenario=scenario, tags=tags, region=region or "")


def _request_body(lib: ModuleType, request: Any) -> bytes:
    try:
        return request.content
    except lib.RequestNotRead:
        return b""  # a streamed upload (files): not read here, so not consumed


def _outgoing(lib: ModuleType, request: Any, exchange: Exchange) -> Any:
    """The request to send: the caller's, or a copy without X-Costsplit-* / with include_usage."""
    if exchange.request_headers is None and exchange.request_body is None:
        return request
    headers = exchange.request_headers
    if headers is None:
        headers = request.headers
    if exchange.request_body is not None:
        return lib.Request(
            request.method,
            request.url,
            headers=headers,
            content=exchange.request_body,
            extensions=request.extensions,
        )
    return lib.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


class SyncRecordingBody:
    """A response body stream that shows each chunk to the exchange as it passes."""

    def __init__(self, inner: Any, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        keep = exchange.plain_sink()
        try:
            if keep is None:
                for chunk in self._inner:
                    out = exchange.chunk(chunk)
                    if out:
                        yield out
            else:
                # The common path: one list append per chunk, the rest at the end.
                chunks = iter(self._inner)
                for chunk in chunks:
                    exchange.first_chunk()
                    keep(chunk)
                    yield chunk
                    break
                for count, chunk in enumerate(chunks, 2):
                    keep(chunk)
                    yield chunk
                    if not count & 255:
                        exchange.trim()
        except GeneratorExit:
            exchange.close()
            raise
        except BaseException as exc:
            exchange.error(exc)
            raise
        rest = exchange.end()
        if rest:
            yield rest

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._exchange.close()


class AsyncRecordingBody:
    """The async twin of ``SyncRecordingBody``."""

    def __init__(self, inner: Any, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        keep = exchange.plain_sink()
        try:
            if keep is None:
                async for chunk in self._inner:
                    out = exchange.chunk(chunk)
                    if out:
                        yield out
            else:
                count = 0
                async for chunk in self._inner:
                    if not count:
                        exchange.first_chunk()
                    keep(chunk)
                    yield chunk
                    count += 1
                    if not count & 255:
                        exchange.trim()
        except GeneratorExit:
            exchange.close()
            raise
        except BaseException as exc:
            exchange.error(exc)
            raise
        rest = exchange.end()
        if rest:
            yield rest

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._exchange.close()


class SyncRecordingMixin:
    """``handle_request`` of a recording transport; ``_lib`` and ``_body`` name the library."""

    _lib: ModuleType
    _body: type

    def __init__(
        self,
        transport: Any = None,
        *,
        recorder: Recorder | None = None,
        settings: Settings | None = None,
        sink: Sink | None = None,
        scenario: str | None = None,
        tags: dict[str, str] | None = None,
        region: str | None = None,
    ) -> None:
        self.inner = transport if transport is not None else self._lib.HTTPTransport()
        self.recorder = make_recorder(recorder, settings, sink, scenario, tags, region)

    def handle_request(self, request: Any) -> Any:
        lib = self._lib
        exchange = self.recorder.begin(
            request.method,
            str(request.url),
            request.headers.multi_items(),
            _request_body(lib, request),
        )
        outgoing = _outgoing(lib, request, exchange)
        try:
            response = self.inner.handle_request(outgoing)
        except BaseException as exc:
            exchange.error(exc)
            raise
        exchange.response(response.status_code, response.headers.multi_items())
        try:
            content = response.content  # an inner transport that returns a read response
        except lib.ResponseNotRead:
            response.stream = self._body(response.stream, exchange)
            return response
        return lib.Response(
            response.status_code,
            headers=response.headers,
            stream=self._body(lib.ByteStream(content), exchange),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class AsyncRecordingMixin:
    """The async twin of ``SyncRecordingMixin``."""

    _lib: ModuleType
    _body: type

    def __init__(
        self,
        transport: Any = None,
        *,
        recorder: Recorder | None = None,
        settings: Settings | None = None,
        sink: Sink | None = None,
        scenario: str | None = None,
        tags: dict[str, str] | None = None,
        region: str | None = None,
    ) -> None:
        self.inner = transport if transport is not None else self._lib.AsyncHTTPTransport()
        self.recorder = make_recorder(recorder, settings, sink, scenario, tags, region)

    async def handle_async_request(self, request: Any) -> Any:
        lib = self._lib
        exchange = self.recorder.begin(
            request.method,
            str(request.url),
            request.headers.multi_items(),
            _request_body(lib, request),
        )
        outgoing = _outgoing(lib, request, exchange)
        try:
            response = await self.inner.handle_async_request(outgoing)
        except BaseException as exc:
            exchange.error(exc)
            raise
        exchange.response(response.status_code, response.headers.multi_items())
        try:
            content = response.content
        except lib.ResponseNotRead:
            response.stream = self._body(response.stream, exchange)
            return response
        return lib.Response(
            response.status_code,
            headers=response.headers,
            stream=self._body(lib.ByteStream(content), exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Body(SyncRecordingBody, httpx.SyncByteStream):
    pass


class _AsyncBody(AsyncRecordingBody, httpx.AsyncByteStream):
    pass


class RecordingTransport(SyncRecordingMixin, httpx.BaseTransport):
    """An httpx transport that records each exchange of ``transport`` (default: HTTPTransport)."""

    _lib = httpx
    _body = _Body


class AsyncRecordingTransport(AsyncRecordingMixin, httpx.AsyncBaseTransport):
    """The async twin of ``RecordingTransport``."""

    _lib = httpx
    _body = _AsyncBody


def split_transport_options(client_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: client_kwargs.pop(name) for name in TRANSPORT_OPTIONS if name in client_kwargs}


def recording_httpx_client(
    settings: Settings | None = None,
    *,
    scenario: str | None = None,
    tags: dict[str, str] | None = None,
    region: str | None = None,
    transport: httpx.BaseTransport | None = None,
    sink: Sink | None = None,
    **client_kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose calls are recorded (for native DashScope calls over httpx)."""
    options = split_transport_options(client_kwargs)
    inner = transport if transport is not None else httpx.HTTPTransport(**options)
    recording = RecordingTransport(
        inner, settings=settings, sink=sink, scenario=scenario, tags=tags, region=region
    )
    return httpx.Client(transport=recording, **client_kwargs)


def async_recording_httpx_client(
    settings: Settings | None = None,
    *,
    scenario: str | None = None,
    tags: dict[str, str] | None = None,
    region: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sink: Sink | None = None,
    **client_kwargs: Any,
) -> httpx.AsyncClient:
    """The async twin of ``recording_httpx_client``."""
    options = split_transport_options(client_kwargs)
    inner = transport if transport is not None else httpx.AsyncHTTPTransport(**options)
    recording = AsyncRecordingTransport(
        inner, settings=settings, sink=sink, scenario=scenario, tags=tags, region=region
    )
    return httpx.AsyncClient(transport=recording, **client_kwargs)
