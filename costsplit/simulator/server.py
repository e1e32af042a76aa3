"""Running the simulator: in a background thread (tests, demo) or in the foreground (CLI).

`run_in_thread` binds (port 0 = a free port), waits until uvicorn serves, and returns a
`RunningSimulator` whose ``base_url`` is read back from the bound socket. Stopping is quick:
the serving loop wakes on an event instead of polling, and shutdown drops open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import uvicorn

from costsplit.errors import CostsplitError
from costsplit.simulator.app import SeenRequest, SimulatorState, build_app
from costsplit.simulator.config import SimulatorConfig

_START_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server, woken by `wake()` rather than a 0.1 s poll, with a prompt shutdown."""

    _loop: asyncio.AbstractEventLoop
    _wake: asyncio.Event

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await super().startup(sockets=sockets)

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # refresh the Date header on every wake-up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        for server in self.servers:
            await server.wait_closed()

    def wake(self) -> None:
        self.should_exit = True
        if getattr(self, "_loop", None) is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)


def _uvicorn_config(config: SimulatorConfig, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(config),
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=1,
    )


class RunningSimulator:
    """A simulator serving in a background thread. Use as a context manager or call `stop()`."""

    def __init__(self, server: _Server, thread: threading.Thread, config: SimulatorConfig):
        self._server = server
        self._thread = thread
        self.config = config
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.host, self.port = host, port
        self.base_url = f"http://{host}:{port}"

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def state(self) -> SimulatorState:
        return self._server.config.app.state.simulator

    @property
    def requests(self) -> list[SeenRequest]:
        """The latest 1,000 requests received, in order: method, path, headers, body."""
        return list(self.state.requests)

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self._server.wake()
        self._thread.join(timeout=_START_TIMEOUT)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningSimulator {self.region} {self.base_url}>"


def run_in_thread(
    config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator on a background thread and return once it accepts connections."""
    config = config or SimulatorConfig.default()
    server = _Server(_uvicorn_config(config, host, port))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn exits with SystemExit when it cannot bind
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"costsplit-simulator-{port}", daemon=True)
    thread.start()
    _wait(lambda: server.started or bool(failure) or not thread.is_alive(), _START_TIMEOUT)
    if not server.started:
        server.wake()
        thread.join(timeout=1.0)
        raise CostsplitError(f"the simulator could not listen on {host}:{port}")
    return RunningSimulator(server, thread, config)


def _wait(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.002)


def serve_forever(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted; `on_ready` gets the base URL once bound."""
    running = run_in_thread(config, host=host, port=port)
    if on_ready is not None:
        on_ready(running.base_url)
    try:
        while running._thread.is_alive():
            running._thread.join(timeout=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
