"""One proxied call: read the caller's request, send it upstream, relay the answer as it comes.

The handler reads the whole request body (bounded by ``max_body_bytes``: requests to Model
Studio are small JSON documents), hands the exchange to the recording core through
``costsplit.proxy.recording``, and sends the rewritten request upstream on the one shared
``aiohttp.ClientSession`` (httpx's pool collapses under concurrency, aiohttp's does not).

A JSON answer is read whole and returned with its status and headers. A ``text/event-stream``
answer is relayed chunk by chunk as each arrives (``readany``: no buffering, so the first byte
reaches the caller as soon as it leaves upstream); the recording core keeps every chunk (a list
append) and, when it injected ``include_usage``, filters them: it drops the usage-only chunk it
asked for on the caller's behalf and the ``"usage":null`` members that asking adds to every
chunk.

The server cancels the handler when the caller goes away (``handler_cancellation``); the
``async with`` then closes the upstream connection, so Model Studio stops generating, and the
exchange is recorded as ``interrupted`` — also when the caller left before any answer came,
since the call had reached Model Studio, which may have started (and bill) it. An upstream that
cannot be reached or does not answer in time gets a 502 or 504 in the API style of the path,
and a ``network_error`` event.

Upstream connections are reused (keep-alive) with no pool limit, so each call in flight has
one; the shared session keeps no cookies, so no caller gets another's.

``GET /costsplit/health`` is answered by the proxy itself (never forwarded, never recorded):
200 and a JSON report of this process's recording — ``status`` ``ok``, or ``degraded`` while
events are held in memory for want of disk space (``events_held``), and the recording errors
counted since start. It says 200 either way: calls are forwarded whatever befalls recording.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from costsplit.errors import ModelNotGranted
from costsplit.proxy.envelopes import ERROR_HEADER, error_body
from costsplit.proxy.recording import Passthrough, ProxyRecording
from costsplit.proxy.routes import ROUTE_HEADER, RouteError, RouteTable, error_style
from costsplit.record import HEADER_PREFIX, REQUEST_HEADERS_READ, RESPONSE_HEADERS_READ

# Never forwarded upstream: hop-by-hop headers, what aiohttp recomputes, and Accept-Encoding,
# so the answer arrives uncompressed and its usage can be read on the way through.
REQUEST_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "expect",
    }
)
RESPONSE_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
    }
)
STREAM_RESPONSE_DROP = RESPONSE_DROP | {"content-length"}
HEALTH_PATH = "/costsplit/health"  # answered here: no Model Studio path starts so


class Forwarder:
    """The request handler of the proxy: one instance per server, shared by all requests."""

    def __init__(
        self,
        table: RouteTable,
        recording: ProxyRecording | Passthrough,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        timeout_seconds: float,
    ) -> None:
        self.table = table
        self.recording = recording
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, timeout_seconds), sock_read=timeout_seconds
        )
        self.session: aiohttp.ClientSession | None = None

    async def start(self, _app: web.Application | None = None) -> None:
        """Open the shared upstream session (on the server's event loop)."""
        # No connection limit (every call in flight holds one upstream connection; idle ones are
        # reused), and no cookie jar: cookies upstream sets belong to the caller that got them,
        # never to the next caller through the shared session.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=self.timeout,
        )

    async def close(self, _app: web.Application | None = None) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        if path == HEALTH_PATH:
            return self._health(request.method)
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if header_bytes > self.max_header_bytes:
            return _error(
                431,
                error_style(path),
                "headers_too_large",
                f"Request headers are {header_bytes} bytes; the proxy accepts at most "
                f"{self.max_header_bytes}.",
            )
        try:
            target = self.table.resolve(
                path, request.query_string, request.headers.get(ROUTE_HEADER)
            )
        except RouteError as exc:
            return _error(exc.status, error_style(path), exc.code, exc.message)
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            return self._too_large(target.api_style, declared)
        body = await _read_body(request.content, declared, self.max_body_bytes)
        if body is None:
            return self._too_large(target.api_style, None)

        if self.recording.records:
            headers, read = _split_headers(request.headers.items())
            try:
                exchange = self.recording.begin(request.method, target, read, body)
            except ModelNotGranted as exc:
                return _error(403, target.api_style, "model_not_granted", f"{exc}.")
        else:
            exchange = self.recording.begin(request.method, target, None, body)
            headers = _forward_headers(request.headers.items())
        assert self.session is not None, "Forwarder.start() was not awaited"
        try:
            upstream = await self.session.request(
                request.method,
                target.url,
                data=body if exchange.request_body is None else exchange.request_body,
                headers=headers,
                allow_redirects=False,
            )
        except asyncio.CancelledError:
            exchange.close()
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            exchange.error(exc)
            return _error(504, target.api_style, "upstream_timeout", _upstream_said(target, exc))
        except aiohttp.ClientConnectorError as exc:
            exchange.error(exc)
            return _error(
                502, target.api_style, "upstream_unreachable", _upstream_said(target, exc)
            )
        except aiohttp.ClientError as exc:
            exchange.error(exc)
            return _error(502, target.api_style, "upstream_error", _upstream_said(target, exc))
        async with upstream:
            status = upstream.status
            stream = upstream.content_type == "text/event-stream"
            if stream:
                response: web.StreamResponse = web.StreamResponse(status=status)
                drop = STREAM_RESPONSE_DROP  # a relayed stream is sent chunked
            else:
                response = web.Response(status=status)
                drop = RESPONSE_DROP
            if self.recording.records:
                # The core hears of the headers it reads, picked while copying them.
                read = _copy_headers_reading(upstream.raw_headers, response.headers, drop)
                exchange.response(status, read)
            else:
                _copy_headers(upstream.raw_headers, response.headers, drop)
            if stream:
                return await self._relay_stream(request, upstream, exchange, response)
            try:
                data = await upstream.read()
            except asyncio.CancelledError:
                exchange.close()
                raise
            except (TimeoutError, aiohttp.ClientError) as exc:
                exchange.error(exc)
                return _error(502, target.api_style, "upstream_error", _upstream_said(target, exc))
            exchange.chunk(data)
            if self.recording.records:
                await self.recording.end_soon(exchange)  # in a row with others: warm
            response.body = data
            return response

    async def _relay_stream(self, request, upstream, exchange, response) -> web.StreamResponse:
        read = upstream.content.readany
        write = response.write
        recorded = exchange.keeper() is not None
        try:
            await response.prepare(request)
            if not recorded:  # nothing recorded: relay as it comes
                while piece := await read():
                    await write(piece)
            else:
                while piece := await read():
                    piece = exchange.chunk(piece)  # kept; filtered when include_usage was injected
                    if piece:
                        await write(piece)
            rest = exchange.end()
            if rest:
                await write(rest)
        except asyncio.CancelledError:
            # The caller went away (the server cancels the handler): close upstream so Model
            # Studio stops generating; the event says interrupted.
            exchange.close()
            upstream.close()
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            exchange.close()
            upstream.close()
            return response
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Upstream broke mid-stream: the status is sent, so end the caller's stream abruptly.
            exchange.error(exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _health(self, method: str) -> web.Response:
        if method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        report = self.recording.health()
        status = "degraded" if report["events_held"] else "ok"
        return web.Response(
            body=orjson.dumps({"status": status, **report}), content_type="application/json"
        )

    def _too_large(self, style: str, declared: int | None) -> web.Response:
        size = f"{declared} bytes" if declared is not None else "larger than that"
        return _error(
            413,
            style,
            "request_too_large",
            f"Request body is {size}; the proxy accepts at most {self.max_body_bytes} bytes.",
        )


async def _read_body(content, declared: int | None, limit: int) -> bytes | None:
    """The whole request body, or None once it grows past ``limit`` bytes."""
    if declared is not None:  # already checked against the limit
        return await content.readexactly(declared) if declared else b""
    parts: list[bytes] = []
    size = 0
    while piece := await content.readany():
        size += len(piece)
        if size > limit:
            return None
        parts.append(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _split_headers(
    headers: Iterable[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(what to forward, what the recording core reads), in one pass over the caller's headers.

    The core is given only the headers it reads (``REQUEST_HEADERS_READ`` and X-Costsplit-*),
    so it scans and copies two or three instead of the caller's dozen or more. What is forwarded
    never depends on the core: ``REQUEST_DROP`` already leaves out Content-Length and
    Accept-Encoding, the only headers the core changes when it injects ``include_usage``
    (aiohttp sets the length of the body sent).
    """
    forward: list[tuple[str, str]] = []
    read: list[tuple[str, str]] = []
    for pair in headers:
        lower = pair[0].lower()
        if lower in REQUEST_DROP:
            continue
        if lower.startswith(HEADER_PREFIX):
            read.append(pair)
            continue
        if lower in REQUEST_HEADERS_READ:
            read.append(pair)
        forward.append(pair)
    return forward, read


def _forward_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers
        if not ((lower := name.lower()) in REQUEST_DROP or lower.startswith(HEADER_PREFIX))
    ]


def _copy_headers(raw: Iterable[tuple[bytes, bytes]], out: CIMultiDict, drop: frozenset) -> None:
    """Upstream's headers as received (names in their own case, in order: the parsed ones
    are canonicalised), minus the hop-by-hop ones in ``drop``."""
    add = out.add
    for name, value in raw:
        text = name.decode("latin-1")
        if text.lower() not in drop:
            add(text, value.decode("latin-1"))


def _copy_headers_reading(
    raw: Iterable[tuple[bytes, bytes]], out: CIMultiDict, drop: frozenset
) -> list[tuple[str, str]]:
    """``_copy_headers``, returning the headers the recording core reads
    (``RESPONSE_HEADERS_READ``, dropped ones included): it then scans two or three, not all."""
    add = out.add
    read = []
    for name, value in raw:
        text = name.decode("latin-1")
        lower = text.lower()
        if lower in RESPONSE_HEADERS_READ:
            pair = (lower, value.decode("latin-1"))
            read.append(pair)
            if lower not in drop:
                add(text, pair[1])
        elif lower not in drop:
            add(text, value.decode("latin-1"))
    return read


def _upstream_said(target, exc: BaseException) -> str:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        reason = "no answer in time"
    return f"Upstream {target.route.name!r} ({target.route.upstream}) failed: {reason}."


def _error(status: int, style: str, code: str, message: str) -> web.Response:
    return web.Response(
        body=error_body(style, code, message),
        status=status,
        content_type="application/json",
        headers={ERROR_HEADER: code},
    )
