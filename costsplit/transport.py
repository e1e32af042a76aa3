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

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import httpx

from costsplit.config import Settings
from costsplit.record import (
    BODY_HEADERS,
    HEADER_PREFIX,
    REQUEST_HEADERS_READ,
    RESPONSE_HEADERS_READ,
    Exchange,
    Recorder,
    Sink,
    filter_chunk,
)

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


def _begin(recorder: Recorder, lib: ModuleType, request: Any) -> Exchange:
    """The exchange of a request, from the URL parts httpx already parsed (no re-parsing) and
    only the headers the core reads."""
    url = request.url
    return recorder.begin(
        request.method,
        (url.host, url.path),
        header_items(request.headers, _REQUEST_NAMES, _OURS),
        _request_body(lib, request),
    )


# The core reads a handful of headers: only those are decoded (a request from the openai SDK
# carries about twenty, and decoding them all cost a recorded call more than reading the body).
_REQUEST_NAMES = frozenset(name.encode() for name in REQUEST_HEADERS_READ)
_RESPONSE_NAMES = frozenset(name.encode() for name in RESPONSE_HEADERS_READ)
_OURS = HEADER_PREFIX.encode()


def _pick_headers(
    items: list[tuple[bytes, bytes, bytes]], names: frozenset[bytes], prefix: bytes
) -> list[tuple[str, str]]:
    """The headers of httpx's parsed list whose lower-case name is in ``names`` or starts
    with ``prefix``, as ASCII text (compiled in ``costsplit/_speedups.c`` where it was built)."""
    return [
        (key.decode("ascii"), value.decode("ascii"))
        for _, key, value in items
        if key in names or key.startswith(prefix)
    ]


def _drop_headers(
    items: list[tuple[bytes, bytes, bytes]], names: frozenset[bytes], prefix: bytes
) -> list[tuple[bytes, bytes, bytes]]:
    """The rest of httpx's parsed list: the items, as they are, of the headers ``_pick_headers``
    would not pick (compiled in ``costsplit/_speedups.c`` where it was built)."""
    return [item for item in items if not item[1].startswith(prefix) and item[1] not in names]


try:
    from costsplit._speedups import drop_headers, pick_headers
except ImportError:  # pragma: no cover - the same in Python
    drop_headers, pick_headers = _drop_headers, _pick_headers


def header_items(
    headers: Any, names: frozenset[bytes] | None = None, prefix: bytes = b"\0"
) -> list[tuple[str, str]]:
    """``headers.multi_items()`` (lower-case names), or only the headers in ``names`` or
    starting with ``prefix`` when ``names`` is given.

    Read straight from httpx's parsed list when every byte is ASCII, as httpx would decode it
    then: its ``multi_items`` re-reads the ``encoding`` property twice per header. Anything
    else (a set or non-ASCII encoding) goes through ``multi_items``.
    """
    try:
        if headers._encoding is None:
            if names is None:
                return [
                    (key.decode("ascii"), value.decode("ascii")) for _, key, value in headers._list
                ]
            return pick_headers(headers._list, names, prefix)
    except (AttributeError, TypeError, UnicodeDecodeError, ValueError):
        pass
    if names is None:
        return headers.multi_items()
    text_prefix = prefix.decode("latin-1")
    return [
        (key, value)
        for key, value in headers.multi_items()
        if key.encode("latin-1", "replace") in names or key.startswith(text_prefix)
    ]


def _outgoing(lib: ModuleType, request: Any, exchange: Exchange) -> Any:
    """The request to send: the caller's, or a copy without X-Costsplit-* / with include_usage.

    The copy is built from a stream, not ``content=``: the headers are complete already (the
    core fixed Content-Length), and httpx's content encoding cost more than the rest.
    """
    if not exchange.rewrites_headers:  # a new body comes with new headers
        return request
    body = exchange.request_body
    stream = request.stream if body is None else lib.ByteStream(body)
    outgoing = lib.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=stream,
        extensions=request.extensions,
    )
    if not _edit_headers(outgoing.headers, exchange):
        outgoing.headers = lib.Headers(exchange.outgoing_headers(header_items(request.headers)))
    if body is not None:
        # What ``read()`` sets for a ByteStream (``content``, for inner transports that read
        # it), without its isinstance check against ``typing.Iterable``: a third of the copy.
        outgoing._content = body
    return outgoing


_BODY_NAMES = frozenset(name.encode() for name in BODY_HEADERS)


def _edit_headers(headers: Any, exchange: Exchange) -> bool:
    """``exchange.outgoing_headers`` done in place on httpx's parsed list of a request's own
    copy of the headers (bytes: decoding and re-encoding the twenty headers of an openai SDK
    request cost more than the rest of the copy); False when the list is not there, or not
    httpx's list of byte triples."""
    dropped = _BODY_NAMES if exchange.request_body is not None else frozenset()
    try:
        items = headers._list
        items[:] = drop_headers(items, dropped, _OURS)
    except (AttributeError, IndexError, TypeError):
        return False
    for name, value in exchange.body_headers():
        items.append((name.encode(), name.lower().encode(), value.encode()))
    return True


def _already_read(response: Any) -> bool:
    """Whether an inner transport returned the body already read: what httpx's ``content``
    property tests, told without raising (``content`` raises for a transport's usual, unread
    answer) and without reading ``response.__dict__`` (that turns the response's attributes
    into a plain dict, and each later one, as httpx's ``iter_raw`` reads and sets per chunk,
    is then looked up the slow way). A response type whose attribute lookup fails otherwise
    than by AttributeError counts as unread: recording then reads its body as it streams."""
    try:
        return hasattr(response, "_content")
    except Exception:
        return False


def _read_response(lib: ModuleType, response: Any, exchange: Exchange) -> Any:
    """An inner transport returned a response already read: record it now, hand it back as is
    (or, rarely, with the body the filter changed)."""
    content = response.content
    out = exchange.body(content)
    if out is content:
        return response
    return lib.Response(
        response.status_code,
        headers=response.headers,
        stream=lib.ByteStream(out),
        extensions=response.extensions,
    )


# Chunks of a sync body handed to C-level iterators at a time: the Python code of the
# recording body runs once per batch, not once per chunk.
BATCH_CHUNKS = 256


def _kept_chunks(
    source: Iterator[bytes],
    keep: Callable[[bytes], None],
    exchange: Exchange | None,
    limit: int,
) -> Iterator[bytes]:
    """At most ``limit`` chunks of ``source``, each given to ``keep`` as it passes; filtered by
    ``exchange`` (empty results left out) unless it is None. Composed of itertools, so that no
    Python code runs per chunk; one C iterator where ``costsplit/_speedups.c`` was built."""
    batch = itertools.filterfalse(keep, itertools.islice(source, limit))
    if exchange is None:
        return batch
    return filter(None, map(filter_chunk, itertools.repeat(exchange), batch))


try:
    from costsplit._speedups import kept_chunks
except ImportError:  # pragma: no cover - the same in Python
    kept_chunks = _kept_chunks


class SyncRecordingBody:
    """A response body stream that keeps each chunk for the exchange as it passes.

    Per chunk only C code runs (``itertools``: a list append, and, only when costsplit
    injected ``include_usage``, a ``map`` through ``filter_chunk``, compiled for the usual
    chunk); the exchange hears of the first chunk, is trimmed every ``BATCH_CHUNKS`` chunks and
    ends with the body.
    """

    def __init__(self, inner: Any, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        keep = self._exchange.keeper()
        if keep is None:
            return iter(self._inner)
        return itertools.chain.from_iterable(self._batches(keep))

    def _batches(self, keep: Callable[[bytes], None]) -> Iterator[Iterable[bytes]]:
        exchange = self._exchange
        chunks = iter(self._inner)
        try:
            for first in chunks:
                exchange.first_chunk()
                keep(first)
                if exchange.filtering:
                    first = filter_chunk(exchange, first)
                yield (first,) if first else ()
                break
            while True:
                before = exchange.kept()
                yield kept_chunks(
                    chunks, keep, exchange if exchange.filtering else None, BATCH_CHUNKS
                )
                if exchange.kept() - before < BATCH_CHUNKS:
                    break
                exchange.trim()
        except GeneratorExit:
            exchange.close()
            raise
        except BaseException as exc:  # the inner stream failed on its first chunk
            exchange.error(exc)
            raise
        # A failure inside a batch reaches the caller without passing here; it then closes
        # the response (``close`` below), which records the stream as interrupted.
        rest = exchange.end()
        if rest:
            yield (rest,)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._exchange.close()


class AsyncRecordingBody:
    """The async twin of ``SyncRecordingBody`` (one async generator step per chunk)."""

    def __init__(self, inner: Any, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        if exchange.keeper() is None:  # nothing more to record
            async for chunk in self._inner:
                yield chunk
            return
        try:
            async for chunk in self._inner:
                chunk = exchange.chunk(chunk)  # kept; filtered when include_usage was injected
                if chunk:
                    yield chunk
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
        exchange = _begin(self.recorder, lib, request)
        outgoing = _outgoing(lib, request, exchange)
        try:
            response = self.inner.handle_request(outgoing)
        except BaseException as exc:
            exchange.error(exc)
            raise
        exchange.response(response.status_code, header_items(response.headers, _RESPONSE_NAMES))
        if _already_read(response):
            return _read_response(lib, response, exchange)
        response.stream = self._body(response.stream, exchange)
        return response

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
        exchange = _begin(self.recorder, lib, request)
        outgoing = _outgoing(lib, request, exchange)
        try:
            response = await self.inner.handle_async_request(outgoing)
        except BaseException as exc:
            exchange.error(exc)
            raise
        exchange.response(response.status_code, header_items(response.headers, _RESPONSE_NAMES))
        if _already_read(response):
            return _read_response(lib, response, exchange)
        response.stream = self._body(response.stream, exchange)
        return response

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
