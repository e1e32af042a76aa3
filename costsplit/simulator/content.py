"""The words and vectors the simulator answers with: deterministic, meaningless, cheap.

Each output token is one word (with its leading space after the first), so a stream chunk of k
tokens carries k words and the reported usage matches what was sent.
"""

from __future__ import annotations

import base64
import random
import struct
import zlib

ANSWER_WORDS = (
    "Spend",
    "by",
    "workspace",
    "stays",
    "within",
    "the",
    "monthly",
    "budget",
    "while",
    "tokens",
    "grow",
    "with",
    "traffic",
    "and",
    "cached",
    "prefixes",
    "keep",
    "input",
    "costs",
    "low",
    "for",
    "every",
    "scenario",
    "finance",
    "reviews",
    "each",
    "week",
)
REASONING_WORDS = (
    "The",
    "user",
    "asks",
    "about",
    "cost",
    "so",
    "I",
    "should",
    "check",
    "usage",
    "per",
    "model",
    "and",
    "workspace",
    "then",
    "compare",
    "list",
    "prices",
    "with",
    "the",
    "bill",
    "before",
    "answering",
    "briefly",
)


def pieces(words: tuple[str, ...] | list[str], count: int, start: int) -> tuple[str, ...]:
    """`count` token pieces cycling through `words` from `start`; joined they read as text."""
    out = []
    for i in range(count):
        word = words[(start + i) % len(words)]
        out.append(word if i == 0 else " " + word)
    return tuple(out)


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's ``hash`` of str is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def embedding_vector(text: str, dimension: int) -> list[float]:
    """A unit-length vector that depends only on the text and the dimension."""
    rng = random.Random(stable_hash(text) * 1_000_003 + dimension)
    vector = [rng.uniform(-1.0, 1.0) for _ in range(dimension)]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


def embedding_base64(vector: list[float]) -> str:
    """The OpenAI ``encoding_format: base64`` form: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
