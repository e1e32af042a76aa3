"""OpenAI-compatible answers (``/compatible-mode/v1``): chat completions, chunks, embeddings.

Shapes follow reference §2: ``chatcmpl-<uuid>`` ids, a sparse usage object, stream usage only
with ``stream_options.include_usage`` (then every chunk has ``"usage": null`` and one extra
chunk with ``"choices": []`` carries the usage), and ``data: [DONE]`` at the end.
"""

from __future__ import annotations

from typing import Any

import orjson

from costsplit.simulator.content import embedding_base64, embedding_vector
from costsplit.simulator.envelopes import internal_error, invalid_parameter
from costsplit.simulator.usage import Plan, embedding_texts, embedding_usage, wire_usage

CHUNK_TOKENS = 4


def chat_body(plan: Plan, request_id: str, created: int, region: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion``."""
    choices = []
    for index, choice in enumerate(plan.choices):
        message: dict[str, Any] = {"role": "assistant"}
        if plan.thinking:
            message["reasoning_content"] = "".join(choice.reasoning)
        message["content"] = "".join(choice.answer)
        choices.append(
            {
                "index": index,
                "finish_reason": choice.finish_reason,
                "logprobs": None,
                "message": message,
            }
        )
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": wire_usage(plan, "compatible", "chat", region),
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_events(
    plan: Plan,
    body: dict[str, Any],
    request_id: str,
    created: int,
    region: str,
    *,
    stream_error_after: int | None = None,
) -> list[bytes]:
    """The SSE events of a streamed chat completion, ``data: [DONE]`` included."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid_parameter("stream_options must be an object.")
    include_usage = bool(options.get("include_usage"))

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload: dict[str, Any] = {"choices": choices, "object": "chat.completion.chunk"}
        if include_usage:
            payload["usage"] = usage
        payload.update(
            created=created,
            system_fingerprint=None,
            model=plan.model,
            id=f"chatcmpl-{request_id}",
        )
        return _sse(payload)

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"delta": delta, "finish_reason": finish, "index": index, "logprobs": None}

    events = []
    for index, planned in enumerate(plan.choices):
        first: dict[str, Any] = {"content": "", "role": "assistant"}
        if plan.thinking:
            first = {"content": None, "reasoning_content": "", "role": "assistant"}
        events.append(chunk([choice(index, first)]))
        for start in range(0, len(planned.reasoning), CHUNK_TOKENS):
            text = "".join(planned.reasoning[start : start + CHUNK_TOKENS])
            events.append(chunk([choice(index, {"content": None, "reasoning_content": text})]))
        for start in range(0, len(planned.answer), CHUNK_TOKENS):
            text = "".join(planned.answer[start : start + CHUNK_TOKENS])
            delta: dict[str, Any] = {"content": text}
            if plan.thinking:
                delta["reasoning_content"] = None
            events.append(chunk([choice(index, delta)]))
        events.append(chunk([choice(index, {"content": ""}, planned.finish_reason)]))
    if include_usage:
        events.append(chunk([], wire_usage(plan, "compatible", "chat", region)))
    if stream_error_after is not None:
        error = internal_error().compatible_body(request_id, chat=True)
        return [*events[:stream_error_after], _sse(error)]
    return [*events, b"data: [DONE]\n\n"]


def embeddings_body(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A compatible ``list`` of embeddings; ``id`` is a bare uuid (no ``chatcmpl-``)."""
    texts = embedding_texts(body, "compatible")
    dimension = body.get("dimensions", 1024)
    if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
        raise invalid_parameter("dimensions must be a positive integer.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid_parameter("encoding_format must be float or base64.")
    data = []
    for index, text in enumerate(texts):
        vector: Any = embedding_vector(text, dimension)
        if encoding == "base64":
            vector = embedding_base64(vector)
        data.append({"embedding": vector, "index": index, "object": "embedding"})
    return {
        "data": data,
        "model": body["model"],
        "object": "list",
        "usage": embedding_usage(body, "compatible"),
        "id": request_id,
    }
