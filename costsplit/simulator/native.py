"""DashScope native answers (``/api/v1/services/...``): generation, SSE events, embeddings.

Shapes follow reference §3: no ``model``/``id``/``created``; ``request_id`` in the body; SSE
events framed exactly as captured::

    id:1
    event:result
    :HTTP_STATUS/200
    data:{...}

with cumulative usage, the string ``"null"`` as the finish reason until the last event, and,
with ``n > 1``, one choice (and that choice's usage) per event. ``result_format`` is ``text``
by default (``message`` when thinking, which requires it); the multimodal endpoint always
answers in message form with a list of content parts.
"""

from __future__ import annotations

from typing import Any

import orjson

from costsplit.simulator.content import embedding_vector
from costsplit.simulator.envelopes import SimulatedError, internal_error, invalid_parameter
from costsplit.simulator.usage import Plan, embedding_texts, embedding_usage, wire_usage

CHUNK_TOKENS = 4


def _options(plan: Plan, body: dict[str, Any], endpoint: str, stream: bool) -> tuple[str, bool]:
    """(result_format, incremental_output) after validation."""
    params = body.get("parameters") or {}
    default = "message" if plan.thinking or endpoint == "multimodal-generation" else "text"
    result_format = params.get("result_format", default)
    if result_format not in ("text", "message"):
        raise invalid_parameter('result_format must be "text" or "message".')
    if endpoint == "multimodal-generation":
        result_format = "message"
    if result_format == "text" and plan.thinking:
        raise invalid_parameter('result_format must be "message" when enable_thinking is true.')
    if result_format == "text" and len(plan.choices) > 1:
        raise invalid_parameter('n > 1 requires result_format "message".')
    incremental = params.get("incremental_output", False)
    if not isinstance(incremental, bool):
        raise invalid_parameter("incremental_output must be a boolean.")
    if stream and plan.thinking and not incremental:
        raise invalid_parameter("incremental_output must be true when enable_thinking is true.")
    return result_format, incremental


def _message(plan: Plan, endpoint: str, reasoning: str, answer: str) -> dict[str, Any]:
    content: Any = [{"text": answer}] if endpoint == "multimodal-generation" else answer
    if plan.thinking:
        return {"content": content, "reasoning_content": reasoning, "role": "assistant"}
    return {"role": "assistant", "content": content}


def _output(
    plan: Plan, endpoint: str, fmt: str, index: int | None, reasoning: str, answer: str, finish: str
) -> dict[str, Any]:
    if fmt == "text":
        return {"finish_reason": finish, "text": answer}
    choice: dict[str, Any] = {"finish_reason": finish}
    if index is not None:
        choice["index"] = index
    choice["message"] = _message(plan, endpoint, reasoning, answer)
    return {"choices": [choice]}


def generation_body(
    plan: Plan, body: dict[str, Any], endpoint: str, request_id: str, region: str
) -> dict[str, Any]:
    """A non-streaming text or multimodal generation answer."""
    fmt, _ = _options(plan, body, endpoint, stream=False)
    if fmt == "text":
        first = plan.choices[0]
        output: dict[str, Any] = {
            "finish_reason": first.finish_reason,
            "text": "".join(first.answer),
        }
    else:
        choices = []
        for index, choice in enumerate(plan.choices):
            entry: dict[str, Any] = {"finish_reason": choice.finish_reason}
            if len(plan.choices) > 1:
                entry["index"] = index
            entry["message"] = _message(
                plan, endpoint, "".join(choice.reasoning), "".join(choice.answer)
            )
            choices.append(entry)
        output = {"choices": choices}
    usage = wire_usage(plan, "native", endpoint, region)
    return {"output": output, "usage": usage, "request_id": request_id}


def sse_event(number: int, payload: dict[str, Any], *, event: str = "result", status: int = 200):
    """One native SSE event, framed as captured (no space after the colons)."""
    head = f"id:{number}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:".encode()
    return head + orjson.dumps(payload) + b"\n\n"


def error_events(error: SimulatedError, request_id: str, number: int = 1) -> list[bytes]:
    """An ``event:error`` as sent inside an HTTP 200 stream."""
    return [sse_event(number, error.native_body(request_id), event="error", status=error.status)]


def generation_events(
    plan: Plan,
    body: dict[str, Any],
    endpoint: str,
    request_id: str,
    region: str,
    *,
    stream_error_after: int | None = None,
) -> list[bytes]:
    """The SSE events of a streamed generation; usage in each event is cumulative."""
    fmt, incremental = _options(plan, body, endpoint, stream=True)
    many = len(plan.choices) > 1
    events: list[bytes] = []

    def emit(index: int, reasoning: str, answer: str, finish: str, done: tuple[int, int]):
        # with n > 1 each event carries the usage of its own choice only
        usage = wire_usage(plan, "native", endpoint, region, [done], stream=True)
        output = _output(plan, endpoint, fmt, index if many else None, reasoning, answer, finish)
        payload = {"output": output, "usage": usage, "request_id": request_id}
        events.append(sse_event(len(events) + 1, payload))

    for index, choice in enumerate(plan.choices):
        steps = [("r", i) for i in range(0, len(choice.reasoning), CHUNK_TOKENS)]
        steps += [("a", i) for i in range(0, len(choice.answer), CHUNK_TOKENS)]
        r_done = a_done = 0
        for kind, start in steps:
            if kind == "r":
                r_done = min(start + CHUNK_TOKENS, len(choice.reasoning))
                new_r, new_a = "".join(choice.reasoning[start:r_done]), ""
            else:
                a_done = min(start + CHUNK_TOKENS, len(choice.answer))
                new_r, new_a = "", "".join(choice.answer[start:a_done])
            if not incremental:
                new_r, new_a = "".join(choice.reasoning[:r_done]), "".join(choice.answer[:a_done])
            emit(index, new_r, new_a, "null", (r_done, a_done))
        last_r = "" if incremental else "".join(choice.reasoning)
        last_a = "" if incremental else "".join(choice.answer)
        emit(index, last_r, last_a, choice.finish_reason, (r_done, a_done))
    if stream_error_after is not None:
        kept = events[:stream_error_after]
        return kept + error_events(internal_error(), request_id, len(kept) + 1)
    return events


def embedding_body(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A native text-embedding answer: ``text_index`` per vector, usage ``total_tokens`` only."""
    texts = embedding_texts(body, "native")
    params = body.get("parameters") or {}
    dimension = params.get("dimension", 1024) if isinstance(params, dict) else 1024
    if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
        raise invalid_parameter("dimension must be a positive integer.")
    embeddings = [
        {"embedding": embedding_vector(text, dimension), "text_index": index}
        for index, text in enumerate(texts)
    ]
    return {
        "output": {"embeddings": embeddings},
        "usage": embedding_usage(body, "native"),
        "request_id": request_id,
    }
