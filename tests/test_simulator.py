"""The simulator answers both API styles with the reference shapes and deterministic usage."""

from __future__ import annotations

import httpx

from costsplit.simulator import usage_for

INTL = {"Authorization": "Bearer sk-sim-default-intl"}
CHAT = "/compatible-mode/v1/chat/completions"
TEXT = "/api/v1/services/aigc/text-generation/generation"


def test_compatible_chat_reports_the_documented_usage(simulator):
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "hello there"}]}
    response = httpx.post(simulator.base_url + CHAT, json=body, headers=INTL)
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "chatcmpl-" + response.headers["x-request-id"]
    assert answer["usage"] == usage_for(body, "compatible", "chat")
    assert answer["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 54,
        "total_tokens": 64,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_native_text_generation_reports_request_id_in_body_and_header(simulator):
    body = {"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "hi"}]}}
    response = httpx.post(simulator.base_url + TEXT, json=body, headers=INTL)
    assert response.status_code == 200
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.json()["usage"] == usage_for(body, "native", "text-generation")
