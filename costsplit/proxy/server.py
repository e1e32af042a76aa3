"""Serving the proxy: aiohttp's low-level server, a background-thread server for tests and
embedding, and the blocking ``serve`` behind ``costsplit proxy`` (optionally several worker
processes on one port).

Why aiohttp for the server as well as the upstream client: on loopback with an instant upstream
(2 cores), the same forwarding code served 2,600 requests/s at 1 concurrent and 3,700 at 32 on
``aiohttp.web``, and 1,400 / 1,800 on Starlette under uvicorn (h11). One event loop, one library
for both sides of the relay. The proxy has one handler for every path, so it runs on
``web.Server`` directly: no application, router or middleware chain per request.

The event loop is uvloop where it is installed (``loop="auto"``): it cut the proxy's CPU per
request by about 15% against asyncio's own loop (callgrind instruction counts, bench_proxy).
Both sides set TCP_NODELAY on every connection (aiohttp does for its transports, uvloop for its
sockets), so a small answer is never held back by Nagle's algorithm.

A request whose head aiohttp's parser refuses (a header line over ``max_header_bytes``, too many
header lines) gets the proxy's own 431 envelope instead of aiohttp's plain-text 400. The path is
not known at that point, so the envelope is the compatible one.

Each worker process writes to its own spool segment (``open_spool`` is per process), so any
number of proxies can run side by side behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from costsplit.config import Settings
from costsplit.errors import ConfigError
from costsplit.proxy.envelopes import ERROR_HEADER, error_body
from costsplit.proxy.forward import Forwarder
from costsplit.proxy.recording import Passthrough, ProxyRecording
from costsplit.proxy.routes import COMPATIBLE, RouteTable

LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for ``loop``: ``uvloop`` (``auto``: when installed) or
    ``asyncio``'s own. Raises ``ConfigError`` for ``uvloop`` when it is not installed."""
    if loop not in LOOPS:
        raise ConfigError(f"proxy loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if loop == "uvloop":
                raise ConfigError("proxy loop 'uvloop' asked for, but it is not installed") from exc
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def forwarder_for(settings: Settings, *, record: bool = True) -> Forwarder:
    """The proxy's request handler for ``settings.proxy`` (routes, limits); ``await
    forwarder.start()`` on the serving loop before the first request, ``close()`` after."""
    proxy = settings.proxy
    return Forwarder(
        RouteTable.from_settings(proxy),
        ProxyRecording(settings) if record else Passthrough(),
        max_body_bytes=proxy.max_body_bytes,
        max_header_bytes=proxy.max_header_bytes,
        timeout_seconds=proxy.timeout_seconds,
    )


class _Connection(web.RequestHandler):
    """aiohttp's per-connection protocol, answering a refused request head in our envelope."""

    __slots__ = ("head_limit",)

    def __init__(self, manager: web.Server, *, head_limit: int, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self.head_limit = head_limit

    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        if status != 400 or not _head_too_large(exc):
            return super().handle_error(request, status, exc, message)
        response = web.Response(
            body=error_body(
                COMPATIBLE,
                "headers_too_large",
                f"A request line or header is longer than the proxy accepts "
                f"({self.head_limit} bytes), or there are too many header lines.",
            ),
            status=431,
            content_type="application/json",
            headers={ERROR_HEADER: "headers_too_large"},
        )
        response.force_close()
        return response


def _head_too_large(exc: BaseException | None) -> bool:
    if isinstance(exc, LineTooLong):
        return True
    return isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)


class _Server(web.Server):
    """``web.Server`` making ``_Connection`` protocols."""

    def __call__(self) -> web.RequestHandler:
        limit = self._kwargs["max_field_size"]
        return _Connection(self, loop=self._loop, head_limit=limit, **self._kwargs)


def _runner(forwarder: Forwarder, settings: Settings) -> web.ServerRunner:
    limit = settings.proxy.max_header_bytes
    server = _Server(
        forwarder.handle,
        handler_cancellation=True,
        access_log=None,
        auto_decompress=False,  # forward the caller's body bytes as sent
        max_field_size=limit,
        max_line_size=limit,
    )
    return web.ServerRunner(server, handle_signals=False)


@dataclasses.dataclass
class RunningProxy:
    """A proxy serving on a background thread; ``stop()`` (or leaving the ``with``) ends it."""

    host: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _stopped: asyncio.Event

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    record: bool = True,
    loop: str = "auto",
) -> RunningProxy:
    """Start the proxy on a background thread and return once it accepts connections."""
    event_loop = loop_factory(loop)()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stopped = asyncio.Event()
        forwarder = forwarder_for(settings, record=record)
        runner = _runner(forwarder, settings)
        try:
            await forwarder.start()
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            state["port"] = runner.addresses[0][1]
            state["stopped"] = stopped
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            await runner.cleanup()
            await forwarder.close()
            return
        ready.set()
        await stopped.wait()
        await runner.cleanup()
        await forwarder.close()

    def run() -> None:
        asyncio.set_event_loop(event_loop)
        try:
            event_loop.run_until_complete(main())
        finally:
            event_loop.close()

    thread = threading.Thread(target=run, name="costsplit-proxy", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if "error" in state:
        thread.join()
        raise state["error"]  # type: ignore[misc]
    return RunningProxy(host, int(state["port"]), event_loop, thread, state["stopped"])  # type: ignore[arg-type]


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    record: bool = True,
    loop: str = "auto",
    ready: threading.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. With ``workers`` > 1, that many processes share the port;
    ``workers=0`` means one per CPU core (``default_workers``)."""
    host = host or settings.proxy.host
    port = settings.proxy.port if port is None else port
    factory = loop_factory(loop)
    if workers == 0:
        workers = default_workers() if port != 0 else 1
    if workers <= 1:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve_one(settings, host, port, record, reuse_port=False, ready=ready))
        return
    if port == 0:
        raise ValueError("several workers need a fixed --port")
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(settings, host, port, record, loop), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(*_: object) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            _wait_accepting(host, port)
            ready.set()
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop()


def default_workers() -> int:
    """One worker process per CPU core this process may run on; 1 where the port cannot be
    shared (no ``SO_REUSEPORT``). A proxy process is one thread: more need more processes."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _worker(settings: Settings, host: str, port: int, record: bool, loop: str) -> None:
    factory = loop_factory(loop)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve_one(settings, host, port, record, reuse_port=True, ready=None))


async def _serve_one(settings, host, port, record, *, reuse_port, ready) -> None:
    forwarder = forwarder_for(settings, record=record)
    await forwarder.start()
    runner = _runner(forwarder, settings)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    if ready is not None:
        ready.set()
    try:
        await stopped.wait()
    finally:
        await runner.cleanup()
        await forwarder.close()


def _wait_accepting(host: str, port: int, deadline: float = 30.0) -> None:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
