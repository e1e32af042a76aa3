"""The usage event: one immutable record per model call attempt.

An event holds what was observed where the call happened — never an API key (a fingerprint and
a last-4 hint only) and never prompt or completion text. Workspace, scenario defaults and prices
are resolved later, at rollup, so a corrected mapping re-derives history.

``COLUMNS`` is the single source of the schema: the spool writes these keys as one JSON line,
ingest reads them with these DuckDB types, and migration ``m001_events`` creates them
(``tags`` and ``plugins`` are JSON text since ``m008_events_json_objects``).

The line (``schema_version`` 2) holds ``event_id``, ``schema_version``, ``started_at`` and
every other field whose value is not the field's default, in ``COLUMNS`` order; a field left
out (or null where the default is not) has its default, ``DEFAULTS``. Version 1 lines, which
hold every field, still read as they are. Most fields of a call keep their defaults, so the
line is about half as long, and reading the line is much of what ingest pays for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)  # line layouts ingest reads: 1 has every field, 2 leaves defaults out

API_STYLES = ("openai-compatible", "dashscope")
ENDPOINTS = ("chat", "multimodal", "embedding", "other")
OUTCOMES = ("ok", "http_error", "network_error", "interrupted", "denied", "denied_local")
USAGE_SOURCES = ("reported", "estimated", "missing")

# name -> DuckDB type, in table order.
COLUMNS: dict[str, str] = {
    "event_id": "UUID",  # the de-duplication key; a line whose id is not a UUID is rejected
    "schema_version": "SMALLINT",
    "started_at": "TIMESTAMPTZ",
    "latency_us": "BIGINT",
    "first_byte_us": "BIGINT",
    "recorder": "VARCHAR",
    "api_style": "VARCHAR",
    "endpoint": "VARCHAR",
    "host": "VARCHAR",
    "region": "VARCHAR",
    "key_fingerprint": "VARCHAR",
    "key_hint": "VARCHAR",
    "workspace_observed": "VARCHAR",
    "scenario": "VARCHAR",
    "tags": "JSON",  # an object of strings (ingest checks it)
    "model_requested": "VARCHAR",
    "model_returned": "VARCHAR",
    "request_id": "VARCHAR",
    "streamed": "BOOLEAN",
    "batch": "BOOLEAN",
    "billing_plan": "VARCHAR",
    "outcome": "VARCHAR",
    "http_status": "SMALLINT",
    "error_code": "VARCHAR",
    "usage_source": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "total_tokens": "BIGINT",
    "cached_tokens": "BIGINT",
    "cache_creation_tokens": "BIGINT",
    "cache_type": "VARCHAR",
    "reasoning_tokens": "BIGINT",
    "image_tokens": "BIGINT",
    "audio_tokens": "BIGINT",
    "video_tokens": "BIGINT",
    "audio_output_tokens": "BIGINT",
    "image_count": "BIGINT",
    "plugins": "JSON",  # an object of BIGINT counts (ingest checks it)
}

TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "image_tokens",
    "audio_tokens",
    "video_tokens",
    "audio_output_tokens",
    "image_count",
)


@dataclasses.dataclass(slots=True, kw_only=True)
class UsageEvent:
    """One model call attempt, as observed by a recorder (the client or the proxy).

    Token counts are normalised per the reference (§5): ``cached_tokens``,
    ``cache_creation_tokens`` and the modality counts are subsets of ``input_tokens``;
    ``reasoning_tokens`` and ``audio_output_tokens`` are subsets of ``output_tokens``.
    They are stored beside the totals, never added on top.
    """

    event_id: str = dataclasses.field(default_factory=lambda: new_event_id())
    schema_version: int = SCHEMA_VERSION
    started_at: str = ""  # ISO 8601 UTC with microseconds, e.g. 2026-10-01T04:00:00.000001Z
    latency_us: int = 0
    first_byte_us: int | None = None
    recorder: str = "client"  # client | proxy
    api_style: str = "openai-compatible"
    endpoint: str = "chat"
    host: str = ""
    region: str = ""
    key_fingerprint: str = ""
    key_hint: str = ""
    workspace_observed: str = ""
    scenario: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    model_requested: str = ""
    model_returned: str = ""
    request_id: str = ""
    streamed: bool = False
    batch: bool = False
    billing_plan: str = "payg"  # payg | plan (Token/Coding plan keys and hosts)
    outcome: str = "ok"
    http_status: int | None = None
    error_code: str = ""
    usage_source: str = "missing"
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_type: str = ""  # "ephemeral" for an explicit-cache call, as the provider reported it
    reasoning_tokens: int = 0
    image_tokens: int = 0
    audio_tokens: int = 0
    video_tokens: int = 0
    audio_output_tokens: int = 0
    image_count: int = 0
    plugins: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json_line(self) -> bytes:
        """The event as one newline-terminated JSON line (``schema_version`` 2): the id, the
        version, the start time and the fields whose value is not their default, in
        ``COLUMNS`` order."""
        return _compiled_line(self) or _line_of(self)


_ALWAYS = ("event_id", "schema_version", "started_at")  # in every line


def _field_defaults() -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(UsageEvent):
        if field.name in _ALWAYS:
            continue
        if field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
        else:
            defaults[field.name] = field.default
    return defaults


# Every field a line may leave out -> its default, what the line means by leaving it out.
DEFAULTS: dict[str, Any] = _field_defaults()


def _leave_out_rule(default: Any) -> str:
    """How a line leaves out a field with this default: ``none`` (only None), ``falsy`` (any
    falsy value, None included, reads as the default) or ``equal`` (equal to the default)."""
    if default is None:
        return "none"
    return "falsy" if not default else "equal"


def _line_writer() -> Callable[[UsageEvent], bytes]:
    """Generate the serialiser: one test per field in straight-line code, then one
    ``orjson.dumps`` of a dict. Faster than ``orjson.dumps`` of the whole slots dataclass
    (≈ 2.4 µs against ≈ 2.8-3.5 µs per event here), and the line is about half as long."""
    lines = [
        "def line_of(event):",
        f"    line = {{'event_id': event.event_id, 'schema_version': {SCHEMA_VERSION},",
        "            'started_at': event.started_at}",
    ]
    namespace: dict[str, Any] = {"dumps": orjson.dumps, "APPEND": orjson.OPT_APPEND_NEWLINE}
    for name, default in DEFAULTS.items():
        rule = _leave_out_rule(default)
        if rule == "none":
            test = "value is not None"
        elif rule == "falsy":  # 0, "", False, {}: a falsy value (None too) reads as the default
            test = "value"
        else:
            namespace[f"_default_{name}"] = default
            test = f"value != _default_{name}"
        lines += [f"    value = event.{name}", f"    if {test}:", f"        line['{name}'] = value"]
    lines.append("    return dumps(line, option=APPEND)")
    exec("\n".join(lines), namespace)
    return namespace["line_of"]


_line_of = _line_writer()


def line_fields(line: bytes) -> dict[str, Any]:
    """Every field of a spool line of either version, defaults filled in, in ``COLUMNS`` order.

    What ingest stores for the line; for tests and tools that read the spool.
    """
    data = orjson.loads(line)
    if data.get("schema_version") == 1:
        return data
    fields = {name: data.get(name) for name in _ALWAYS}
    for name, default in DEFAULTS.items():
        value = data.get(name)
        fields[name] = value if value is not None else _fresh(default)
    return fields


def _fresh(default: Any) -> Any:
    return dict(default) if isinstance(default, dict) else default


# The random part of event ids comes from a per-process generator seeded from the OS: one
# ``os.urandom`` call per event cost more than the rest of building the event. A forked child
# re-seeds (``os.register_at_fork``), so parent and child never draw the same sequence.
_id_random = random.Random(os.urandom(32))


def _reseed_ids() -> None:
    _id_random.seed(os.urandom(32))
    if _speedups is not None:
        _speedups.seed_event_ids(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def _new_event_id() -> str:
    """A UUIDv7 string: unique, and ordered by creation time (RFC 9562 §5.7).

    48 bits of Unix milliseconds, then 74 random bits (12 ``rand_a`` + 62 ``rand_b``) from a
    per-process generator seeded from ``os.urandom`` and re-seeded in a forked child.
    """
    rand = _id_random.getrandbits(74)
    value = (
        (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | (rand >> 62) << 64  # rand_a, 12 bits
        | 0b10 << 62  # variant
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)  # rand_b, 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


try:  # the same, compiled (costsplit/_speedups.c), where a C compiler built it at install
    from costsplit import _speedups
except ImportError:  # pragma: no cover
    _speedups = None
    new_event_id = _new_event_id
else:
    _speedups.seed_event_ids(os.urandom(32))
    new_event_id = _speedups.new_event_id


def _compiled_line_writer() -> Callable[[UsageEvent], bytes | None]:
    """The line writer of ``costsplit/_speedups.c``, given the same fields and rules as the
    generated one: it returns the same bytes, or None for a value it does not write (the
    Python writer then does). Where it was not built, a writer that always says None."""
    if _speedups is None:
        return lambda event: None
    rules = {"always": 0, "falsy": 1, "none": 2, "equal": 3}
    fields = []
    for name in ("event_id", "schema_version", "started_at", *DEFAULTS):
        key = f'"{name}":'.encode() if name == "event_id" else f',"{name}":'.encode()
        constant = SCHEMA_VERSION if name == "schema_version" else None
        if name in _ALWAYS:
            rule, default = "always", None
        else:
            rule, default = _leave_out_rule(DEFAULTS[name]), DEFAULTS[name]
        fields.append((key, UsageEvent.__dict__[name], constant, default, rules[rule]))
    _speedups.set_event_fields(UsageEvent, tuple(fields))
    return _speedups.event_line


_compiled_line = _compiled_line_writer()


def fingerprint_key(api_key: str) -> str:
    """A stable, non-reversible fingerprint of an API key: ``sha256:`` and 16 hex digits."""
    digest = hashlib.sha256(api_key.strip().encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def key_hint(api_key: str) -> str:
    """The last four characters of a key, enough for a person to recognise it."""
    key = api_key.strip()
    return f"…{key[-4:]}" if len(key) >= 8 else ""


# (whole second, "YYYY-MM-DDTHH:MM:SS") of the last timestamp formatted: events come many to a
# second, and formatting the date part was most of the cost.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def utc_timestamp(unix_seconds: float | None = None) -> str:
    """ISO 8601 UTC with microseconds for ``started_at`` (now when no time is given).

    The same text ``datetime.fromtimestamp(unix_seconds, UTC)`` formats (microseconds rounded
    half to even), in about a third of its time.
    """
    global _last_second
    if unix_seconds is None:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    else:
        fraction, whole = math.modf(unix_seconds)  # as datetime.fromtimestamp splits it
        second, micros = int(whole), round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        elif micros < 0:
            second, micros = second - 1, micros + 1_000_000
    cached_second, text = _last_second
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros:06d}Z"


def event_builder(*names: str) -> Callable[..., UsageEvent]:
    """A function building a ``UsageEvent`` from the fields ``names``, given positionally;
    every other field takes its default (a new id, fresh empty dicts).

    The same event as ``UsageEvent(**dict(zip(names, values)))`` in about a quarter of the
    time: the dataclass's keyword-only ``__init__`` matching keywords and filling 20-odd
    defaults cost more than a microsecond, and a recorder builds an event per call. Generated
    from the dataclass's fields, as ``dataclasses`` generates ``__init__``.
    """
    fields = {field.name: field for field in dataclasses.fields(UsageEvent)}
    unknown = set(names) - set(fields)
    if unknown or len(set(names)) != len(names):
        raise TypeError(f"event_builder: unknown or repeated fields {sorted(unknown) or names}")
    lines = [f"def build({', '.join(names)}):", "    event = _new(UsageEvent)"]
    defaults: dict[str, Any] = {"_new": object.__new__, "UsageEvent": UsageEvent}
    for name, field in fields.items():
        if name in names:
            value = name
        elif field.default_factory is not dataclasses.MISSING:
            value = f"_factory_{name}()"
            defaults[f"_factory_{name}"] = field.default_factory
        else:
            value = f"_default_{name}"
            defaults[f"_default_{name}"] = field.default
        lines.append(f"    event.{name} = {value}")
    lines.append("    return event")
    exec("\n".join(lines), defaults)
    return defaults["build"]
