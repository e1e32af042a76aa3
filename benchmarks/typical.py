"""The event the spool and ingest benchmarks write: a reported chat call as a recorder writes it."""

from __future__ import annotations

from costsplit.events import UsageEvent, utc_timestamp


def reported_chat_call(**fields) -> UsageEvent:
    """A qwen-plus chat call with reported usage (cached tokens included); ``fields`` override."""
    values = dict(
        started_at=utc_timestamp(),
        latency_us=812_345,
        api_style="openai-compatible",
        host="dashscope-intl.aliyuncs.com",
        region="ap-southeast-1",
        key_fingerprint="sha256:0123456789abcdef",
        key_hint="…abcd",
        scenario="support-bot",
        tags={"team": "support"},
        model_requested="qwen-plus",
        model_returned="qwen-plus",
        request_id="9f5e5a0c-1b2d-4c3e-8f7a-0123456789ab",
        http_status=200,
        usage_source="reported",
        input_tokens=1200,
        output_tokens=300,
        total_tokens=1500,
        cached_tokens=200,
    )
    return UsageEvent(**(values | fields))
