"""Usage as Model Studio reports it, normalised into the usage event's token fields.

Pure functions over bytes and dicts, no I/O, never raising on malformed input: a body or a
stream that is not what we expect yields "no usage", never an exception.

Normalisation follows the reference rules for both API styles (OpenAI-compatible and native
DashScope):

- ``input_tokens`` is ``prompt_tokens`` or ``input_tokens``; ``output_tokens`` is
  ``completion_tokens`` or ``output_tokens``; ``total_tokens`` is as reported, or
  input + output when absent (native VL omits it). A reported total below input + output is
  raised to input + output, so a stored event is always consistent.
- Subsets are stored beside their totals, never added on top: cached and cache-creation
  tokens and image/audio/video tokens are inside ``input_tokens``; reasoning and audio-output
  tokens are inside ``output_tokens``. A subset larger than its total is clamped to it.
- Cached tokens are looked for in all three places, first found wins:
  ``prompt_tokens_details.cached_tokens``, ``input_tokens_details.cached_tokens``,
  ``usage.cached_tokens`` (VL models in Singapore, qwen3-vl in Beijing).
- Embeddings report only ``total_tokens`` (native) or ``prompt_tokens == total_tokens``
  (compatible); the tokens are input tokens.
- ``usage.plugins.<name>.count`` becomes ``plugins[name] = count``; ``image_count`` is kept.

Streams are parsed late: a recorder keeps the bytes (a bounded tail, see ``StreamTail``) and
calls ``parse_stream`` once at the end, which reads events backwards from the end and stops as
soon as it has the usage (performance: parsing every chunk as it arrives costs about 8×).
Both framings are read line by line: compatible ``data: {...}`` … ``data: [DONE]``; native
``id:`` / ``event:`` / ``:HTTP_STATUS/200`` / ``data:{...}`` with no space and sometimes no blank
line between events. A spec-faithful SSE decoder (httpx-sse's, private in that package) joins
consecutive ``data:`` lines of one event with a newline, which breaks the native captures that
have no blank line between events; the official DashScope SDK treats every ``data:`` line as
one event, and so does this module (about 40 lines).

Native stream usage is cumulative: the last event of each choice index wins, never a sum over
events; with ``n > 1`` the outputs of the choice indexes are summed and input counted once, as
the official SDK does.

When a stream broke before its usage arrived, ``estimate_tokens`` turns the text received into
a token count with the rule documented on that function; the event is then marked
``usage_source = "estimated"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import orjson

# -- token counts ----------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Usage:
    """Normalised token counts of one call (field names are the usage event's)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_type: str = ""
    reasoning_tokens: int = 0
    image_tokens: int = 0
    audio_tokens: int = 0
    video_tokens: int = 0
    audio_output_tokens: int = 0
    image_count: int = 0
    plugins: dict[str, int] = dataclasses.field(default_factory=dict)

    def consistent(self) -> Usage:
        """Clamp subsets to their totals and the total to at least input + output (in place)."""
        # Written out (no getattr loop, no min()): this runs once per recorded call.
        room = self.input_tokens
        if self.cached_tokens > room:
            self.cached_tokens = room
        if self.cache_creation_tokens > room - self.cached_tokens:
            self.cache_creation_tokens = room - self.cached_tokens
        if self.image_tokens > room:
            self.image_tokens = room
        room -= self.image_tokens
        if self.audio_tokens > room:
            self.audio_tokens = room
        room -= self.audio_tokens
        if self.video_tokens > room:
            self.video_tokens = room
        room = self.output_tokens
        if self.reasoning_tokens > room:
            self.reasoning_tokens = room
        if self.audio_output_tokens > room - self.reasoning_tokens:
            self.audio_output_tokens = room - self.reasoning_tokens
        if self.total_tokens < self.input_tokens + self.output_tokens:
            self.total_tokens = self.input_tokens + self.output_tokens
        return self


def _count(value: Any) -> int | None:
    """A token count from JSON: a non-negative integer, else None (bools and junk ignored)."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def _first(*values: Any) -> int | None:
    for value in values:
        if value is None:  # the usual case: the key is absent
            continue
        if type(value) is int:
            if value >= 0:
                return value
            continue
        count = _count(value)
        if count is not None:
            return count
    return None


_NO_DETAILS: dict[str, Any] = {}  # read only


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else _NO_DETAILS


def normalise_usage(raw: Any, endpoint: str = "chat") -> Usage | None:
    """Normalise a ``usage`` object of either API style; None when it holds no usage at all."""
    if not isinstance(raw, dict):
        return None
    get = raw.get
    # A plain non-negative int is the usual count; anything else goes through ``_first``.
    value = get("prompt_tokens")
    input_tokens = (
        value if type(value) is int and value >= 0 else _first(value, get("input_tokens"))
    )
    value = get("completion_tokens")
    output_tokens = (
        value if type(value) is int and value >= 0 else _first(value, get("output_tokens"))
    )
    total = _count(get("total_tokens"))
    image_count = get("image_count")
    if image_count is not None:
        image_count = _count(image_count)
    plugins = get("plugins")
    if plugins is not None:
        plugins = _plugins(plugins)
    if input_tokens is None and output_tokens is None:
        if total is None and image_count is None and not plugins:
            return None
        # Embeddings (native) report only a total: all of it is input. For anything else a
        # lone total cannot be split, so it stays a total.
        if endpoint == "embedding":
            input_tokens = total
    usage = Usage(input_tokens or 0, output_tokens or 0, total or 0)
    if image_count:
        usage.image_count = image_count
    if plugins:
        usage.plugins = plugins
    # Which details objects are there decides how the subsets are read: none (the common
    # case, totals only), those of one API style (every subset has a single source: read just
    # the keys present), or anything else (the full lookup below, about 50 dict reads).
    details = None
    for name in raw:
        if name in _PLAIN_USAGE_KEYS:
            continue
        style = _DETAIL_STYLE.get(name)
        if style is None or (details is not None and details[0] != style):
            return _all_subsets(usage, raw)
        if details is None:
            details = (style, [name])
        else:
            details[1].append(name)
    if details is not None:
        for name in details[1]:
            found = raw[name]
            if not isinstance(found, dict):
                continue
            fields = _DETAIL_FIELDS[name]
            for key, value in found.items():
                field = fields.get(key)
                if field == "cache_type":
                    usage.cache_type = _text(value)
                elif field is not None:
                    setattr(usage, field, _count(value) or 0)
    return usage.consistent()


def _all_subsets(usage: Usage, raw: dict[str, Any]) -> Usage:
    """The subsets of a usage object mixing styles or with top-level subsets, by priority."""
    get = raw.get
    prompt = _dict(get("prompt_tokens_details"))
    input_details = _dict(get("input_tokens_details"))
    completion = _dict(get("completion_tokens_details"))
    output_details = _dict(get("output_tokens_details"))
    usage.cached_tokens = (
        _first(
            prompt.get("cached_tokens"), input_details.get("cached_tokens"), get("cached_tokens")
        )
        or 0
    )
    usage.cache_creation_tokens = (
        _first(
            prompt.get("cache_creation_input_tokens"),
            input_details.get("cache_creation_input_tokens"),
        )
        or 0
    )
    usage.cache_type = _text(prompt.get("cache_type")) or _text(input_details.get("cache_type"))
    usage.reasoning_tokens = (
        _first(completion.get("reasoning_tokens"), output_details.get("reasoning_tokens")) or 0
    )
    usage.image_tokens = (
        _first(prompt.get("image_tokens"), get("image_tokens"), input_details.get("image_tokens"))
        or 0
    )
    usage.audio_tokens = (
        _first(prompt.get("audio_tokens"), get("audio_tokens"), input_details.get("audio_tokens"))
        or 0
    )
    usage.video_tokens = (
        _first(prompt.get("video_tokens"), get("video_tokens"), input_details.get("video_tokens"))
        or 0
    )
    usage.audio_output_tokens = (
        _first(completion.get("audio_tokens"), output_details.get("audio_tokens")) or 0
    )
    return usage.consistent()


# Usage objects holding only these keys have no subsets (cached, modality, reasoning) to read.
_PLAIN_USAGE_KEYS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "image_count",
        "plugins",
    }
)

_INPUT_DETAILS = {
    "cached_tokens": "cached_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
    "cache_type": "cache_type",
    "image_tokens": "image_tokens",
    "audio_tokens": "audio_tokens",
    "video_tokens": "video_tokens",
}
_OUTPUT_DETAILS = {"reasoning_tokens": "reasoning_tokens", "audio_tokens": "audio_output_tokens"}
# Details object → (its key → the Usage field it fills).
_DETAIL_FIELDS = {
    "prompt_tokens_details": _INPUT_DETAILS,
    "input_tokens_details": _INPUT_DETAILS,
    "completion_tokens_details": _OUTPUT_DETAILS,
    "output_tokens_details": _OUTPUT_DETAILS,
}
# Details object → its API style (a usage object with both styles' details is read in full).
_DETAIL_STYLE = {
    "prompt_tokens_details": "compatible",
    "completion_tokens_details": "compatible",
    "input_tokens_details": "native",
    "output_tokens_details": "native",
}


def _plugins(raw: Any) -> dict[str, int]:
    """``{"search": {"count": 1, "strategy": "turbo"}}`` → ``{"search": 1}``."""
    if not isinstance(raw, dict):
        return {}
    counts = {}
    for name, value in raw.items():
        count = _count(value.get("count")) if isinstance(value, dict) else _count(value)
        if isinstance(name, str) and count is not None:
            counts[name] = count
    return counts


def combine_choices(per_index: dict[int, Usage]) -> Usage:
    """Usage of an ``n > 1`` native stream: input once, outputs summed over choice indexes."""
    parts = [per_index[index] for index in sorted(per_index)]
    first = parts[0]
    combined = dataclasses.replace(first, plugins=dict(first.plugins))
    combined.input_tokens = max(p.input_tokens for p in parts)
    combined.output_tokens = sum(p.output_tokens for p in parts)
    combined.reasoning_tokens = sum(p.reasoning_tokens for p in parts)
    combined.audio_output_tokens = sum(p.audio_output_tokens for p in parts)
    combined.total_tokens = combined.input_tokens + combined.output_tokens
    return combined.consistent()


# -- bodies ------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class BodyFacts:
    """What a response body (or a stream) tells about the call."""

    usage: Usage | None = None
    request_id: str = ""  # body ``request_id``
    response_id: str = ""  # body ``id`` (compatible: ``chatcmpl-<uuid>`` or a bare uuid)
    model: str = ""
    error_code: str = ""
    error_status: int | None = None  # native in-stream ``:HTTP_STATUS/<code>`` of an error event
    done: bool = False  # a stream reached its logical end ([DONE] or a final finish_reason)


def load_json(body: bytes) -> Any:
    """The JSON value of a body, or None when it is not JSON."""
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None


def may_be_object(data: bytes) -> bool:
    """False when ``data`` cannot be a JSON object (``[DONE]``), told without parsing: a
    failed parse raises, and that costs more than a parse."""
    return data[:1] == b"{" or data.lstrip()[:1] == b"{"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_body(body: bytes, endpoint: str = "chat") -> BodyFacts:
    """Usage, request id, model and error code of a non-streamed response body (any style)."""
    return facts_of(load_json(body), endpoint)


def facts_of(data: Any, endpoint: str = "chat") -> BodyFacts:
    """The facts of one parsed JSON body or stream event."""
    facts = BodyFacts()
    if not isinstance(data, dict):
        return facts
    facts.usage = normalise_usage(data.get("usage"), endpoint)
    facts.model = _text(data.get("model"))
    error = data.get("error")
    if isinstance(error, dict):  # compatible envelope: {"error": {"code", "type", ...}}
        facts.error_code = _text(error.get("code")) or _text(error.get("type"))
        facts.response_id = _text(error.get("id"))
    elif isinstance(data.get("code"), str) and "output" not in data:  # native envelope
        facts.error_code = data["code"]
    facts.request_id = _text(data.get("request_id"))
    facts.response_id = _text(data.get("id")) or facts.response_id
    return facts


def request_id_from_headers(headers: dict[str, str]) -> str:
    """``x-request-id`` (both styles), else ``x-dashscope-request-id`` (never seen; cheap)."""
    return headers.get("x-request-id") or headers.get("x-dashscope-request-id") or ""


# -- streams -----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class SseEvent:
    """One SSE event as DashScope frames it: every ``data:`` line completes an event."""

    event: str
    data: bytes
    status: int | None = None  # from a ``:HTTP_STATUS/<code>`` comment or a ``status:`` field


def iter_events(data: bytes) -> Iterator[SseEvent]:
    """The events of an SSE byte string, in order (both framings; partial lines are skipped)."""
    event, status = "", None
    for raw in data.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line.startswith(b"data:"):
            value = line[5:]
            yield SseEvent(
                event or "message", value[1:] if value.startswith(b" ") else value, status
            )
            event, status = "", None
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b":HTTP_STATUS/") or line.startswith(b"status:"):
            code = line.rsplit(b"/", 1)[-1] if line.startswith(b":") else line[7:]
            status = _int_or_none(code.strip())


def _int_or_none(value: bytes) -> int | None:
    return int(value) if value.isdigit() and len(value) < 6 else None


def _events_backwards(data: bytes) -> Iterator[SseEvent]:
    """Like ``iter_events`` but from the end, reading only as far back as the caller pulls."""
    end = len(data)
    while end > 0:
        start = data.rfind(b"data:", 0, end)
        if start < 0:
            return
        if start > 0 and data[start - 1 : start] not in (b"\n", b"\r"):
            end = start  # "data:" inside a value, not at a line start
            continue
        stop = data.find(b"\n", start, end)
        line = data[start : stop if stop >= 0 else end].rstrip(b"\r")
        # Field lines of this event sit between the previous data line (or blank line) and
        # this one; native captures sometimes have no blank line between events.
        boundary = max(data.rfind(b"\ndata:", 0, start - 1), data.rfind(b"\n\n", 0, start))
        if boundary >= 0:
            newline = data.find(b"\n", boundary + 1, start)
            head = data[newline + 1 : start] if newline >= 0 else b""
        else:
            head = data[:start]
        event, status = "", None
        for field in head.split(b"\n"):
            field = field.rstrip(b"\r")
            if field.startswith(b"event:"):
                event = field[6:].strip().decode("utf-8", "replace")
            elif field.startswith(b":HTTP_STATUS/"):
                status = _int_or_none(field.rsplit(b"/", 1)[-1].strip())
            elif field.startswith(b"status:"):
                status = _int_or_none(field[7:].strip())
        value = line[5:]
        yield SseEvent(event or "message", value[1:] if value.startswith(b" ") else value, status)
        end = start


def parse_stream(
    data: bytes, api_style: str, *, choices: int = 1, endpoint: str = "chat"
) -> BodyFacts:
    """Usage and outcome facts of a stream's bytes (its tail), parsed from the end.

    Compatible: the usage of the last event that carries one (the ``choices: []`` chunk);
    ``done`` when ``[DONE]`` was seen; a data event holding ``{"error": …}`` is an error.
    Native: the last ``result`` event of each choice index wins (``choices`` = the request's
    ``n``); ``event:error`` (HTTP 200 stream) gives ``error_code`` and ``error_status``; ``done``
    when every choice index seen has a final ``finish_reason`` (not the string ``"null"``).
    """
    return _parse_backwards(data, api_style, choices, endpoint)[0]


def parse_stream_tail(
    tail: bytes, api_style: str, *, choices: int = 1, endpoint: str = "chat"
) -> BodyFacts | None:
    """``parse_stream`` of a stream whose ``tail`` (starting at an event boundary) is given:
    its facts when the tail holds them all (the same facts as the whole would give, since
    the parse reads backwards and stops there), else None (parse the whole)."""
    facts, concluded = _parse_backwards(tail, api_style, choices, endpoint)
    return facts if concluded else None


def _parse_backwards(
    data: bytes, api_style: str, choices: int, endpoint: str
) -> tuple[BodyFacts, bool]:
    """The facts of ``parse_stream``, and whether the parse stopped before the first event."""
    facts = BodyFacts()
    native = api_style == "dashscope"
    per_index: dict[int, Usage] = {}
    finished: dict[int, bool] = {}
    concluded = False
    for sse in _events_backwards(data):
        if sse.data.startswith(b"[DONE]"):
            facts.done = True
            continue
        body = load_json(sse.data)
        if not isinstance(body, dict):
            continue
        step = facts_of(body, endpoint)
        facts.request_id = facts.request_id or step.request_id
        facts.response_id = facts.response_id or step.response_id
        facts.model = facts.model or step.model
        if sse.event == "error" or step.error_code:
            if not facts.error_code and not per_index and facts.usage is None:
                facts.error_code = step.error_code or "stream_error"
                facts.error_status = sse.status
            continue
        if not native:
            if step.usage is not None:
                facts.usage = step.usage
                concluded = True
                break
            continue
        index, final = _native_choice(body)
        finished.setdefault(index, final)
        if step.usage is not None and index not in per_index:
            per_index[index] = step.usage
            if len(per_index) >= max(choices, 1):
                concluded = True
                break
    if native:
        if per_index:
            facts.usage = (
                per_index[next(iter(per_index))]
                if len(per_index) == 1
                else combine_choices(per_index)
            )
        facts.done = bool(finished) and all(finished.values()) and len(finished) >= max(choices, 1)
    return facts, concluded


def _native_choice(body: dict[str, Any]) -> tuple[int, bool]:
    """(choice index, finished) of a native stream event; index 0 when not given."""
    output = _dict(body.get("output"))
    found = output.get("choices")
    if isinstance(found, list) and found and isinstance(found[0], dict):
        choice = found[0]
        index = _count(choice.get("index")) or 0
        reason = choice.get("finish_reason")
    else:
        index, reason = 0, output.get("finish_reason")
    return index, isinstance(reason, str) and reason not in ("", "null")


# -- estimates ---------------------------------------------------------------------------------

# Model Studio's rule of thumb for Qwen tokenizers: one English (ASCII) character is about 0.3
# tokens and one Chinese (non-ASCII) character about 0.6 tokens. Used only when a call's usage
# never arrived (a broken or abandoned stream); such events say usage_source = "estimated".
TOKENS_PER_ASCII_CHAR = (3, 10)
TOKENS_PER_OTHER_CHAR = (6, 10)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of a text: ceil(0.3 × ASCII characters + 0.6 × other characters)."""
    if not text:
        return 0
    ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    numerator = (
        ascii_chars * TOKENS_PER_ASCII_CHAR[0] * TOKENS_PER_OTHER_CHAR[1]
        + other * TOKENS_PER_OTHER_CHAR[0] * TOKENS_PER_ASCII_CHAR[1]
    )
    denominator = TOKENS_PER_ASCII_CHAR[1] * TOKENS_PER_OTHER_CHAR[1]
    return -(-numerator // denominator)


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or the ``text`` parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part.get("text")) for part in content if isinstance(part, dict))
    return ""


def request_text(request: Any) -> str:
    """The prompt text of a request body of either style (messages, prompt, embedding input)."""
    if not isinstance(request, dict):
        return ""
    native_input = _dict(request.get("input"))
    messages = request.get("messages") or native_input.get("messages")
    parts: list[str] = []
    if isinstance(messages, list):
        parts.extend(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    parts.append(_text(native_input.get("prompt")))
    for texts in (request.get("input"), native_input.get("texts")):
        if isinstance(texts, str):
            parts.append(texts)
        elif isinstance(texts, list):
            parts.extend(_text(t) for t in texts)
    return "".join(parts)


@dataclasses.dataclass(slots=True)
class StreamText:
    """Text received in a stream, per choice index: answer and reasoning, for estimates."""

    content: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    reasoning: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    cumulative: bool = False  # native incremental_output=false: each event repeats all text

    def feed(self, data: bytes, api_style: str) -> None:
        """Collect the text of every complete data event in ``data``."""
        for sse in iter_events(data):
            body = load_json(sse.data) if may_be_object(sse.data) else None
            if not isinstance(body, dict):
                continue
            if api_style == "dashscope":
                self._native(body)
            else:
                self._compatible(body)

    def _add(self, index: int, content: str, reasoning: str) -> None:
        if self.cumulative:
            self.content[index] = [content]
            self.reasoning[index] = [reasoning]
            return
        self.content.setdefault(index, []).append(content)
        self.reasoning.setdefault(index, []).append(reasoning)

    def _compatible(self, body: dict[str, Any]) -> None:
        choices = body.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                delta = _dict(choice.get("delta"))
                index = _count(choice.get("index")) or 0
                self._add(
                    index,
                    _content_text(delta.get("content")),
                    _text(delta.get("reasoning_content")),
                )

    def _native(self, body: dict[str, Any]) -> None:
        output = _dict(body.get("output"))
        choices = output.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    message = _dict(choice.get("message"))
                    index = _count(choice.get("index")) or 0
                    self._add(
                        index,
                        _content_text(message.get("content")),
                        _text(message.get("reasoning_content")),
                    )
        elif isinstance(output.get("text"), str):
            self._add(0, output["text"], "")

    def estimate(self, input_tokens: int) -> Usage:
        """Estimated usage: output from the text received, reasoning a subset of it."""
        reasoning = sum(estimate_tokens("".join(t)) for t in self.reasoning.values())
        answer = sum(estimate_tokens("".join(t)) for t in self.content.values())
        return Usage(
            input_tokens=input_tokens,
            output_tokens=answer + reasoning,
            reasoning_tokens=reasoning,
        ).consistent()
