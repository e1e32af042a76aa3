"""The demo's month of traffic: who calls what, how, and when.

``plan_calls(month, calls, seed)`` returns a deterministic list of ``Call`` specs spread over
a calendar month in the reporting timezone (more on weekdays and in working hours, growing
through the month): five workspaces over Singapore and Beijing, eleven scenarios, eight models,
both API styles, streams and not, thinking, shared prompt prefixes (so the simulator reports
cache hits), images, embeddings, some calls with no scenario, a key mapped to no workspace,
calls refused by model grants (locally, and upstream with a 403), rate-limited and failing
calls, and streams cut short.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

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

# (scenario, workspace id, owners, monthly budget USD/CNY or None)
SCENARIOS = (
    ("chatbot", "ws-support-sg", ("support-eng@example.com",), "250"),
    ("ticket-triage", "ws-support-sg", ("support-eng@example.com",), None),
    ("kb-embeddings", "ws-support-sg", ("search-eng@example.com",), None),
    ("paper-summaries", "ws-research-sg", ("research-eng@example.com",), "400"),
    ("image-captions", "ws-research-sg", ("vision-eng@example.com",), None),
    ("eval-runs", "ws-research-sg", ("research-eng@example.com",), None),
    ("cn-chatbot", "ws-support-cn", ("cn-eng@example.com",), None),
    ("cn-faq", "ws-support-cn", ("cn-eng@example.com",), None),
    ("report-drafts", "ws-analytics-cn", ("bi@example.com",), None),
    ("translation", "ws-analytics-cn", ("bi@example.com",), None),
)

SYSTEM_PROMPT = (
    "You are the support assistant of Example Co. Answer briefly, cite the knowledge base, "
    "never promise refunds, escalate legal questions. "
) * 40  # ~1,300 tokens shared by every chatbot call: the simulator reports implicit cache hits
DOCUMENT = "Section {n}. The experiment measured latency and cost under load; results follow. " * 60


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    at: float  # unix seconds: started_at of the recorded event
    region: str
    key: str
    scenario: str | None
    path: str  # under the simulator's base URL
    body: dict
    stream: bool
    fault: str = ""  # X-Simulator-Fault


def _chat(
    model: str,
    user: str,
    *,
    system: str = "",
    stream: bool = False,
    thinking: bool = False,
    max_tokens: int | None = None,
) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    body: dict = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
    if thinking:
        body["enable_thinking"] = True
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


def _native(
    model: str, user: str, *, system: str = "", thinking: bool = False, stream: bool = False
) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    parameters: dict = {"result_format": "message"}
    if thinking:
        parameters["enable_thinking"] = True
    if stream:
        parameters["incremental_output"] = True
    return {"model": model, "input": {"messages": messages}, "parameters": parameters}


COMPATIBLE_CHAT = "/compatible-mode/v1/chat/completions"
COMPATIBLE_EMBED = "/compatible-mode/v1/embeddings"
NATIVE_TEXT = "/api/v1/services/aigc/text-generation/generation"
NATIVE_VL = "/api/v1/services/aigc/multimodal-generation/generation"

KEY = {w[0]: w[4] for w in WORKSPACES}


def _one(rng: random.Random, n: int) -> Call:
    """A call of a scenario drawn by weight (the time is set by the caller)."""
    pick = rng.random()
    q = f"Question {n}: " + "how do I reset my password and keep my order history? " * rng.randint(
        2, 12
    )
    if pick < 0.28:
        stream = rng.random() < 0.7
        thinking = rng.random() < 0.2
        model = (
            "qwen3-max" if rng.random() < 0.01 else "qwen-plus"
        )  # qwen3-max: not granted (denied locally)
        return Call(
            0,
            SG,
            KEY["ws-support-sg"],
            "chatbot",
            COMPATIBLE_CHAT,
            _chat(model, q, system=SYSTEM_PROMPT, stream=stream, thinking=thinking),
            stream,
        )
    if pick < 0.42:
        scenario = (
            None if rng.random() < 0.05 else "ticket-triage"
        )  # a few callers forget the scenario
        return Call(
            0,
            SG,
            KEY["ws-support-sg"],
            scenario,
            COMPATIBLE_CHAT,
            _chat("qwen-flash", "Classify this ticket: " + q, max_tokens=32),
            False,
        )
    if pick < 0.50:
        texts = [
            f"Knowledge base article {n}.{i}: "
            + "shipping and returns policy " * rng.randint(20, 80)
            for i in range(4)
        ]
        return Call(
            0,
            SG,
            KEY["ws-support-sg"],
            "kb-embeddings",
            COMPATIBLE_EMBED,
            {"model": "text-embedding-v4", "input": texts},
            False,
        )
    if pick < 0.60:
        stream = rng.random() < 0.5
        doc = DOCUMENT.format(n=n) * rng.randint(2, 6)
        return Call(
            0,
            SG,
            KEY["ws-research-sg"],
            "paper-summaries",
            NATIVE_TEXT,
            _native("qwen3-max", "Summarise:\n" + doc, stream=stream),
            stream,
        )
    if pick < 0.66:
        content = [
            {"image": f"https://example.invalid/images/{n}.png"},
            {"text": "Write an alt text for this product photo."},
        ]
        body = {
            "model": "qwen-vl-max",
            "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": {},
        }
        return Call(0, SG, KEY["ws-research-sg"], "image-captions", NATIVE_VL, body, False)
    if pick < 0.72:
        if rng.random() < 0.15:  # a vision eval on a rate-limited model: some get 429
            return Call(
                0,
                SG,
                KEY["ws-research-sg"],
                "eval-runs",
                COMPATIBLE_CHAT,
                _chat("qwen3-vl-plus", "Grade: " + q),
                False,
            )
        return Call(
            0,
            SG,
            KEY["ws-research-sg"],
            "eval-runs",
            COMPATIBLE_CHAT,
            _chat("qwen-plus", "Grade this answer: " + q, stream=True, thinking=True),
            True,
        )
    if pick < 0.84:
        stream = rng.random() < 0.8
        model = "qwen3-max" if rng.random() < 0.01 else "qwen-plus"  # not granted upstream: 403
        return Call(
            0,
            CN,
            KEY["ws-support-cn"],
            "cn-chatbot",
            COMPATIBLE_CHAT,
            _chat(model, "请帮我查询订单状态。" + q, system=SYSTEM_PROMPT, stream=stream),
            stream,
        )
    if pick < 0.90:
        return Call(
            0,
            CN,
            KEY["ws-support-cn"],
            "cn-faq",
            NATIVE_TEXT,
            _native("qwen-flash", "常见问题: " + q),
            False,
        )
    if pick < 0.95:
        doc = DOCUMENT.format(n=n) * rng.randint(3, 8)
        return Call(
            0,
            CN,
            KEY["ws-analytics-cn"],
            "report-drafts",
            COMPATIBLE_CHAT,
            _chat("qwen-max", "Draft the weekly report from:\n" + doc),
            False,
        )
    if pick < 0.975:
        return Call(
            0,
            CN,
            KEY["ws-analytics-cn"],
            "translation",
            NATIVE_TEXT,
            _native("qwen-turbo", "Translate to English: " + q, thinking=rng.random() < 0.3),
            False,
        )
    doc = DOCUMENT.format(n=n) * rng.randint(2, 5)
    return Call(
        0,
        SG,
        UNMAPPED_KEY,
        "prototype",
        COMPATIBLE_CHAT,
        _chat("qwen-plus", "Prototype: " + doc),
        False,
    )


def plan_calls(month: str, calls: int, timezone: str, *, seed: int = 20261) -> list[Call]:
    """``calls`` call specs over ``month`` (YYYY-MM) in ``timezone``, in time order."""
    rng = random.Random(seed)
    tz = ZoneInfo(timezone)
    first = date.fromisoformat(f"{month}-01")
    days = [
        (first + timedelta(days=i))
        for i in range(31)
        if (first + timedelta(days=i)).month == first.month
    ]
    weights = [
        (0.45 if d.weekday() >= 5 else 1.0) * (1 + i / len(days) * 0.6) for i, d in enumerate(days)
    ]
    out = []
    for n in range(calls):
        day = rng.choices(days, weights)[0]
        hour = min(23.99, max(0.0, rng.gauss(14, 4)))
        local = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(hours=hour)
        call = _one(rng, n)
        fault = ""
        roll = rng.random()
        if roll < 0.004:
            fault = "status=500"
        elif call.stream and roll < 0.012:
            fault = "cut-after=2"  # a stream broken off: recorded as interrupted, usage estimated
        out.append(dataclasses.replace(call, at=local.astimezone(UTC).timestamp(), fault=fault))
    out.sort(key=lambda c: c.at)
    return out
