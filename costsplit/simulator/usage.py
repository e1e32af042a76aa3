"""The simulator's usage model: token counts as a pure function of the request.

Tests call `usage_for(body, api_style, endpoint, region=..., cache_hit=...)` to know the exact
usage the simulator will report. The rules (all constants below):

* text tokens = ceil(characters / 4) per text; each chat message adds 4 tokens of overhead and
  each chat request 3 more. An image part counts 1,024 tokens, a video part 2,048, an audio
  part 256 (all inside input tokens; the text share is input minus media).
* embeddings: the sum of ceil(characters / 4) over the texts, no overhead.
* answer tokens per choice = 16 + (seed + index) % 48 (``answer_tokens``, a config knob: the
  lowest and highest count, 16 and 63 by default), capped by ``max_tokens`` (finish reason
  ``length`` when capped, else ``stop``). The seed is the request's ``seed`` parameter, else the
  CRC-32 of the messages' JSON. Thinking (``enable_thinking``, or a ``*thinking*``/``qwq`` model)
  adds reasoning tokens = 24 + (seed + index) % 40, capped by ``thinking_budget``; reasoning is
  part of output tokens.
* implicit cache: on a cache-capable model requested by its canonical name (snapshots and
  aliases do not cache), when this server saw the same model with the same prefix (every message
  but the last) before, ``cached_tokens`` = the prefix tokens rounded down to a multiple of 256,
  if that is at least 256 (``cache_block``, a config knob).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from costsplit.simulator.config import ANSWER_TOKENS, ModelInfo, region_models
from costsplit.simulator.content import ANSWER_WORDS, REASONING_WORDS, pieces, stable_hash
from costsplit.simulator.envelopes import invalid_parameter

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 3
MEDIA_TOKENS = {"image": 1024, "video": 2048, "audio": 256}
REASONING_BASE, REASONING_SPREAD = 24, 40
CACHE_BLOCK = 256

ENDPOINTS = {
    "compatible": ("chat", "embeddings"),
    "native": ("text-generation", "multimodal-generation", "text-embedding"),
}


@dataclass(frozen=True)
class ChoicePlan:
    """What one choice says: reasoning and answer pieces (one token each) and why it stopped."""

    reasoning: tuple[str, ...]
    answer: tuple[str, ...]
    finish_reason: str

    @property
    def output_tokens(self) -> int:
        return len(self.reasoning) + len(self.answer)


@dataclass(frozen=True)
class Plan:
    """Everything the simulator will answer for one request, before any formatting."""

    model: str
    info: ModelInfo | None
    input_tokens: int
    media_tokens: dict[str, int]
    prefix_tokens: int
    cache_key: str | None
    cached_tokens: int
    thinking: bool
    choices: tuple[ChoicePlan, ...]

    @property
    def text_tokens(self) -> int:
        return self.input_tokens - sum(self.media_tokens.values())


def text_tokens(text: str) -> int:
    """Tokens of one text: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _message_tokens(message: Any) -> tuple[int, dict[str, int]]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise invalid_parameter("Each message needs a role and a content.")
    content = message.get("content")
    media = {"image": 0, "video": 0, "audio": 0}
    if content is None or isinstance(content, str):
        return MESSAGE_OVERHEAD + text_tokens(content or ""), media
    if not isinstance(content, list):
        raise invalid_parameter("Message content must be a string or a list.")
    tokens = MESSAGE_OVERHEAD
    for part in content:
        if not isinstance(part, dict):
            raise invalid_parameter("Content parts must be objects.")
        if isinstance(part.get("text"), str):
            tokens += text_tokens(part["text"])
        for kind in media:
            # native {"image": url}, compatible {"type": "image_url", "image_url": {...}}
            if kind in part or part.get("type") in (f"{kind}_url", kind, f"input_{kind}"):
                media[kind] += MEDIA_TOKENS[kind]
    return tokens + sum(media.values()), media


def _messages(body: dict[str, Any], api_style: str) -> list[Any]:
    if api_style == "compatible":
        messages = body.get("messages")
    else:
        payload = body.get("input")
        if not isinstance(payload, dict):
            raise invalid_parameter('Field required: "input" must be an object.')
        messages = payload.get("messages")
        if messages is None and isinstance(payload.get("prompt"), str):
            messages = [{"role": "user", "content": payload["prompt"]}]
    if not isinstance(messages, list) or not messages:
        raise invalid_parameter("Field required: messages must be a non-empty list.")
    return messages


def _params(body: dict[str, Any], api_style: str) -> dict[str, Any]:
    if api_style == "compatible":
        return body
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid_parameter('"parameters" must be an object.')
    return params


def _int_param(
    params: dict[str, Any], name: str, default: int | None, minimum: int = 1
) -> int | None:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise invalid_parameter(f"Parameter {name} must be an integer of at least {minimum}.")
    return value


def embedding_texts(body: dict[str, Any], api_style: str) -> list[str]:
    """The texts of an embeddings request, validated."""
    texts = body.get("input") if api_style == "compatible" else (body.get("input") or {})
    if api_style == "native":
        texts = texts.get("texts") if isinstance(texts, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise invalid_parameter("Input texts must be a string or a non-empty list of strings.")
    if len(texts) > 10:
        raise invalid_parameter(
            "Value error, batch size is invalid, it should not be larger than 10."
        )
    return texts


def plan_request(
    body: dict[str, Any],
    api_style: str,
    endpoint: str,
    *,
    region: str,
    cache_hit: bool = False,
    cache_block: int = CACHE_BLOCK,
    answer_tokens: tuple[int, int] = ANSWER_TOKENS,
) -> Plan:
    """The plan for a chat or generation request (raises SimulatedError 400 when malformed)."""
    if endpoint not in ENDPOINTS.get(api_style, ()):
        raise ValueError(f"unknown endpoint {api_style}/{endpoint}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_parameter("Model not specified.")
    info = region_models(region).get(model)
    messages = _messages(body, api_style)
    params = _params(body, api_style)
    per_message = [_message_tokens(m) for m in messages]
    media = {k: sum(m[1][k] for m in per_message) for k in MEDIA_TOKENS}
    input_tokens = REQUEST_OVERHEAD + sum(t for t, _ in per_message)
    prefix_tokens = sum(t for t, _ in per_message[:-1])
    caches = info is not None and info.implicit_cache and info.name == model
    cache_key = None
    if caches and prefix_tokens >= cache_block:
        cache_key = f"{model}:{stable_hash(json.dumps(messages[:-1], sort_keys=True))}"
    cached = (prefix_tokens // cache_block) * cache_block if cache_key and cache_hit else 0

    seed = _int_param(params, "seed", None, minimum=0)
    if seed is None:
        seed = stable_hash(json.dumps(messages, sort_keys=True))
    max_tokens = _int_param(params, "max_tokens", None) or _int_param(
        params, "max_completion_tokens", None
    )
    budget = _int_param(params, "thinking_budget", None)
    n = _int_param(params, "n", 1) or 1
    thinking = bool(params.get("enable_thinking")) or "thinking" in model or model.startswith("qwq")
    fewest, most = answer_tokens
    choices = []
    for index in range(n):
        s = seed + index
        answer = fewest + s % (most - fewest + 1)
        finish = "stop"
        if max_tokens is not None and answer > max_tokens:
            answer, finish = max_tokens, "length"
        reasoning = REASONING_BASE + s % REASONING_SPREAD if thinking else 0
        if budget is not None:
            reasoning = min(reasoning, budget)
        choices.append(
            ChoicePlan(
                pieces(REASONING_WORDS, reasoning, s), pieces(ANSWER_WORDS, answer, s), finish
            )
        )
    return Plan(model, info, input_tokens, media, prefix_tokens, cache_key, cached, thinking,
                tuple(choices))  # fmt: skip


def wire_usage(
    plan: Plan,
    api_style: str,
    endpoint: str,
    region: str,
    outputs: list[tuple[int, int]] | None = None,
    *,
    stream: bool = False,
) -> dict[str, Any]:
    """The usage object as the wire carries it, for `outputs` = [(reasoning, answer)] so far."""
    if outputs is None:
        outputs = [(len(c.reasoning), len(c.answer)) for c in plan.choices]
    reasoning = sum(r for r, _ in outputs)
    output = reasoning + sum(a for _, a in outputs)
    inp, cached = plan.input_tokens, plan.cached_tokens
    caches = plan.info is not None and plan.info.implicit_cache and plan.info.name == plan.model
    media = {f"{k}_tokens": v for k, v in plan.media_tokens.items() if v}
    vision = plan.info is not None and plan.info.kind in ("vision", "omni")
    if api_style == "compatible":
        usage: dict[str, Any] = {
            "prompt_tokens": inp,
            "completion_tokens": output,
            "total_tokens": inp + output,
        }
        details: dict[str, Any] = {}
        if vision:
            details = {"text_tokens": plan.text_tokens, **media}
        if caches:
            details["cached_tokens"] = cached
        if details:
            usage["prompt_tokens_details"] = details
        out_details: dict[str, Any] = {"text_tokens": output - reasoning} if vision else {}
        if plan.thinking:
            out_details["reasoning_tokens"] = reasoning
        if out_details:
            usage["completion_tokens_details"] = out_details
        return usage
    if endpoint == "multimodal-generation":
        return _native_multimodal_usage(plan, region, inp, output, reasoning, cached, caches, media)
    usage = {"input_tokens": inp, "output_tokens": output, "total_tokens": inp + output}
    if plan.thinking:
        usage["output_tokens_details"] = {"reasoning_tokens": reasoning}
    if caches and (cached or not stream):
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _native_multimodal_usage(plan, region, inp, output, reasoning, cached, caches, media):
    """Singapore: totals, details, top-level media and cached counts; Beijing: no total."""
    if region == "cn-beijing":
        usage: dict[str, Any] = {"input_tokens": inp, "output_tokens": output, **media}
        if plan.thinking:
            usage["output_tokens_details"] = {"reasoning_tokens": reasoning}
        if caches and cached:
            if plan.model.startswith("qwen-vl"):
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            else:
                usage["cached_tokens"] = cached
        return usage
    out_details: dict[str, Any] = {"text_tokens": output - reasoning}
    if plan.thinking:
        out_details["reasoning_tokens"] = reasoning
    usage = {
        "input_tokens": inp,
        "output_tokens": output,
        "total_tokens": inp + output,
        "input_tokens_details": {"text_tokens": plan.text_tokens, **media},
        "output_tokens_details": out_details,
        **media,
    }
    if caches:
        usage["cached_tokens"] = cached
    return usage


def embedding_usage(body: dict[str, Any], api_style: str) -> dict[str, Any]:
    """Compatible ``{"prompt_tokens": T, "total_tokens": T}``; native ``{"total_tokens": T}``."""
    total = sum(text_tokens(t) for t in embedding_texts(body, api_style))
    if api_style == "compatible":
        return {"prompt_tokens": total, "total_tokens": total}
    return {"total_tokens": total}


def usage_for(
    body: dict[str, Any],
    api_style: str,
    endpoint: str,
    *,
    region: str = "ap-southeast-1",
    cache_hit: bool = False,
    cache_block: int = CACHE_BLOCK,
    answer_tokens: tuple[int, int] = ANSWER_TOKENS,
) -> dict[str, Any]:
    """The exact final usage the simulator reports for this request (non-streaming shape).

    `api_style` is ``"compatible"`` (endpoints ``"chat"``, ``"embeddings"``) or ``"native"``
    (``"text-generation"``, ``"multimodal-generation"``, ``"text-embedding"``). `cache_hit`
    says whether the server has seen this request's prefix before (see the module docstring).
    """
    if endpoint in ("embeddings", "text-embedding"):
        return embedding_usage(body, api_style)
    plan = plan_request(
        body,
        api_style,
        endpoint,
        region=region,
        cache_hit=cache_hit,
        cache_block=cache_block,
        answer_tokens=answer_tokens,
    )
    return wire_usage(plan, api_style, endpoint, region)
