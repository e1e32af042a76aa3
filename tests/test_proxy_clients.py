"""Real clients in several languages, through the proxy to the simulator.

For each client: its output through the proxy is identical to its output against the simulator
directly (ids and timestamps the simulator randomises are normalised), and the proxy records
exactly one event per call, with the numbers the simulator reported. Clients that need a tool
this machine lacks are skipped with the reason and the install command.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from proxy_world import events, normalise, start_proxy, tokens

from costsplit.events import fingerprint_key
from costsplit.simulator import usage_for

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"
KEY = "sk-sim-default-intl"
MESSAGES = [{"role": "user", "content": "Say hello through the proxy."}]


def expected(style: str, body: dict, scenario: str | None, streamed: bool) -> dict:
    """The event the proxy must record for one call the simulator answered."""
    compatible = style == "openai-compatible"
    usage = usage_for(
        body,
        "compatible" if compatible else "native",
        "chat" if compatible else "text-generation",
        region="ap-southeast-1",
    )
    input_tokens = usage["prompt_tokens"] if compatible else usage["input_tokens"]
    output_tokens = usage["completion_tokens"] if compatible else usage["output_tokens"]
    return {
        "recorder": "proxy",
        "api_style": style,
        "endpoint": "chat",
        "region": "ap-southeast-1",
        "key_fingerprint": fingerprint_key(KEY),
        "key_hint": "…intl",
        "workspace_observed": "",
        "scenario": scenario,
        "tags": {},
        "model_requested": body["model"],
        "streamed": streamed,
        "outcome": "ok",
        "http_status": 200,
        "error_code": "",
        "usage_source": "reported",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": usage["total_tokens"],
        "cached_tokens": 0,
    }


def compatible_body(content: str, **extra) -> dict:
    return {"model": "qwen-plus", "messages": [{"role": "user", "content": content}], **extra}


def native_body(content: str, **parameters) -> dict:
    return {
        "model": "qwen-plus",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"result_format": "message", **parameters},
    }


def direct_and_proxied(simulator, home, run) -> tuple[str, str, list[dict]]:
    """Run ``run(base_url)`` against the simulator, then through a proxy; outputs and events."""
    direct = run(simulator.base_url)
    proxy, settings = start_proxy(home, simulator.base_url)
    with proxy:
        proxied = run(proxy.base_url)
    return normalise(direct).decode(), normalise(proxied).decode(), events(settings)


# -- Python ----------------------------------------------------------------------------------


def test_openai_sdk_sync_call_and_stream(simulator, costsplit_home):
    from openai import OpenAI

    def run(base: str) -> str:
        headers = {"X-Costsplit-Scenario": "py-sync"}
        with OpenAI(
            base_url=f"{base}/compatible-mode/v1", api_key=KEY, default_headers=headers
        ) as c:
            answer = c.chat.completions.create(model="qwen-plus", messages=MESSAGES)
            stream = c.chat.completions.create(model="qwen-plus", messages=MESSAGES, stream=True)
            return "\n".join([answer.model_dump_json(), *(ch.model_dump_json() for ch in stream)])

    direct, proxied, recorded = direct_and_proxied(simulator, costsplit_home, run)
    assert proxied == direct
    body = {"model": "qwen-plus", "messages": MESSAGES}
    assert [tokens(e) for e in recorded] == [
        expected("openai-compatible", body, "py-sync", False),
        expected("openai-compatible", body, "py-sync", True),
    ]


def test_openai_sdk_async_call_and_stream(simulator, costsplit_home):
    from openai import AsyncOpenAI

    async def calls(base: str) -> str:
        headers = {"X-Costsplit-Scenario": "py-async"}
        client = AsyncOpenAI(
            base_url=f"{base}/compatible-mode/v1", api_key=KEY, default_headers=headers
        )
        async with client as c:
            answer = await c.chat.completions.create(model="qwen-plus", messages=MESSAGES)
            stream = await c.chat.completions.create(
                model="qwen-plus", messages=MESSAGES, stream=True
            )
            chunks = [chunk.model_dump_json() async for chunk in stream]
        return "\n".join([answer.model_dump_json(), *chunks])

    direct, proxied, recorded = direct_and_proxied(
        simulator, costsplit_home, lambda base: asyncio.run(calls(base))
    )
    assert proxied == direct
    body = {"model": "qwen-plus", "messages": MESSAGES}
    assert [tokens(e) for e in recorded] == [
        expected("openai-compatible", body, "py-async", False),
        expected("openai-compatible", body, "py-async", True),
    ]


def _dashscope_dump(response) -> str:
    return json.dumps(response, default=lambda o: dict(o) if hasattr(o, "keys") else str(o))


def test_dashscope_sdk_generation_call_and_stream(simulator, costsplit_home, monkeypatch):
    import dashscope

    def run(base: str) -> str:
        monkeypatch.setattr(dashscope, "base_http_api_url", f"{base}/api/v1")
        common = dict(
            model="qwen-plus",
            messages=MESSAGES,
            api_key=KEY,
            result_format="message",
            headers={"X-Costsplit-Scenario": "dashscope-sync"},
        )
        answer = dashscope.Generation.call(**common)
        stream = dashscope.Generation.call(**common, stream=True, incremental_output=True)
        return "\n".join([_dashscope_dump(answer), *(_dashscope_dump(part) for part in stream)])

    direct, proxied, recorded = direct_and_proxied(simulator, costsplit_home, run)
    assert proxied == direct
    assert '"status_code": 200' in proxied
    call = native_body(MESSAGES[0]["content"])
    streamed = native_body(MESSAGES[0]["content"], incremental_output=True)
    assert [tokens(e) for e in recorded] == [
        expected("dashscope", call, "dashscope-sync", False),
        expected("dashscope", streamed, "dashscope-sync", True),
    ]


def test_dashscope_sdk_async_call_and_stream(simulator, costsplit_home, monkeypatch):
    import dashscope
    from dashscope.api_entities.aio_session import close_shared_aio_session

    async def calls(base: str) -> str:
        monkeypatch.setattr(dashscope, "base_http_api_url", f"{base}/api/v1")
        common = dict(
            model="qwen-plus",
            messages=MESSAGES,
            api_key=KEY,
            result_format="message",
            headers={"X-Costsplit-Scenario": "dashscope-async"},
        )
        try:
            answer = await dashscope.AioGeneration.call(**common)
            stream = await dashscope.AioGeneration.call(
                **common, stream=True, incremental_output=True
            )
            parts = [_dashscope_dump(part) async for part in stream]
        finally:
            # The SDK keeps one aiohttp session per event loop and leaves closing it to the
            # application; without this, asyncio.run ends with "Unclosed client session".
            await close_shared_aio_session()
        return "\n".join([_dashscope_dump(answer), *parts])

    direct, proxied, recorded = direct_and_proxied(
        simulator, costsplit_home, lambda base: asyncio.run(calls(base))
    )
    assert proxied == direct
    assert '"status_code": 200' in proxied
    call = native_body(MESSAGES[0]["content"])
    streamed = native_body(MESSAGES[0]["content"], incremental_output=True)
    assert [tokens(e) for e in recorded] == [
        expected("dashscope", call, "dashscope-async", False),
        expected("dashscope", streamed, "dashscope-async", True),
    ]


# -- curl ------------------------------------------------------------------------------------

CURL_CASES = {
    "compatible": ("/compatible-mode/v1/chat/completions", compatible_body("Hello curl."), []),
    "compatible-stream": (
        "/compatible-mode/v1/chat/completions",
        compatible_body("Hello curl.", stream=True),
        [],
    ),
    "native": ("/api/v1/services/aigc/text-generation/generation", native_body("Hello curl."), []),
    "native-stream": (
        "/api/v1/services/aigc/text-generation/generation",
        native_body("Hello curl.", incremental_output=True),
        ["-H", "X-DashScope-SSE: enable"],
    ),
}


@pytest.mark.parametrize("case", sorted(CURL_CASES))
def test_curl(simulator, costsplit_home, case):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    path, body, extra = CURL_CASES[case]

    def run(base: str) -> str:
        args = ["curl", "-sS", "-N", "-i", f"{base}{path}", "-H", f"Authorization: Bearer {KEY}"]
        args += ["-H", "Content-Type: application/json", "-H", "X-Costsplit-Scenario: curl"]
        args += [*extra, "--data-binary", json.dumps(body)]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout
        head, _, payload = out.partition("\r\n\r\n")
        return head.splitlines()[0] + "\n" + payload  # the status line and the body

    direct, proxied, recorded = direct_and_proxied(simulator, costsplit_home, run)
    assert proxied == direct
    assert proxied.startswith("HTTP/1.1 200")
    style = "openai-compatible" if path.startswith("/compatible-mode") else "dashscope"
    assert [tokens(e) for e in recorded] == [expected(style, body, "curl", "stream" in case)]


# -- other languages ---------------------------------------------------------------------------


def run_program(args: list[str], base: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    environ = {**os.environ, **(env or {}), "BASE_URL": base, "DASHSCOPE_API_KEY": KEY}
    done = subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def node_openai() -> Path:
    """The npm ``openai`` package, installed once under .cache/ (ignored by git)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs npm)")
    folder = REPO / ".cache" / "node-openai"
    if not (folder / "node_modules" / "openai" / "package.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), "openai@7"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"npm could not install the openai package: {done.stderr.strip()[-300:]}")
    return folder


def test_node_openai_package(simulator, costsplit_home, tmp_path):
    folder = node_openai()
    script = folder / "client.mjs"  # beside node_modules, so `import "openai"` resolves
    shutil.copy(CLIENTS / "client.mjs", script)
    direct, proxied, recorded = direct_and_proxied(
        simulator, costsplit_home, lambda base: run_program(["node", str(script)], base, tmp_path)
    )
    assert proxied == direct
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "Say hello from Node."}]}
    assert [tokens(e) for e in recorded] == [
        expected("openai-compatible", body, "node-app", False),
        expected("openai-compatible", body, "node-app", True),
    ]


def test_java_http_client(simulator, costsplit_home, tmp_path):
    if shutil.which("java") is None or shutil.which("javac") is None:
        pytest.skip("Java is not installed (apt-get install default-jdk-headless)")
    shutil.copy(CLIENTS / "Client.java", tmp_path / "Client.java")
    subprocess.run(["javac", "Client.java"], cwd=tmp_path, check=True, timeout=120)
    direct, proxied, recorded = direct_and_proxied(
        simulator,
        costsplit_home,
        lambda base: run_program(["java", "-cp", str(tmp_path), "Client"], base, tmp_path),
    )
    assert proxied == direct
    assert proxied.startswith("200\n")
    content = "Say hello from Java."
    assert [tokens(e) for e in recorded] == [
        expected("dashscope", native_body(content), "java-app", False),
        expected("openai-compatible", compatible_body(content, stream=True), "java-app", True),
    ]


def test_php_curl(simulator, costsplit_home, tmp_path):
    if shutil.which("php") is None:
        pytest.skip("PHP is not installed (apt-get install php-cli php-curl; .ci/run does it)")
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout.split()
    if "curl" not in modules:
        pytest.skip("PHP's curl extension is not installed (apt-get install php-curl)")
    script = CLIENTS / "client.php"
    direct, proxied, recorded = direct_and_proxied(
        simulator, costsplit_home, lambda base: run_program(["php", str(script)], base, tmp_path)
    )
    assert proxied == direct
    content = "Say hello from PHP."
    assert [tokens(e) for e in recorded] == [
        expected("openai-compatible", compatible_body(content), "php-app", False),
        expected("dashscope", native_body(content, incremental_output=True), "php-app", True),
    ]


def test_go_net_http(simulator, costsplit_home, tmp_path):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go; .ci/run does it)")
    cache = REPO / ".cache" / "go-build"  # compiled once, reused by later runs
    env = {"GOCACHE": str(cache), "GOPATH": str(REPO / ".cache" / "go"), "GO111MODULE": "off"}
    shutil.copy(CLIENTS / "client.go", tmp_path / "client.go")
    subprocess.run(
        ["go", "build", "-o", "client", "client.go"],
        cwd=tmp_path,
        env={**os.environ, **env},
        check=True,
        timeout=300,
    )
    binary = str(tmp_path / "client")
    direct, proxied, recorded = direct_and_proxied(
        simulator, costsplit_home, lambda base: run_program([binary], base, tmp_path)
    )
    assert proxied == direct
    content = "Say hello from Go."
    assert [tokens(e) for e in recorded] == [
        expected("openai-compatible", compatible_body(content), "go-app", False),
        expected("openai-compatible", compatible_body(content, stream=True), "go-app", True),
    ]
