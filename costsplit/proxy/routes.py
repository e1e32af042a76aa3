"""Which upstream a proxied call goes to: a fixed table of named routes, never an open relay.

A caller picks a route in one of two ways, and otherwise gets the default route:

- a path prefix ``/r/<route>/``, so a client that can only change its base URL picks one too:
  ``http://proxy:8787/r/beijing/compatible-mode/v1``;
- the header ``X-Costsplit-Route: <route>`` (removed before forwarding, like every
  ``X-Costsplit-*`` header).

The prefix wins over the header. Only ``/compatible-mode/v1/…`` and ``/api/v1/…`` are forwarded,
always to the route's configured origin; a path with ``.`` or ``..`` segments is refused, so no
request can reach another host or path family. With no ``[[proxy.routes]]`` configured, the
built-in routes below point at Model Studio's public hosts and ``singapore`` is the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from urllib.parse import urlsplit

from costsplit.config import ProxySettings, Route

ROUTE_HEADER = "x-costsplit-route"
ROUTE_PREFIX = "/r/"

COMPATIBLE = "openai-compatible"
NATIVE = "dashscope"

BUILTIN_ROUTES = (
    Route("singapore", "https://dashscope-intl.aliyuncs.com", "ap-southeast-1"),
    Route("beijing", "https://dashscope.aliyuncs.com", "cn-beijing"),
    Route("virginia", "https://dashscope-us.aliyuncs.com", "us-east-1"),
    Route("hongkong", "https://cn-hongkong.dashscope.aliyuncs.com", "cn-hongkong"),
)


def api_style(path: str) -> str | None:
    """The API style a forwardable path speaks, or None for a path the proxy does not forward."""
    if path.startswith("/compatible-mode/v1/"):
        return COMPATIBLE
    if path.startswith("/api/v1/"):
        return NATIVE
    return None


def error_style(path: str) -> str:
    """The API style to answer an error in: the style of the path, compatible when unknown."""
    if path.startswith(ROUTE_PREFIX):
        _, _, rest = path[len(ROUTE_PREFIX) :].partition("/")
        path = "/" + rest
    return api_style(path) or COMPATIBLE


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the route, the upstream URL (origin + path + query), the style."""

    route: Route
    url: str
    api_style: str


class RouteError(Exception):
    """A request the proxy refuses before any I/O: HTTP status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RouteTable:
    """The configured routes and the default one; resolves a request path to a ``Target``."""

    def __init__(self, routes: Iterable[Route], default: str = "") -> None:
        self.routes = {route.name: route for route in routes}
        if not self.routes:
            raise ValueError("a route table needs at least one route")
        self.default = default or next(iter(self.routes))
        if self.default not in self.routes:
            raise ValueError(f"no route named {self.default!r}")
        self._origins = {name: _origin(route.upstream) for name, route in self.routes.items()}

    @classmethod
    def from_settings(cls, proxy: ProxySettings) -> RouteTable:
        """The table of ``[proxy]`` settings, or the built-in Model Studio routes when none."""
        if proxy.routes:
            return cls(proxy.routes, proxy.default_route)
        return cls(BUILTIN_ROUTES, proxy.default_route or "singapore")

    def resolve(self, path: str, query: str = "", route_header: str | None = None) -> Target:
        """The target of a request path (raw, as received). Raises ``RouteError`` (404)."""
        name = route_header.strip() if route_header else self.default
        if path.startswith(ROUTE_PREFIX):
            name, slash, rest = path[len(ROUTE_PREFIX) :].partition("/")
            path = slash + rest
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes))
            raise RouteError(
                404, "unknown_route", f"No proxy route named {name!r} (known: {known})."
            )
        style = api_style(path)
        if style is None or _has_dot_segment(path):
            raise RouteError(
                404,
                "unknown_path",
                f"The proxy forwards /compatible-mode/v1/... and /api/v1/... only, not {path!r}.",
            )
        url = self._origins[name] + path + (f"?{query}" if query else "")
        return Target(route, url, style)


def _origin(upstream: str) -> str:
    """The upstream URL without a trailing slash, keeping any path prefix it has."""
    parts = urlsplit(upstream)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _has_dot_segment(path: str) -> bool:
    if "." not in path and "%" not in path:  # the usual path, decided without splitting
        return False
    segments = path.split("/")
    return any(s in (".", "..") or s.lower() in ("%2e", "%2e%2e", ".%2e", "%2e.") for s in segments)
