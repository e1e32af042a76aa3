"""The recording core: one HTTP exchange with Model Studio in, exactly one usage event out.

Library-independent (no httpx types): the httpx and httpx2 transports and the proxy are thin
adapters over it. Public classes and the order an adapter calls them in::

    recorder = Recorder(sink, settings, recorder="client", region="", scenario=None, tags=None)
    exchange = recorder.begin(method, url, headers, body)  # headers: iterable of (name, value)
    #   raises ModelNotGranted (after recording a ``denied_local`` event) when grants are
    #   enforced and the key's workspace lacks the model: before any network I/O.
    #   exchange.request_body: None, or the body to send instead (include_usage injected);
    #   exchange.rewrites_headers: the headers must leave as exchange.outgoing_headers(...)
    #   gives them (X-Costsplit-* removed; with a new body, Content-Length fixed).
    exchange.response(status, headers)      # the response head arrived
    out = exchange.chunk(data)              # each body piece; forward ``out`` (skip if empty)
    out = exchange.end()                    # body complete; forward ``out``; event written
    exchange.close()                        # caller closed the response (early → interrupted)
    exchange.error(exc)                     # network error before or during the body

``end``/``close``/``error`` may all be called; the first writes the event, the rest do nothing.
No method but ``begin`` raises (and ``begin`` only ``ModelNotGranted``): a recording failure is
caught, logged (at most once a minute) and counted by ``recording_errors()``; the caller's
request and response pass through unchanged.

What an event holds (``costsplit.events.UsageEvent``), decided here:
- api style and endpoint from the URL path, ``batch`` for the batch API;
- region from the host (``HOST_REGIONS``, ``{ws}.{region}.maas.aliyuncs.com``), else the
  recorder's ``region``; ``billing_plan = "plan"`` for ``sk-sp-`` keys and plan hosts;
- workspace as observed: the configured key fingerprint's workspace, else the
  ``X-DashScope-WorkSpace`` header, else the workspace host; the key only as fingerprint and
  last-4 hint;
- scenario: ``X-Costsplit-Scenario`` header, else ``scenario(...)`` context, else the recorder
  default; tags merged in the same order (``X-Costsplit-Tag-<name>`` wins);
- model as requested (request body) and as returned (compatible responses);
- outcome ``ok``, ``http_error``, ``denied`` (a 403 whose code is in ``DENIED_CODES``),
  ``denied_local``, ``network_error`` or ``interrupted`` (a stream abandoned or broken before its
  logical end: ``[DONE]`` or a final native ``finish_reason``).

Compatible-mode streams whose caller did not ask for ``include_usage`` get it injected, and what
the injection adds is removed from what the caller receives: the extra usage-only chunk
(``"choices": []``) and the ``"usage":null`` member Model Studio then writes into every other
chunk. So the caller (of the client or of the proxy) reads the bytes it would read without
costsplit, chunk for chunk (a chunk ending inside a line hands that partial line over with the
next chunk). Interrupted streams are recorded with ``usage_source = "estimated"``: native
streams keep the last cumulative usage received; otherwise output tokens are estimated from the
text received and input tokens from the request text (``usage.estimate_tokens``). ``close``
before any response (a proxy caller gone while the request is upstream) is ``interrupted``
with the input estimate; ``error`` before any response is a ``network_error``.

Speed: what depends only on the URL or the key is computed once per recorder; chunks are kept
as they are (a list append) and parsed once, backwards from the end, when the body ends;
adapters may drive ``keeper``/``filter`` from C iterators (see ``Exchange``).

Prompt and completion text is never written: the event has no field for it (what a stream
said is read only to estimate the tokens of an interrupted one).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import orjson

from costsplit.config import Settings, Workspace, load_settings
from costsplit.errors import ModelNotGranted
from costsplit.events import (
    UsageEvent,
    event_builder,
    fingerprint_key,
    key_hint,
    new_event_id,
    utc_timestamp,
)
from costsplit.usage import (
    BodyFacts,
    StreamText,
    Usage,
    estimate_tokens,
    facts_of,
    load_json,
    may_be_object,
    parse_body,
    parse_stream,
    parse_stream_tail,
    request_id_from_headers,
    request_text,
)

log = logging.getLogger("costsplit.record")

HOST_REGIONS = {
    "dashscope.aliyuncs.com": "cn-beijing",
    "dashscope-intl.aliyuncs.com": "ap-southeast-1",
    "dashscope-us.aliyuncs.com": "us-east-1",
    "cn-hongkong.dashscope.aliyuncs.com": "cn-hongkong",
}
WORKSPACE_HOST = re.compile(r"^(?P<ws>[a-z0-9-]+)\.(?P<region>[a-z0-9-]+)\.maas\.aliyuncs\.com$")
PLAN_HOSTS = ("coding.dashscope.aliyuncs.com", "coding-intl.dashscope.aliyuncs.com")
PLAN_KEY_PREFIX = "sk-sp-"
# Upstream 403 codes that mean "this key/workspace may not use this": recorded as ``denied``.
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "access_denied",
        "Model.AccessDenied",
        "Workspace.AccessDenied",
        "AccessDenied.Unpurchased",
        "App.AccessDenied",
        "Endpoint.AccessDenied",
    }
)
# Request headers an exchange reads, besides X-Costsplit-* (adapters may pass only these).
REQUEST_HEADERS_READ = frozenset({"authorization", "x-dashscope-workspace", "x-dashscope-sse"})
# Response headers an exchange reads (the rest are not kept; adapters may pass only these).
RESPONSE_HEADERS_READ = frozenset(
    {"content-type", "content-encoding", "x-request-id", "x-dashscope-request-id"}
)
USAGE_NULL = b'"usage":null'  # what include_usage adds to every other compatible chunk
DONE_EVENTS = (b"data: [DONE]\n\n", b"data:[DONE]\n\n")  # how a compatible stream ends
INCLUDE_USAGE_MEMBER = b'"stream_options":{"include_usage":true}'  # what costsplit asks for
HEADER_PREFIX = "x-costsplit-"
BODY_HEADERS = ("content-length", "accept-encoding")  # set anew when include_usage is injected
TAG_HEADER_PREFIX = "x-costsplit-tag-"
STREAM_TAIL_BYTES = 4 * 1024 * 1024  # bytes of a stream kept for the parse at its end
TAIL_CHUNKS = 4  # chunks of a finished stream parsed first (the usage sits in its last events)
CACHE_ENTRIES = 1024  # URLs and keys a recorder remembers (cleared when full)
_NOTHING: dict[str, Any] = {}  # read only
# The event an exchange starts with (``UsageEvent`` by position: a quarter of the keyword cost).
_new_event = event_builder(
    "event_id", "started_at", "recorder", "api_style", "endpoint", "host", "region",
    "key_fingerprint", "key_hint", "workspace_observed", "scenario", "tags",
    "model_requested", "streamed", "batch", "billing_plan",
)  # fmt: skip


class Sink(Protocol):
    """Where events go: a ``costsplit.spool.Spool`` (or a list-backed stand-in in tests)."""

    def append(self, event: UsageEvent) -> None: ...


# -- scenario context --------------------------------------------------------------------------

_scenario: contextvars.ContextVar[tuple[str | None, dict[str, str]]] = contextvars.ContextVar(
    "costsplit_scenario", default=(None, {})
)


@contextlib.contextmanager
def scenario(name: str | None, **tags: str) -> Iterator[None]:
    """Attribute the calls made inside the block to scenario ``name`` with extra ``tags``.

    Context-local (contextvars): safe across threads and asyncio tasks; blocks nest, inner tags
    added to outer ones.
    """
    outer_name, outer_tags = _scenario.get()
    inner_tags = {**outer_tags, **_tag_texts(tags)}
    token = _scenario.set((name if name is not None else outer_name, inner_tags))
    try:
        yield
    finally:
        _scenario.reset(token)


def _tag_texts(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as text: ``scenario("x", run=7)`` tags the call ``run = "7"`` (tags are strings)."""
    return {
        str(name): value if isinstance(value, str) else str(value) for name, value in tags.items()
    }


# -- recording errors ---------------------------------------------------------------------------

_errors_lock = threading.Lock()
_errors = 0
_last_logged = -1e9
LOG_INTERVAL_SECONDS = 60.0


def recording_errors() -> int:
    """How many recording failures this process has caught (they never reach the caller)."""
    return _errors


def _failed(where: str, exc: BaseException) -> None:
    global _errors, _last_logged
    with _errors_lock:
        _errors += 1
        now = time.monotonic()
        if now - _last_logged < LOG_INTERVAL_SECONDS:
            return
        _last_logged = now
        count = _errors
    log.warning(
        "costsplit could not record a call (%s: %s: %s); %d recording errors so far",
        where,
        type(exc).__name__,
        exc,
        count,
        exc_info=exc,
    )


# -- classification ----------------------------------------------------------------------------


def classify(path: str) -> tuple[str, str, bool]:
    """(api_style, endpoint, batch) of a request path."""
    if "/api/v1/" in path or path.startswith("/api/"):
        if "/services/aigc/text-generation/" in path:
            return "dashscope", "chat", False
        if "/services/aigc/multimodal-generation/" in path:
            return "dashscope", "multimodal", False
        if "/services/embeddings/" in path:
            return "dashscope", "embedding", False
        return "dashscope", "other", "/batch" in path
    if path.endswith("/chat/completions"):
        return "openai-compatible", "chat", False
    if path.endswith("/embeddings"):
        return "openai-compatible", "embedding", False
    return "openai-compatible", "other", "/batches" in path


def region_of_host(host: str) -> tuple[str, str]:
    """(region, workspace id) a host names; empty strings where it names none."""
    if host in HOST_REGIONS:
        return HOST_REGIONS[host], ""
    match = WORKSPACE_HOST.match(host)
    if match:
        workspace = match["ws"] if match["ws"] != "token-plan" else ""
        return match["region"], workspace
    return "", ""


def _bearer(authorization: str) -> str:
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" else authorization.strip()


# -- the recorder -------------------------------------------------------------------------------


class Recorder:
    """Turns exchanges into usage events written to ``sink`` (the settings' spool by default).

    One per client or proxy route: holds the settings, the default ``region`` (used when the
    host names none, e.g. a simulator or a gateway), the default ``scenario`` and ``tags``, and
    ``recorder`` (``"client"`` or ``"proxy"``) written into each event.

    What depends only on the URL or only on the API key (classification, region, key
    fingerprint and hint, configured workspace) is computed once per URL and per key and kept
    in memory (never written anywhere): a client talks to a handful of URLs with a handful of
    keys, and hashing a key cost more than the rest of reading a request.
    """

    def __init__(
        self,
        sink: Sink | None = None,
        settings: Settings | None = None,
        *,
        recorder: str = "client",
        region: str = "",
        scenario: str | None = None,
        tags: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        stream_tail_bytes: int = STREAM_TAIL_BYTES,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._sink = sink
        self.recorder = recorder
        self.region = region or ""
        self.scenario = scenario
        self.tags = _tag_texts(tags or {})
        self.clock = clock
        # ``started_at`` text: the system clock read as an integer is the cheap common case.
        self.timestamp: Callable[[], str] = (
            utc_timestamp if clock is time.time else lambda: utc_timestamp(clock())
        )
        self.stream_tail_bytes = stream_tail_bytes
        self._targets: dict[str | tuple[str, str], _Target] = {}
        self._keys: dict[str, _Key] = {}

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            from costsplit.spool import open_spool

            self._sink = open_spool(self.settings)
        return self._sink

    def write(self, event: UsageEvent) -> None:
        """Append one event to the sink; a failure is counted, never raised."""
        try:
            self.sink.append(event)
        except Exception as exc:
            _failed("writing the event", exc)

    def begin(
        self,
        method: str,
        url: str | tuple[str, str],
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> Exchange:
        """Start recording a request; see the module docstring for the calls that follow.

        ``url`` is the request URL, or its ``(host, path)`` when the adapter holds them parsed.
        """
        try:
            exchange = Exchange(self, method, url, headers, body)
        except Exception as exc:
            _failed("reading the request", exc)
            return _PassThrough(self)
        exchange.check_grants()
        return exchange

    def target(self, url: str | tuple[str, str]) -> _Target:
        """What the URL tells about a call (cached per URL)."""
        target = self._targets.get(url)
        if target is None:
            if isinstance(url, tuple):
                host, path = url
            else:
                parts = urlsplit(url)
                host, path = parts.hostname or "", parts.path
            host = host.lower()
            api_style, endpoint, batch = classify(path)
            host_region, host_workspace = region_of_host(host)
            plan = host in PLAN_HOSTS or host.startswith("token-plan.")
            target = _Target(
                host, api_style, endpoint, batch, host_region or self.region, host_workspace, plan
            )
            if len(self._targets) >= CACHE_ENTRIES:
                self._targets.clear()
            self._targets[url] = target
        return target

    def key(self, authorization: str) -> _Key:
        """What an ``Authorization`` header value tells about a call (cached per value)."""
        facts = self._keys.get(authorization)
        if facts is None:
            key = _bearer(authorization)
            fingerprint = fingerprint_key(key) if key else ""
            workspace = (
                self.settings.workspace_for_fingerprint(fingerprint) if fingerprint else None
            )
            facts = _Key(
                fingerprint,
                key_hint(key) if key else "",
                workspace,
                key.startswith(PLAN_KEY_PREFIX),
            )
            if len(self._keys) >= CACHE_ENTRIES:
                self._keys.clear()
            self._keys[authorization] = facts
        return facts


class _Target(NamedTuple):
    host: str
    api_style: str
    endpoint: str
    batch: bool
    region: str  # the host's region, else the recorder's
    workspace: str  # the workspace a ``{ws}.{region}.maas`` host names
    plan: bool  # a Token/Coding plan host


class _Key(NamedTuple):
    fingerprint: str
    hint: str
    workspace: Workspace | None  # the configured workspace of this key fingerprint
    plan: bool  # a Token/Coding plan key


_NO_KEY = _Key("", "", None, False)


class Exchange:
    """One request/response pair being recorded. Built by ``Recorder.begin``.

    Adapters call ``chunk`` for each piece of the body. An adapter that can do better may, once
    the head arrived, take ``keeper()`` (a plain ``append`` for the raw chunks), call
    ``first_chunk`` on the first, ``trim`` every few hundred, and — only while ``filtering`` —
    forward ``filter(chunk)`` instead of the chunk; ``chunk`` is exactly that sequence.
    """

    # Defaults shared by every exchange (an instance sets its own only when they change).
    rewrites_headers = False
    request_body: bytes | None = None
    status: int | None = None
    sse = False
    size = 0
    evicted: StreamText | None = None
    first_byte_ns: int | None = None
    done = False
    filter_usage = False  # include_usage was injected: remove what the caller did not ask for
    carry = b""
    skip_blank = False
    # (the chunk, its parsed payload) when a chunk was the usage-only event and nothing else
    usage_only: tuple[bytes, dict[str, Any]] | None = None

    def __init__(
        self,
        recorder: Recorder,
        method: str,
        url: str | tuple[str, str],
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> None:
        self.recorder = recorder
        self.start_ns = time.perf_counter_ns()
        self.chunks: list[bytes] = []
        self.response_headers: dict[str, str] = _NOTHING
        target = recorder.target(url)
        self.api_style, self.endpoint = target.api_style, target.endpoint

        authorization = workspace_header = sse_header = ""
        ours: list[tuple[str, str]] = []
        for name, value in headers:
            low = name.lower()
            if low == "authorization":
                authorization = value
            elif low[:2] == "x-":
                if low.startswith(HEADER_PREFIX):
                    ours.append((low, value))
                elif low == "x-dashscope-workspace":
                    workspace_header = value
                elif low == "x-dashscope-sse":
                    sse_header = value
        key = recorder.key(authorization) if authorization else _NO_KEY
        workspace_id = key.workspace.id if key.workspace else workspace_header or target.workspace
        self.workspace = key.workspace or (
            recorder.settings.workspace(workspace_id) if workspace_id else None
        )

        context_name, context_tags = _scenario.get()
        scenario_name = context_name if context_name is not None else recorder.scenario
        # The recorder's own tags are shared by its events when nothing adds to them (an
        # event's tags are only ever read).
        tags = {**recorder.tags, **context_tags} if context_tags else recorder.tags
        for name, value in ours:
            if name == "x-costsplit-scenario":
                scenario_name = value
            elif name.startswith(TAG_HEADER_PREFIX) and len(name) > len(TAG_HEADER_PREFIX):
                if tags is recorder.tags:
                    tags = dict(tags)
                tags[name[len(TAG_HEADER_PREFIX) :]] = value

        # The parsed request lives only through ``begin``: the exchange keeps the bytes
        # (which the garbage collector never scans), parsed again only to estimate the input
        # of a call that never got its usage.
        self.request_bytes = body
        request = load_json(body) if may_be_object(body) else None
        request = request if isinstance(request, dict) else _NOTHING
        parameters = request.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else _NOTHING
        model = request.get("model")
        self.model = model if isinstance(model, str) else ""
        n = request.get("n", parameters.get("n", 1))
        self.choices = n if type(n) is int and 0 < n <= 64 else 1
        self.incremental = parameters.get("incremental_output") is True
        streamed = request.get("stream") is True or sse_header.lower() == "enable"

        self.event = _new_event(
            new_event_id(),
            recorder.timestamp(),
            recorder.recorder,
            target.api_style,
            target.endpoint,
            target.host,
            target.region,
            key.fingerprint,
            key.hint,
            workspace_id,
            scenario_name,
            tags,
            self.model,
            streamed,
            target.batch,
            "plan" if key.plan or target.plan else "payg",
        )

        new_body = self._inject_include_usage(request, body) if streamed else None
        if new_body is not None:
            self.request_body = new_body
        if ours or new_body is not None:
            self.rewrites_headers = True
        del method  # every method is recorded alike; kept in the signature for adapters

    def outgoing_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` as they must leave: without X-Costsplit-*, and with the length of the
        new body and no compression when include_usage was injected (the stream is filtered
        line by line, so it must come uncompressed; the caller's client decodes transparently
        either way).

        An adapter calls it with the request's full headers when ``rewrites_headers`` is set
        (``begin`` may have had only those the core reads: ``REQUEST_HEADERS_READ`` and the
        X-Costsplit-* ones), or applies the same edit itself.
        """
        dropped = BODY_HEADERS if self.request_body is not None else ()
        kept = [
            (name, value)
            for name, value in headers
            if not (low := name.lower()).startswith(HEADER_PREFIX) and low not in dropped
        ]
        return kept + self.body_headers()

    def body_headers(self) -> list[tuple[str, str]]:
        """The ``BODY_HEADERS`` that go with the new body (none when the body is the caller's)."""
        body = self.request_body
        if body is None:
            return []
        return [("Content-Length", str(len(body))), ("Accept-Encoding", "identity")]

    def _inject_include_usage(self, request: dict[str, Any], body: bytes) -> bytes | None:
        """The body with ``stream_options.include_usage = true``, or None when not needed.

        Without ``stream_options`` (the usual case) the member is spliced in after the opening
        brace and the caller's bytes stay as they are: a long conversation is not written
        again, and its numbers and escapes reach Model Studio as the caller wrote them.
        """
        if self.api_style != "openai-compatible" or self.endpoint != "chat":
            return None
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return None
        if options is not None and not isinstance(options, dict):
            return None  # something we do not understand: leave the request alone
        self.filter_usage = True
        if "stream_options" not in request:  # not even null: a second member cannot arise
            brace = body.index(b"{") + 1
            rest = body[brace:]
            comma = b"," if rest.lstrip()[:1] != b"}" else b""
            return body[:brace] + INCLUDE_USAGE_MEMBER + comma + rest
        return orjson.dumps(
            {**request, "stream_options": {**(options or {}), "include_usage": True}}
        )

    def check_grants(self) -> None:
        """Raise ``ModelNotGranted`` (recording ``denied_local``) for a model not granted."""
        workspace = self.workspace
        if not (self.recorder.settings.enforce_grants and workspace and self.model):
            return
        if workspace.grants(self.model):
            return
        self.done = True
        self.event.outcome = "denied_local"
        self.event.error_code = "ModelNotGranted"
        self.event.workspace_observed = workspace.id
        self.recorder.write(self.event)
        raise ModelNotGranted(self.model, workspace.id, workspace.models)

    # -- response -------------------------------------------------------------------------------
    def response(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The response head arrived."""
        try:
            self.status = status
            # Only the headers the event reads (a dict of all of them cost more than the rest
            # of the response head).
            kept = {}
            for name, value in headers:
                low = name.lower()
                if low in RESPONSE_HEADERS_READ:
                    kept[low] = value
            self.response_headers = kept
            self.sse = "text/event-stream" in kept.get("content-type", "")
            if self.sse:
                self.event.streamed = True
            if not (self.sse and 200 <= status < 300):
                self.filter_usage = False
        except Exception as exc:
            _failed("reading the response head", exc)

    def chunk(self, data: bytes) -> bytes:
        """Keep a piece of the body for the parse at the end; return what the caller gets."""
        if self.done:
            return data
        if self.first_byte_ns is None:
            self.first_byte_ns = time.perf_counter_ns()
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.recorder.stream_tail_bytes:
            self.trim()
        return filter_chunk(self, data) if self.filter_usage else data

    def body(self, data: bytes) -> bytes:
        """The whole body at once (``chunk`` then ``end``): what the caller gets, ``data``
        itself when unchanged."""
        out = self.chunk(data)
        rest = self.end()
        return out + rest if rest else out

    def keeper(self) -> Callable[[bytes], None] | None:
        """For adapters: ``keep(chunk)`` (a list append) to call for each raw body chunk instead
        of ``chunk``, with ``first_chunk``/``trim``/``filter`` as the class docstring says; None
        when nothing more is recorded (forward the chunks untouched)."""
        return None if self.done else self.chunks.append

    @property
    def filtering(self) -> bool:
        """Whether chunks must pass through ``filter`` (include_usage was injected)."""
        return self.filter_usage

    def kept(self) -> int:
        """For adapters: how many chunks are held (changes only by ``keep`` and ``trim``)."""
        return len(self.chunks)

    def first_chunk(self) -> None:
        """For adapters using ``keeper``: the first body chunk arrived."""
        if self.first_byte_ns is None:
            self.first_byte_ns = time.perf_counter_ns()

    def trim(self) -> None:
        """Bound the bytes kept of a long stream (for adapters using ``keeper``: call it every
        few hundred chunks)."""
        try:
            if self.sse and not self.done:
                self.size = sum(map(len, self.chunks))
                if self.size > self.recorder.stream_tail_bytes:
                    self._evict()
        except Exception as exc:
            _failed("trimming a stream", exc)

    def filter(self, data: bytes) -> bytes:
        """What the caller gets of a raw chunk while ``filtering``: without the usage-only
        event and without the ``"usage":null`` member the injection adds to every other one
        (the first such member of each line, with its comma)."""
        try:
            # The usual chunk is one whole event, one line and a blank one: a memchr and one
            # search (the main cost) settle it. Anything else — a line cut by the chunk
            # boundary, several lines — goes line by line, which gives the same bytes.
            if (
                self.carry
                or self.skip_blank
                or data.find(b"\n") != len(data) - 2
                or data[-1:] != b"\n"
            ):
                return self._filter_lines(data)
            start = data.find(USAGE_NULL)
            if start < 0:  # passes as it is, unless it is the usage-only event
                if data.startswith(b"data:") and (payload := _usage_only(data[5:])) is not None:
                    self.usage_only = (data, payload)  # its facts, at the end: _usual_end_facts
                    return b""
                return data
            end = start + len(USAGE_NULL)
            if data[end : end + 1] == b",":  # as Model Studio writes the member
                return data[:start] + data[end + 1 :]
            return self._filter_lines(data)
        except Exception as exc:
            _failed("filtering a response chunk", exc)
            self.filter_usage = False
            data, self.carry = self.carry + data, b""
            return data

    def end(self) -> bytes:
        """The body is complete: write the event; return bytes still held for the caller."""
        rest, self.carry = self.carry, b""
        if rest and self.filter_usage:
            try:
                rest = self._without_usage(rest.splitlines(keepends=True))
            except Exception as exc:
                _failed("filtering a response chunk", exc)
        self._finish("end", None)
        return rest

    def close(self) -> None:
        """The caller closed the response, possibly before reading it all."""
        self._finish("close", None)

    def error(self, exc: BaseException) -> None:
        """A network error (or cancellation) before the response or while reading its body."""
        self._finish("error", exc)

    # -- internals ------------------------------------------------------------------------------
    def _evict(self) -> None:
        """Drop the oldest complete events of a long stream, keeping their text for estimates.

        The list is changed in place: adapters hold its ``append``.
        """
        data = b"".join(self.chunks)
        cut = data.rfind(b"\n", 0, len(data) - self.recorder.stream_tail_bytes // 2)
        if cut < 0:
            self.chunks[:] = [data]
            return
        if self.evicted is None:
            self.evicted = StreamText(
                cumulative=self.api_style == "dashscope" and not self.incremental
            )
        self.evicted.feed(data[: cut + 1], self.api_style)
        self.chunks[:] = [data[cut + 1 :]]
        self.size = len(self.chunks[0])

    def _filter_lines(self, data: bytes) -> bytes:
        """``filter`` line by line: complete lines pass (a partial line waits for the next
        chunk), each without its ``"usage":null`` member, the usage-only event dropped."""
        if self.carry:
            data, self.carry = self.carry + data, b""
        if self.skip_blank:
            self.skip_blank = False
            if data.startswith(b"\r\n"):
                data = data[2:]
            elif data.startswith(b"\n"):
                data = data[1:]
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            data, self.carry = data[:cut], data[cut:]
        if not data:
            return data
        return self._without_usage(data.splitlines(keepends=True))

    def _without_usage(self, lines: list[bytes]) -> bytes:
        """Complete lines, each without its first ``"usage":null`` member; a line without one
        that is the usage-only event is dropped with the blank line after it. Inside a JSON
        string a quote is escaped, so the member's exact text is only ever the member."""
        kept: list[bytes] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            start = line.find(USAGE_NULL)
            if start >= 0:
                kept.append(_without_usage_null(line, start))
            elif line.startswith(b"data:") and _usage_only(line[5:]) is not None:
                if i < len(lines) and lines[i].strip() == b"":
                    i += 1
                elif i >= len(lines):
                    self.skip_blank = True
            else:
                kept.append(line)
        return b"".join(kept)

    def _finish(self, how: str, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._complete(how, exc)
        except Exception as failure:
            _failed("building the event", failure)
            return
        self.recorder.write(self.event)

    def _complete(self, how: str, exc: BaseException | None) -> None:
        event = self.event
        now = time.perf_counter_ns()
        event.latency_us = (now - self.start_ns) // 1000
        if self.first_byte_ns is not None:
            event.first_byte_us = (self.first_byte_ns - self.start_ns) // 1000
        if self.status is None:
            if how == "close":
                # The caller went away after the request left (a proxy caller disconnecting
                # before the answer): Model Studio may have started, and bill, the call.
                event.outcome = "interrupted"
                self._usage(Usage(input_tokens=self._input_estimate()).consistent(), "estimated")
                return
            event.outcome = "network_error"
            event.error_code = type(exc).__name__ if exc is not None else "NoResponse"
            return
        event.http_status = self.status
        encoding = self.response_headers.get("content-encoding")
        if self.sse and 200 <= self.status < 300 and not encoding:
            if self._usual_end():
                return
            facts = self._stream_facts()
            body = None
        else:
            chunks = self.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if encoding:
                body = _decoded(body, encoding)
            facts = None
        if self.status >= 400:
            facts = parse_body(body, self.endpoint)
            if not facts.error_code and self.sse:
                facts = parse_stream(body, self.api_style, endpoint=self.endpoint)
            self._error_outcome(facts.error_code, self.status)
            event.request_id = facts.request_id or self._header_request_id() or facts.response_id
            return
        if not self.sse:
            payload = load_json(body)
            if (
                how == "end"
                and self.api_style == "openai-compatible"
                and isinstance(payload, dict)
                and fill_usual_end(event, payload, self.response_headers, self.endpoint)
            ):
                return  # a compatible answer with its usage: filled as a stream's usual end
            facts = facts_of(payload, self.endpoint)
            event.request_id = facts.request_id or self._header_request_id() or facts.response_id
            event.model_returned = facts.model if self.api_style == "openai-compatible" else ""
            if how == "end":
                self._usage(facts.usage, "reported")
            else:
                event.outcome = "interrupted"
                self._usage(Usage(input_tokens=self._input_estimate()).consistent(), "estimated")
            return
        if facts is None:
            facts = parse_stream(body, self.api_style, choices=self.choices, endpoint=self.endpoint)
        event.request_id = facts.request_id or self._header_request_id() or facts.response_id
        event.model_returned = facts.model if self.api_style == "openai-compatible" else ""
        if facts.error_code:
            self._error_outcome(facts.error_code, facts.error_status or self.status)
            self._usage(facts.usage, "reported")
            return
        finished = facts.done or (how == "end" and self.endpoint not in ("chat", "multimodal"))
        if finished:
            if facts.usage is not None:
                self._usage(facts.usage, "reported")
            else:
                self._usage(
                    self._estimate(body if body is not None else b"".join(self.chunks)), "estimated"
                )
            return
        event.outcome = "interrupted"
        if facts.usage is not None and self.api_style == "dashscope":
            self._usage(facts.usage, "estimated")  # cumulative usage of the last event received
        else:
            self._usage(
                self._estimate(body if body is not None else b"".join(self.chunks)), "estimated"
            )

    def _stream_facts(self) -> BodyFacts:
        """``parse_stream`` of the bytes kept, reading only the last few chunks when the facts
        are all there (the usage sits in the last events): joining a long stream cost more
        than parsing its end."""
        chunks = self.chunks
        if len(chunks) > TAIL_CHUNKS and chunks[-TAIL_CHUNKS - 1].endswith(b"\n\n"):
            # The tail starts at an event boundary, so its events parse as in the whole.
            facts = parse_stream_tail(
                b"".join(chunks[-TAIL_CHUNKS:]),
                self.api_style,
                choices=self.choices,
                endpoint=self.endpoint,
            )
            if facts is not None:
                return facts
        return parse_stream(
            b"".join(chunks), self.api_style, choices=self.choices, endpoint=self.endpoint
        )

    def _usual_end(self) -> bool:
        """Fill the event of a compatible stream that ends as Model Studio ends one — a chunk
        holding the usage event, then one holding ``[DONE]``, each a whole event, after a
        chunk that ends an event — from that one event, parsed once (the filter keeps what it
        parsed); False, the event untouched, for any other end (``_stream_facts`` reads it)."""
        chunks = self.chunks
        if len(chunks) < 3 or self.api_style != "openai-compatible":
            return False
        if chunks[-1] not in DONE_EVENTS:
            return False
        last = chunks[-2]
        if not (
            last.startswith(b"data:")
            and last.find(b"\n") == len(last) - 2
            and last.endswith(b"\n\n")
            and chunks[-3].endswith(b"\n\n")
        ):
            return False
        kept = self.usage_only
        payload = kept[1] if kept is not None and kept[0] is last else load_json(last[5:])
        if not isinstance(payload, dict):
            return False
        return fill_usual_end(self.event, payload, self.response_headers, self.endpoint)

    def _header_request_id(self) -> str:
        return request_id_from_headers(self.response_headers)

    def _error_outcome(self, code: str, status: int) -> None:
        self.event.http_status = status
        self.event.error_code = code
        self.event.outcome = "denied" if status == 403 and code in DENIED_CODES else "http_error"

    def _usage(self, usage: Usage | None, source: str) -> None:
        if usage is None:
            self.event.usage_source = "missing"
            return
        _fill_usage(self.event, usage, source)

    def _input_estimate(self) -> int:
        body = self.request_bytes
        return estimate_tokens(request_text(load_json(body) if may_be_object(body) else None))

    def _estimate(self, body: bytes) -> Usage:
        text = self.evicted or StreamText(
            cumulative=self.api_style == "dashscope" and not self.incremental
        )
        if self.evicted is not None:
            body = body[body.find(b"\n") + 1 :]  # the tail's first line may be a fragment
        text.feed(body, self.api_style)
        return text.estimate(self._input_estimate())


def _fill_usage(event: UsageEvent, usage: Usage, source: str) -> None:
    event.usage_source = source
    event.input_tokens = usage.input_tokens
    event.output_tokens = usage.output_tokens
    event.total_tokens = usage.total_tokens
    event.cached_tokens = usage.cached_tokens
    event.cache_creation_tokens = usage.cache_creation_tokens
    event.cache_type = usage.cache_type
    event.reasoning_tokens = usage.reasoning_tokens
    event.image_tokens = usage.image_tokens
    event.audio_tokens = usage.audio_tokens
    event.video_tokens = usage.video_tokens
    event.audio_output_tokens = usage.audio_output_tokens
    event.image_count = usage.image_count
    event.plugins = usage.plugins


def _fill_usual_end(
    event: UsageEvent, payload: dict[str, Any], headers: dict[str, str], endpoint: str
) -> bool:
    """What ``Exchange._complete`` does with the facts of a compatible answer's last JSON (a
    stream's usage event, a non-streamed body that ended whole) when they hold a usage and no
    error: the request id, the model returned and the usage, reported. False, the event
    untouched, when they do not (compiled in ``costsplit/_speedups.c`` where it was built, for
    the usage objects Model Studio sends).
    """
    facts = facts_of(payload, endpoint)
    if facts.usage is None or facts.error_code:
        return False
    event.request_id = facts.request_id or request_id_from_headers(headers) or facts.response_id
    event.model_returned = facts.model
    _fill_usage(event, facts.usage, "reported")
    return True


def _decoded(body: bytes, encoding: str) -> bytes:
    """The body without its gzip/deflate content coding (what we parse, not what we forward)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            return zlib.decompressobj(wbits=47).decompress(body)  # 47: gzip or zlib header
        except zlib.error:
            try:
                return zlib.decompressobj(wbits=-15).decompress(body)  # raw deflate
            except zlib.error:
                return body
    return body


def _without_usage_null(line: bytes, start: int) -> bytes:
    """``line`` without the first ``"usage":null`` member (found at ``start`` or later) that
    has a comma beside it, and that comma (the one after it when both are there)."""
    while start >= 0:
        end = start + len(USAGE_NULL)
        if line[end : end + 1] == b",":
            return line[:start] + line[end + 1 :]
        if start and line[start - 1 : start] == b",":
            return line[: start - 1] + line[end:]
        start = line.find(USAGE_NULL, end)
    return line


def _usage_only(payload: bytes) -> dict[str, Any] | None:
    """The parsed SSE data payload when it is the usage-only chunk (``choices: []`` and a
    usage), else None."""
    if not may_be_object(payload):  # ``[DONE]``
        return None
    data = load_json(payload)
    if isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict):
        return data
    return None


class _PassThrough(Exchange):
    """Stands in when reading the request failed: forwards everything, records nothing."""

    def __init__(self, recorder: Recorder) -> None:  # deliberately skips Exchange.__init__
        self.recorder = recorder
        self.request_body = None
        self.done = True
        self.carry = b""

    def check_grants(self) -> None:
        return

    def response(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        return


try:  # the compiled fast paths, where a C compiler built them at install
    from costsplit._speedups import fill_usual_end, filter_chunk
except ImportError:  # pragma: no cover - the same in Python
    filter_chunk, fill_usual_end = Exchange.filter, _fill_usual_end
"""``filter_chunk(exchange, data)`` is ``exchange.filter(data)``; adapters ``map`` it over
chunks, so that the usual chunk runs no Python code."""


__all__ = [
    "BODY_HEADERS",
    "DENIED_CODES",
    "REQUEST_HEADERS_READ",
    "RESPONSE_HEADERS_READ",
    "BodyFacts",
    "Exchange",
    "Recorder",
    "Sink",
    "classify",
    "filter_chunk",
    "recording_errors",
    "region_of_host",
    "scenario",
]
