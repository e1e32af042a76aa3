"""The demo's month of traffic: who calls what, how, and when.

``plan_calls(month, calls, timezone)`` returns a deterministic list of ``Call`` specs spread
over a calendar month in the reporting timezone (more on weekdays and in working hours, growing
through the month; nightly jobs between midnight and 06:00): four workspaces over Singapore and
Beijing plus a key mapped to none, twelve scenarios, ten models, both API styles, streams and
not, thinking, images, embeddings, some calls with no scenario, calls refused by model grants
(locally, and upstream with a 403), rate-limited and failing calls, and streams cut short.

The sizes are those of real workloads, because the simulator counts tokens from text
(≈ 4 characters a token) and prices follow the tokens: support bots send a 2k-token system
prompt plus 1k–6k tokens of retrieved articles, analysis jobs send documents of 6k–100k
tokens (qwen3-max above its 32K tier bound, qwen-plus in Beijing above 128K), vision evals send
up to 48 frames (qwen3-vl-plus above 32K). Prompts repeat their prefix (the same system prompt
and retrieved context, or several questions about one document), so the simulator reports
implicit cache hits. Every long text is built once per plan and shared by the calls that send
it, so a month of 20,000 calls holds a few tens of megabytes of text, not gigabytes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson

SG, CN = "ap-southeast-1", "cn-beijing"

# (config id, name, region, cost centre, key, granted models for enforce_grants or ())
WORKSPACES = (
    (
        "ws-support-sg",
        "Customer support (SG)",
        SG,
        "CC-1100 Support",
        "sk-sim-support-intl",
        ("qwen-plus", "qwen-flash", "text-embedding-v4"),
    ),
    (
        "ws-research-sg",
        "Research (SG)",
        SG,
        "CC-2100 R&D",
        "sk-sim-research-intl",
        ("qwen3-max", "qwen-plus", "qwen-vl-max", "qwen3-vl-plus"),
    ),
    (
        "ws-support-cn",
        "客服 Customer care (Beijing)",
        CN,
        "CC-1200 Support CN",
        "sk-sim-support-cn",
        (),
    ),
    ("ws-analytics-cn", "Analytics (Beijing)", CN, "CC-3100 BI", "sk-sim-default-cn", ()),
)
UNMAPPED_KEY = "sk-sim-default-intl"  # a key nobody put in the settings: its spend is unattributed

# (scenario, workspace id, owners, monthly budget in the workspace's currency, or None)
SCENARIOS = (
    ("chatbot", "ws-support-sg", ("support-eng@example.com",), "4"),
    ("ticket-triage", "ws-support-sg", ("support-eng@example.com",), None),
    ("kb-embeddings", "ws-support-sg", ("search-eng@example.com",), None),
    ("paper-summaries", "ws-research-sg", ("research-eng@example.com",), "120"),
    ("image-captions", "ws-research-sg", ("vision-eng@example.com",), None),
    ("eval-runs", "ws-research-sg", ("research-eng@example.com",), None),
    ("cn-chatbot", "ws-support-cn", ("cn-eng@example.com",), "3"),
    ("cn-faq", "ws-support-cn", ("cn-eng@example.com",), None),
    ("report-drafts", "ws-analytics-cn", ("bi@example.com",), "60"),
    ("log-insights", "ws-analytics-cn", ("bi@example.com", "sre-cn@example.com"), None),
    ("translation", "ws-analytics-cn", ("bi@example.com",), None),
)

COMPATIBLE_CHAT = "/compatible-mode/v1/chat/completions"
COMPATIBLE_EMBED = "/compatible-mode/v1/embeddings"
NATIVE_TEXT = "/api/v1/services/aigc/text-generation/generation"
NATIVE_VL = "/api/v1/services/aigc/multimodal-generation/generation"

KEY = {w[0]: w[4] for w in WORKSPACES}
CHARS_PER_TOKEN = 4  # the simulator's rule (costsplit.simulator.usage)

_WORDS = [
    "latency",
    "throughput",
    "customer",
    "order",
    "refund",
    "policy",
    "shipping",
    "warehouse",
    "invoice",
    "region",
    "model",
    "cluster",
    "quarterly",
    "revenue",
    "margin",
    "forecast",
    "variance",
    "baseline",
    "cohort",
    "retention",
    "churn",
    "account",
    "ticket",
    "escalation",
    "agent",
    "knowledge",
    "article",
    "section",
    "table",
    "figure",
    "result",
    "method",
    "dataset",
    "error",
    "budget",
    "contract",
    "clause",
    "renewal",
    "vendor",
    "compliance",
    "audit",
    "metric",
    "dashboard",
    "pipeline",
    "deploy",
]
_HANZI = (
    "订单物流退款发票客户服务质量会员积分仓库配送售后政策规则数据报表指标同比环比预算合同日志告警"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    at: float  # unix seconds: started_at of the recorded event
    region: str
    key: str
    scenario: str | None
    path: str  # under the simulator's base URL
    body: dict  # long texts in it are ``Text`` placeholders: send ``payload()``
    stream: bool
    fault: str = ""  # X-Simulator-Fault
    texts: Texts | None = None

    def payload(self) -> bytes:
        """The request body as JSON, long texts filled in."""
        return orjson.dumps(self.body, default=self.texts.render if self.texts else None)


class Text:
    """A placeholder for a long text of the plan: (kind, index) names it, ``tokens`` sizes it;
    several parts make one text joined by blank lines."""

    __slots__ = ("parts",)

    def __init__(self, *parts: tuple[str, int, int, bool]):
        self.parts = parts


def text(kind: str, index: int, tokens: int, chinese: bool = False) -> Text:
    return Text((kind, index, tokens, chinese))


def joined(*texts: Text) -> Text:
    return Text(*(part for t in texts for part in t.parts))


class Texts:
    """Renders ``Text`` placeholders, keeping the most used strings (the shared system prompts
    and retrieved articles) instead of building them again for every call."""

    def __init__(self, seed: int, cached: int = 512):
        rng = random.Random(seed)
        self.english = " ".join(rng.choice(_WORDS) for _ in range(4000)) + ". "
        self.chinese = "".join(rng.choice(_HANZI) for _ in range(6000)) + "。"
        self._part = functools.lru_cache(maxsize=cached)(self._build)

    def render(self, obj: object) -> str:
        if not isinstance(obj, Text):
            raise TypeError(f"cannot serialise {type(obj).__name__}")
        return "\n\n".join(self._part(*part) for part in obj.parts)

    def _build(self, kind: str, index: int, tokens: int, chinese: bool) -> str:
        base = self.chinese if chinese else self.english
        head = f"[{kind} {index}]\n"
        size = tokens * CHARS_PER_TOKEN - len(head)
        offset = (index * 7919) % len(base)
        rotated = base[offset:] + base[:offset]
        return head + (rotated * (size // len(base) + 1))[:size]


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _sized(rng: random.Random, pool: int, low: int, high: int, seed: int) -> tuple[int, int]:
    """A document of a pool: (index, tokens), its size fixed by its index."""
    index = rng.randrange(pool)
    return index, _log_uniform(random.Random(seed * 100_003 + index), low, high)


def _chat(model: str, messages: list, *, stream=False, thinking=False, max_tokens=None) -> dict:
    body: dict = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
    if thinking:
        body["enable_thinking"] = True
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


def _native(model: str, messages: list, *, thinking=False, stream=False, max_tokens=None) -> dict:
    parameters: dict = {"result_format": "message"}
    if thinking:
        parameters["enable_thinking"] = True
    if stream:
        parameters["incremental_output"] = True
    if max_tokens:
        parameters["max_tokens"] = max_tokens
    return {"model": model, "input": {"messages": messages}, "parameters": parameters}


def _sys(text: str) -> dict:
    return {"role": "system", "content": text}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _question(rng: random.Random, n: int) -> str:
    return f"Question {n}: " + " ".join(rng.choices(_WORDS, k=rng.randint(12, 60))) + "?"


# Each generator returns (Call without a time, nightly job?)
Generator = Callable[[random.Random, int], tuple[Call, bool]]


def _chatbot(rng, n):
    system = joined(
        text("support policy", 0, 2000),
        text("kb article", *_sized(rng, 400, 1000, 6000, 4)),
    )
    stream, thinking = rng.random() < 0.7, rng.random() < 0.2
    model = "qwen3-max" if rng.random() < 0.01 else "qwen-plus"  # qwen3-max: denied locally
    messages = [_sys(system), _user(_question(rng, n))]
    body = _chat(model, messages, stream=stream, thinking=thinking, max_tokens=1024)
    return Call(0, SG, KEY["ws-support-sg"], "chatbot", COMPATIBLE_CHAT, body, stream), False


def _triage(rng, n):
    scenario = None if rng.random() < 0.05 else "ticket-triage"  # a few callers forget it
    ticket = text("ticket", n, rng.randint(150, 900))
    messages = [_sys(text("triage rules", 0, 1200)), _user(ticket)]
    body = _chat("qwen-flash", messages, max_tokens=64)
    return Call(0, SG, KEY["ws-support-sg"], scenario, COMPATIBLE_CHAT, body, False), False


def _embeddings(rng, n):  # the nightly re-index: batches of 10 article chunks
    texts = [text("kb chunk", rng.randrange(2000), rng.randint(400, 1500)) for _ in range(10)]
    body = {"model": "text-embedding-v4", "input": texts, "dimensions": 256}
    return Call(0, SG, KEY["ws-support-sg"], "kb-embeddings", COMPATIBLE_EMBED, body, False), True


def _papers(rng, n):  # several questions per paper: the paper is a cached prefix
    index, tokens = _sized(rng, 1500, 8000, 100_000, 1)
    stream = rng.random() < 0.5
    messages = [
        _sys(text("analyst instructions", 0, 600)),
        _user(text("paper", index, tokens)),
        _user(_question(rng, n)),
    ]
    body = _native("qwen3-max", messages, stream=stream, thinking=rng.random() < 0.3)
    body["parameters"]["max_tokens"] = 4096
    return Call(0, SG, KEY["ws-research-sg"], "paper-summaries", NATIVE_TEXT, body, stream), False


def _captions(rng, n):
    images = [
        {"image": f"https://example.invalid/images/{n}-{i}.png"} for i in range(rng.randint(1, 4))
    ]
    content = [*images, {"text": "Write an alt text for each product photo."}]
    body = _native("qwen-vl-max", [_user(content)])
    return Call(0, SG, KEY["ws-research-sg"], "image-captions", NATIVE_VL, body, False), False


def _evals(rng, n):
    if rng.random() < 0.15:  # video-frame evals on a rate-limited model: some get 429
        frames = [
            {"type": "image_url", "image_url": {"url": f"https://example.invalid/f/{n}/{i}.jpg"}}
            for i in range(rng.randint(12, 48))  # 33 frames and more: above the 32K tier bound
        ]
        content = [*frames, {"type": "text", "text": "Grade the agent's actions in these frames."}]
        body = _chat("qwen3-vl-plus", [_user(content)], max_tokens=2048)
        return Call(0, SG, KEY["ws-research-sg"], "eval-runs", COMPATIBLE_CHAT, body, False), True
    answer = text("answer", n, rng.randint(500, 4000))
    messages = [_sys(text("grading rubric", 0, 3000)), _user(answer)]
    body = _chat("qwen-plus", messages, stream=True, thinking=True, max_tokens=8192)
    return Call(0, SG, KEY["ws-research-sg"], "eval-runs", COMPATIBLE_CHAT, body, True), True


def _cn_chatbot(rng, n):
    system = joined(
        text("客服规范", 0, 1500, True),
        text("知识库", *_sized(rng, 200, 800, 5000, 5), True),
    )
    stream = rng.random() < 0.8
    model = "qwen3-max" if rng.random() < 0.01 else "qwen-plus"  # not granted upstream: 403
    messages = [_sys(system), _user("请帮我查询订单状态。" + _question(rng, n))]
    body = _chat(model, messages, stream=stream, max_tokens=1024)
    return Call(0, CN, KEY["ws-support-cn"], "cn-chatbot", COMPATIBLE_CHAT, body, stream), False


def _cn_faq(rng, n):
    messages = [_sys(text("常见问题", 0, 800, True)), _user("常见问题: " + _question(rng, n))]
    body = _native("qwen-flash", messages, max_tokens=512)
    return Call(0, CN, KEY["ws-support-cn"], "cn-faq", NATIVE_TEXT, body, False), False


def _report_drafts(rng, n):  # qwen3-max on data extracts; many above the 32K tier bound
    index, tokens = _sized(rng, 1000, 6000, 90_000, 2)
    messages = [
        _sys(text("报表写作要求", 0, 1000, True)),
        _user(text("data extract", index, tokens)),
        _user("Draft the weekly business review from the extract above. " + _question(rng, n)),
    ]
    body = _chat("qwen3-max", messages, thinking=rng.random() < 0.4, max_tokens=8192)
    return Call(0, CN, KEY["ws-analytics-cn"], "report-drafts", COMPATIBLE_CHAT, body, False), False


def _log_insights(rng, n):  # nightly batch-like job: a day of logs, many above 128K
    index, tokens = _sized(rng, 40, 50_000, 200_000, 3)
    messages = [_sys(text("log analysis", 0, 500)), _user(text("service logs", index, tokens))]
    body = _native("qwen-plus", messages, max_tokens=4096)
    return Call(0, CN, KEY["ws-analytics-cn"], "log-insights", NATIVE_TEXT, body, False), True


def _translation(rng, n):
    doc = text("manual page", rng.randrange(3000), rng.randint(500, 4000), True)
    messages = [_sys("Translate the user's text to English."), _user(doc)]
    body = _native("qwen-turbo", messages, thinking=rng.random() < 0.3)
    return Call(0, CN, KEY["ws-analytics-cn"], "translation", NATIVE_TEXT, body, False), False


def _prototype(rng, n):  # someone's key that is in no workspace of the settings
    doc = text("draft", rng.randrange(50), rng.randint(2000, 20_000))
    body = _chat("qwen-plus", [_user(doc), _user(_question(rng, n))], max_tokens=2048)
    return Call(0, SG, UNMAPPED_KEY, "prototype", COMPATIBLE_CHAT, body, False), False


# (generator, share of calls)
MIX: tuple[tuple[Generator, float], ...] = (
    (_chatbot, 0.26),
    (_triage, 0.14),
    (_embeddings, 0.05),
    (_papers, 0.11),
    (_captions, 0.06),
    (_evals, 0.06),
    (_cn_chatbot, 0.13),
    (_cn_faq, 0.07),
    (_report_drafts, 0.05),
    (_log_insights, 0.01),
    (_translation, 0.035),
    (_prototype, 0.025),
)


def plan_calls(month: str, calls: int, timezone: str, *, seed: int = 20261) -> list[Call]:
    """``calls`` call specs over ``month`` (YYYY-MM) in ``timezone``, in time order."""
    rng = random.Random(seed)
    texts = Texts(seed)
    tz = ZoneInfo(timezone)
    first = date.fromisoformat(f"{month}-01")
    days = [first + timedelta(days=i) for i in range(31)]
    days = [d for d in days if d.month == first.month]
    # Weekends are quieter; use grows through the month.
    weights = [
        (0.45 if d.weekday() >= 5 else 1.0) * (1 + i / len(days) * 0.6) for i, d in enumerate(days)
    ]
    generators = [g for g, _ in MIX]
    shares = [s for _, s in MIX]
    out = []
    for n in range(calls):
        day = rng.choices(days, weights)[0]
        call, nightly = rng.choices(generators, shares)[0](rng, n)
        hour = rng.uniform(0.5, 5.5) if nightly else min(23.99, max(0.0, rng.gauss(14, 4)))
        local = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(hours=hour)
        fault = ""
        roll = rng.random()
        if roll < 0.004:
            fault = "status=500"
        elif call.stream and roll < 0.012:
            fault = "cut-after=2"  # a stream broken off: recorded as interrupted, usage estimated
        at = local.astimezone(UTC).timestamp()
        out.append(dataclasses.replace(call, at=at, fault=fault, texts=texts))
    out.sort(key=lambda c: c.at)
    return out
