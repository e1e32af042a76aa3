"""The recording proxy (costsplit.proxy): routes, headers, streams, limits and failures.

Real HTTP on loopback: the proxy in front of the simulator, or in front of a raw socket
upstream where a test must hold a stream open or see the proxy close it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
from full_disk import file_size_limit
from proxy_world import events, normalise, proxy_settings, start_proxy, tokens, wait_events

from costsplit.config import ProxySettings, Route, Workspace
from costsplit.errors import ConfigError
from costsplit.events import fingerprint_key
from costsplit.proxy import RouteTable, run_in_thread
from costsplit.proxy.routes import BUILTIN_ROUTES, RouteError
from costsplit.proxy.server import default_workers, loop_factory
from costsplit.simulator import usage_for

KEY = "sk-sim-default-intl"
CHAT = "/compatible-mode/v1/chat/completions"
NATIVE = "/api/v1/services/aigc/text-generation/generation"
BODY = {"model": "qwen-plus", "messages": [{"role": "user", "content": "Route me."}]}
NATIVE_BODY = {"model": "qwen-plus", "input": {"messages": BODY["messages"]}}
AUTH = {"Authorization": f"Bearer {KEY}"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- routes ----------------------------------------------------------------------------------


def test_route_table_prefix_then_header_then_default():
    table = RouteTable([Route("sg", "http://a.example/"), Route("cn", "http://b.example/base")])
    assert table.default == "sg"
    assert table.resolve(CHAT).url == "http://a.example" + CHAT
    assert table.resolve(CHAT, "x=1", "cn").url == "http://b.example/base" + CHAT + "?x=1"
    assert table.resolve("/r/cn" + NATIVE, "", "sg").url == "http://b.example/base" + NATIVE
    assert table.resolve("/r/cn" + NATIVE).api_style == "dashscope"
    for bad, code in [
        ("/r/us" + CHAT, "unknown_route"),
        ("/v1/chat/completions", "unknown_path"),
        ("/compatible-mode/v1/../../admin", "unknown_path"),
        ("/api/v1/%2e%2e/x", "unknown_path"),
    ]:
        with pytest.raises(RouteError) as raised:
            table.resolve(bad)
        assert (raised.value.status, raised.value.code) == (404, code)


def test_builtin_routes_when_none_configured():
    table = RouteTable.from_settings(ProxySettings())
    assert table.default == "singapore"
    assert list(table.routes.values()) == list(BUILTIN_ROUTES)
    assert table.resolve(CHAT).url == "https://dashscope-intl.aliyuncs.com" + CHAT
    assert table.resolve("/r/beijing" + NATIVE).url == "https://dashscope.aliyuncs.com" + NATIVE


def test_caller_picks_route_by_prefix_or_header(simulator, simulator_cn, costsplit_home):
    routes = (
        Route("sg", simulator.base_url, "ap-southeast-1"),
        Route("cn", simulator_cn.base_url, "cn-beijing"),
    )
    proxy, settings = start_proxy(costsplit_home, "", routes=routes)
    cn_auth = {"Authorization": "Bearer sk-sim-default-cn"}
    with proxy:
        by_prefix = httpx.post(f"{proxy.base_url}/r/cn{CHAT}", json=BODY, headers=cn_auth)
        by_header = httpx.post(
            proxy.base_url + CHAT, json=BODY, headers={**cn_auth, "X-Costsplit-Route": "cn"}
        )
        default = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
    assert [by_prefix.status_code, by_header.status_code, default.status_code] == [200, 200, 200]
    assert [e["region"] for e in events(settings)] == ["cn-beijing", "cn-beijing", "ap-southeast-1"]
    assert len(simulator_cn.requests) == 2 and len(simulator.requests) == 1
    assert not any(k.startswith("x-costsplit") for r in simulator_cn.requests for k in r.headers)


def test_unknown_route_and_path_answer_in_the_style_of_the_path(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url)
    with proxy:
        compat = httpx.post(f"{proxy.base_url}/r/mars{CHAT}", json=BODY, headers=AUTH)
        native = httpx.post(f"{proxy.base_url}/r/mars{NATIVE}", json=BODY, headers=AUTH)
        header = httpx.post(
            proxy.base_url + NATIVE, json=BODY, headers={**AUTH, "X-Costsplit-Route": "mars"}
        )
        other = httpx.get(f"{proxy.base_url}/v1/models", headers=AUTH)
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port)
        connection.request("POST", "/compatible-mode/v1/../../etc/passwd", body=b"{}")
        dotted = connection.getresponse()
        dotted_body = dotted.read()
        connection.close()
    message = "No proxy route named 'mars' (known: sim)."
    assert compat.status_code == 404
    assert normalise(compat.content) == orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_route",
            },
            "request_id": "<uuid>",
        }
    )
    native_answer = {"code": "UnknownRoute", "message": message, "request_id": "<uuid>"}
    assert native.status_code == header.status_code == 404
    assert normalise(native.content) == normalise(header.content) == orjson.dumps(native_answer)
    assert compat.headers["x-costsplit-proxy-error"] == "unknown_route"
    assert other.status_code == dotted.status == 404
    assert orjson.loads(other.content)["error"]["code"] == "unknown_path"
    assert orjson.loads(dotted_body)["error"]["code"] == "unknown_path"
    assert simulator.requests == [] and events(settings) == []


# -- headers and attribution -----------------------------------------------------------------


def test_costsplit_headers_removed_authorization_untouched(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url)
    headers = {
        **AUTH,
        "X-Costsplit-Scenario": "support-bot",
        "X-Costsplit-Tag-Team": "care",
        "X-DashScope-WorkSpace": "ws-default0000000",
    }
    with proxy:
        answer = httpx.post(proxy.base_url + CHAT, json=BODY, headers=headers)
    assert answer.status_code == 200
    seen = simulator.requests[0].headers
    assert seen["authorization"] == f"Bearer {KEY}"
    assert seen["x-dashscope-workspace"] == "ws-default0000000"
    assert [name for name in seen if name.startswith("x-costsplit")] == []
    usage = usage_for(BODY, "compatible", "chat")
    [event] = events(settings)
    assert tokens(event) == {
        "recorder": "proxy",
        "api_style": "openai-compatible",
        "endpoint": "chat",
        "region": "ap-southeast-1",
        "key_fingerprint": fingerprint_key(KEY),
        "key_hint": "…intl",
        "workspace_observed": "ws-default0000000",
        "scenario": "support-bot",
        "tags": {"team": "care"},
        "model_requested": "qwen-plus",
        "streamed": False,
        "outcome": "ok",
        "http_status": 200,
        "error_code": "",
        "usage_source": "reported",
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "cached_tokens": 0,
    }
    assert (
        "sk-sim"
        not in (costsplit_home / "spool")
        .joinpath(next(p.name for p in (costsplit_home / "spool").glob("*.jsonl")))
        .read_text()
    )


def test_per_key_default_scenario_and_header_wins(simulator, costsplit_home):
    support = "sk-sim-support-intl"
    proxy, settings = start_proxy(
        costsplit_home,
        simulator.base_url,
        key_scenarios={fingerprint_key(support): "triage"},
    )
    auth = {"Authorization": f"Bearer {support}"}
    with proxy:
        httpx.post(proxy.base_url + CHAT, json=BODY, headers=auth)
        httpx.post(proxy.base_url + CHAT, json=BODY, headers={**auth, "X-Costsplit-Scenario": "qa"})
        httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
    assert [e["scenario"] for e in events(settings)] == ["triage", "qa", None]


# -- streams -----------------------------------------------------------------------------------


def test_stream_gets_usage_injected_and_hidden_from_caller(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url)
    streamed = {**BODY, "stream": True}
    with proxy:
        hidden = httpx.post(proxy.base_url + CHAT, json=streamed, headers=AUTH)
        asked = httpx.post(
            proxy.base_url + CHAT,
            json={**streamed, "stream_options": {"include_usage": True}},
            headers=AUTH,
        )
    direct = httpx.post(simulator.base_url + CHAT, json=streamed, headers=AUTH)
    assert normalise(hidden.content) == normalise(direct.content)
    assert b'"choices":[]' not in hidden.content and b'"choices":[]' in asked.content
    forwarded = [r.json() for r in simulator.requests[:2]]
    assert [f["stream_options"] for f in forwarded] == [{"include_usage": True}] * 2
    usage = usage_for(BODY, "compatible", "chat")
    assert [
        (e["streamed"], e["usage_source"], e["input_tokens"], e["output_tokens"])
        for e in events(settings)
    ] == [(True, "reported", usage["prompt_tokens"], usage["completion_tokens"])] * 2


class HeldStream:
    """A raw upstream that sends an SSE head and one chunk, then holds the stream open until
    ``release`` is set; ``closed`` is set when the proxy closes the connection first."""

    HEAD = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def __init__(self, *, silent: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.silent = silent  # read the request and send nothing at all
        self.received = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @staticmethod
    def chunk(text: str) -> bytes:
        data = f"data: {text}\n\n".encode()
        return b"%x\r\n%s\r\n" % (len(data), data)

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536)
            self.received.set()
            first = {"choices": [{"index": 0, "delta": {"content": "Hel"}}], "model": "qwen-plus"}
            if not self.silent:
                connection.sendall(self.HEAD + self.chunk(orjson.dumps(first).decode()))
            connection.settimeout(0.02)
            while not self.release.is_set():
                try:
                    if connection.recv(65536) == b"":
                        self.closed.set()
                        return
                except TimeoutError:
                    continue
            connection.sendall(self.chunk("[DONE]") + b"0\r\n\r\n")

    def stop(self) -> None:
        self.release.set()
        self.listener.close()


def test_first_chunk_reaches_caller_while_upstream_still_streams(costsplit_home):
    upstream = HeldStream()
    proxy, settings = start_proxy(costsplit_home, upstream.base_url)
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    try:
        with proxy, httpx.stream("POST", proxy.base_url + CHAT, json=body, headers=AUTH) as r:
            pieces = r.iter_raw()
            first = next(pieces)
            assert not upstream.release.is_set()
            assert first.startswith(b'data: {"choices"')
            upstream.release.set()
            assert b"".join(pieces) == b"data: [DONE]\n\n"
    finally:
        upstream.stop()
    [event] = wait_events(settings, 1)
    assert (event["outcome"], event["streamed"], event["usage_source"]) == ("ok", True, "estimated")


def test_caller_disconnect_closes_upstream_and_records_interrupted(costsplit_home):
    upstream = HeldStream()
    proxy, settings = start_proxy(costsplit_home, upstream.base_url)
    body = {**BODY, "stream": True}
    try:
        with proxy:
            with httpx.stream("POST", proxy.base_url + CHAT, json=body, headers=AUTH) as r:
                next(r.iter_raw())
            # leaving the block closes the caller's connection mid-stream
            assert upstream.closed.wait(10), "the proxy kept the upstream stream open"
            [event] = wait_events(settings, 1)
    finally:
        upstream.stop()
    assert (event["outcome"], event["streamed"], event["usage_source"]) == (
        "interrupted",
        True,
        "estimated",
    )
    assert event["output_tokens"] >= 1 and event["input_tokens"] >= 1


def test_caller_gone_before_any_answer_closes_upstream_and_records_interrupted(costsplit_home):
    # The request reached Model Studio, which may have started (and will bill) the call: the
    # event says interrupted with the request's estimated input, not network_error.
    upstream = HeldStream(silent=True)
    proxy, settings = start_proxy(costsplit_home, upstream.base_url)
    payload = orjson.dumps(BODY)
    try:
        with proxy:
            with socket.create_connection(("127.0.0.1", proxy.port)) as caller:
                caller.sendall(
                    b"POST %s HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (CHAT.encode(), KEY.encode(), len(payload), payload)
                )
                assert upstream.received.wait(10), "the request never reached upstream"
            assert upstream.closed.wait(10), "the proxy kept the upstream request open"
            [event] = wait_events(settings, 1)
    finally:
        upstream.stop()
    facts = ("outcome", "http_status", "error_code", "streamed", "usage_source", "output_tokens")
    assert {name: event[name] for name in facts} == {
        "outcome": "interrupted",
        "http_status": None,
        "error_code": "",
        "streamed": False,
        "usage_source": "estimated",
        "output_tokens": 0,
    }
    assert event["input_tokens"] >= 1


# -- limits and failures -----------------------------------------------------------------------


def test_unreachable_upstream_answers_502_in_style_and_records_network_error(costsplit_home):
    dead = f"http://127.0.0.1:{closed_port()}"
    proxy, settings = start_proxy(costsplit_home, dead)
    with proxy:
        compat = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
        native = httpx.post(proxy.base_url + NATIVE, json=NATIVE_BODY, headers=AUTH)
    assert compat.status_code == native.status_code == 502
    error = compat.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "upstream_error",
        "upstream_unreachable",
        None,
    )
    assert error["message"].startswith(f"Upstream 'sim' ({dead}) failed: Cannot connect")
    assert sorted(native.json()) == ["code", "message", "request_id"]
    assert native.json()["code"] == "UpstreamUnreachable"
    assert [(e["outcome"], e["api_style"], e["http_status"], e["usage_source"]) for e in
            events(settings)] == [
        ("network_error", "openai-compatible", None, "missing"),
        ("network_error", "dashscope", None, "missing"),
    ]  # fmt: skip


def test_upstream_timeout_answers_504(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url, timeout_seconds=0.3)
    with proxy:
        answer = httpx.post(
            proxy.base_url + NATIVE,
            json=NATIVE_BODY,
            headers={**AUTH, "X-Simulator-Fault": "latency-ms=2000"},
        )
    assert answer.status_code == 504
    assert answer.json()["code"] == "UpstreamTimeout"
    assert [e["outcome"] for e in events(settings)] == ["network_error"]


def test_oversized_body_is_413_and_nothing_is_forwarded(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url, max_body_bytes=1000)
    big = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 2000}]})
    with proxy:
        declared = httpx.post(proxy.base_url + CHAT, content=big, headers=AUTH)
        chunked = httpx.post(proxy.base_url + NATIVE, content=iter([big[:500], big[500:]]))
        small = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
    assert declared.status_code == chunked.status_code == 413
    assert declared.json()["error"] == {
        "message": f"Request body is {len(big)} bytes; the proxy accepts at most 1000 bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert chunked.json()["code"] == "BadRequest.TooLarge"
    assert small.status_code == 200
    assert len(simulator.requests) == 1 and len(events(settings)) == 1


def test_oversized_headers_are_431(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url, max_header_bytes=2048)
    with proxy:
        answer = httpx.post(
            proxy.base_url + CHAT,
            json=BODY,
            headers={**AUTH, "X-Big": "y" * 1500, "X-Big2": "z" * 1500},
        )
    assert answer.status_code == 431
    assert answer.json()["error"]["code"] == "headers_too_large"
    assert simulator.requests == [] and events(settings) == []


def test_one_header_line_over_the_limit_is_our_431_not_a_plain_400(simulator, costsplit_home):
    # aiohttp's parser refuses such a line before any handler runs; the proxy answers it in its
    # own envelope (compatible style: the path is not known yet). Too many lines, likewise.
    proxy, settings = start_proxy(costsplit_home, simulator.base_url, max_header_bytes=2048)
    with proxy:
        long_line = httpx.post(
            proxy.base_url + NATIVE, json=NATIVE_BODY, headers={**AUTH, "X-Big": "y" * 3000}
        )
        many = httpx.post(
            proxy.base_url + CHAT,
            json=BODY,
            headers={**AUTH, **{f"X-H{i}": "1" for i in range(200)}},
        )
    for answer in (long_line, many):
        assert answer.status_code == 431
        assert answer.headers["x-costsplit-proxy-error"] == "headers_too_large"
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert body == {
            "error": {
                "message": "A request line or header is longer than the proxy accepts "
                "(2048 bytes), or there are too many header lines.",
                "type": "invalid_request_error",
                "param": None,
                "code": "headers_too_large",
            },
            "request_id": body["request_id"],
        }
    assert simulator.requests == [] and events(settings) == []


def test_cookies_upstream_sets_reach_that_caller_only(costsplit_home):
    seen: list[str | None] = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Cookie"))
            body = b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "acw_tc=affinity-of-caller-1; Path=/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # by name: a cookie jar keeps no cookies of a bare IP address
    proxy, _ = start_proxy(costsplit_home, f"http://localhost:{server.server_port}")
    try:
        with proxy:
            first = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
            second = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
            third = httpx.post(
                proxy.base_url + CHAT, json=BODY, headers={**AUTH, "Cookie": "mine=1"}
            )
    finally:
        server.shutdown()
        server.server_close()
    assert first.headers["set-cookie"] == "acw_tc=affinity-of-caller-1; Path=/"
    assert second.status_code == third.status_code == 200
    assert seen == [None, None, "mine=1"]


def test_upstream_errors_pass_through_unchanged(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url)
    wrong_region = {"Authorization": "Bearer sk-sim-default-cn"}
    with proxy:
        proxied = httpx.post(proxy.base_url + NATIVE, json=NATIVE_BODY, headers=wrong_region)
    direct = httpx.post(simulator.base_url + NATIVE, json=NATIVE_BODY, headers=wrong_region)
    assert proxied.status_code == direct.status_code == 401
    assert normalise(proxied.content) == normalise(direct.content)
    [event] = events(settings)
    assert (event["outcome"], event["http_status"], event["error_code"]) == (
        "http_error",
        401,
        "InvalidApiKey",
    )


# -- processes -------------------------------------------------------------------------------


def test_default_workers_is_one_per_usable_core():
    assert default_workers() == len(os.sched_getaffinity(0))


def test_event_loop_is_uvloop_when_installed_and_asyncio_on_request(simulator, costsplit_home):
    import uvloop

    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match="one of auto, asyncio, uvloop, not 'trio'"):
        loop_factory("trio")
    # the asyncio loop serves the same way (the other tests run on uvloop)
    settings = proxy_settings(costsplit_home, simulator.base_url)
    with run_in_thread(settings, loop="asyncio") as proxy:
        proxied = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
    assert proxied.status_code == 200 and len(events(settings)) == 1


@pytest.mark.slow
def test_cli_with_two_workers_each_process_its_own_segment(simulator, tmp_path, costsplit_home):
    port = closed_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[proxy]\nport = {port}\n[[proxy.routes]]\nname = "sim"\n'
        f'upstream = "{simulator.base_url}"\nregion = "ap-southeast-1"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-c", "from costsplit.cli import main; main()", "proxy", "--config",
         str(config), "--workers", "2"],
        env={**os.environ, "COSTSPLIT_HOME": str(costsplit_home)},
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)
        statuses = [
            httpx.post(f"http://127.0.0.1:{port}{CHAT}", json=BODY, headers=AUTH).status_code
            for _ in range(12)
        ]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert statuses == [200] * 12
    assert f"costsplit proxy on http://127.0.0.1:{port} (2 workers)".encode() in stderr
    settings = proxy_settings(costsplit_home, simulator.base_url)
    recorded = events(settings)
    assert len(recorded) == 12 and {e["recorder"] for e in recorded} == {"proxy"}
    assert 1 <= len(list((costsplit_home / "spool").glob("*.jsonl"))) <= 2


def test_upstream_cut_mid_stream_cuts_the_caller_and_records_interrupted(simulator, costsplit_home):
    proxy, settings = start_proxy(costsplit_home, simulator.base_url)
    body = {**BODY, "stream": True}
    received = b""
    with proxy:
        headers = {**AUTH, "X-Simulator-Fault": "cut-after=2"}
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", proxy.base_url + CHAT, json=body, headers=headers) as r,
        ):
            for piece in r.iter_raw():
                received += piece
        [event] = wait_events(settings, 1)
    assert received.count(b"data: {") == 2 and b"[DONE]" not in received
    assert (event["outcome"], event["streamed"], event["http_status"]) == ("interrupted", True, 200)
    assert event["usage_source"] == "estimated"


def test_workspace_by_key_fingerprint_as_in_the_client(simulator, costsplit_home):
    settings = proxy_settings(costsplit_home, simulator.base_url)
    support = "sk-sim-support-intl"
    workspace = Workspace(
        "ws-support0000000",
        "Support",
        "ap-southeast-1",
        key_fingerprints=(fingerprint_key(support),),
    )
    settings = dataclasses.replace(settings, workspaces=(workspace,))
    with run_in_thread(settings) as proxy:
        httpx.post(proxy.base_url + CHAT, json=BODY, headers={"Authorization": f"Bearer {support}"})
    [event] = events(settings)
    assert (event["workspace_observed"], event["key_hint"]) == ("ws-support0000000", "…intl")


def test_no_record_forwards_the_same_and_records_nothing(simulator, costsplit_home):
    settings = proxy_settings(costsplit_home, simulator.base_url)
    headers = {**AUTH, "X-Costsplit-Scenario": "ignored"}
    with run_in_thread(settings, record=False) as proxy:
        proxied = httpx.post(proxy.base_url + CHAT, json=BODY, headers=headers)
    direct = httpx.post(simulator.base_url + CHAT, json=BODY, headers=AUTH)
    assert normalise(proxied.content) == normalise(direct.content)
    assert [k for k in simulator.requests[0].headers if k.startswith("x-costsplit")] == []
    assert events(settings) == []


# -- events before answers ------------------------------------------------------------------


def test_each_event_is_written_before_its_answer_leaves(simulator, costsplit_home):
    # Calls answered in the same turn of the proxy's loop are ended in a row: still, no
    # caller gets its answer before its event is in the spool (a kill then loses nothing).
    settings = proxy_settings(costsplit_home, simulator.base_url)

    async def call(client: httpx.AsyncClient, url: str) -> bool:
        answer = await client.post(url + CHAT, json=BODY, headers=AUTH)
        spooled = {event["request_id"] for event in events(settings)}
        return answer.status_code == 200 and answer.headers["x-request-id"] in spooled

    async def calls(url: str) -> list[bool]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(call(client, url) for _ in range(24)))

    with run_in_thread(settings) as proxy:
        found = asyncio.run(calls(proxy.base_url))
    assert found == [True] * 24
    assert len(events(settings)) == 24


def ended_in_a_row(settings, *, cancel: int | None = None, batch: bool = True) -> list[object]:
    """Three exchanges with their answers read, ended by ``end_soon`` in one turn of the loop:
    for each, whether it was ended when ``end_soon`` returned (or the exception it raised)."""
    from costsplit.proxy.recording import ProxyRecording

    recording = ProxyRecording(settings)
    if not batch:  # as if the loop ran the calls before the batch it was asked to run first
        recording._end_all = lambda: None
    target = RouteTable.from_settings(settings.proxy).resolve(CHAT, "", None)
    answer = orjson.dumps({"model": "qwen-plus", "usage": {"prompt_tokens": 3}})

    async def end(exchange) -> bool:
        await recording.end_soon(exchange)
        return exchange.done

    async def main() -> list[object]:
        tasks = []
        for _ in range(3):
            exchange = recording.begin("POST", target, [], orjson.dumps(BODY))
            exchange.response(200, [("content-type", "application/json")])
            exchange.chunk(answer)
            tasks.append(asyncio.create_task(end(exchange)))
        await asyncio.sleep(0)  # every call is now waiting for its turn
        if cancel is not None:
            tasks[cancel].cancel()  # the caller went away; the answer was read whole
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, bool) else type(r).__name__ for r in results]

    return asyncio.run(main())


def test_end_soon_returns_once_the_event_is_written(costsplit_home):
    settings = proxy_settings(costsplit_home, "http://127.0.0.1:1")
    assert ended_in_a_row(settings) == [True, True, True]
    assert ended_in_a_row(settings, batch=False) == [True, True, True]  # each ends its own
    assert [(e["outcome"], e["input_tokens"]) for e in events(settings)] == [("ok", 3)] * 6


def test_a_call_cancelled_while_its_exchange_waits_to_end_is_recorded_once_as_ok(
    costsplit_home,
):
    settings = proxy_settings(costsplit_home, "http://127.0.0.1:1")
    assert ended_in_a_row(settings, cancel=1) == [True, "CancelledError", True]
    assert ended_in_a_row(settings, cancel=1, batch=False) == [True, "CancelledError", True]
    assert [(e["outcome"], e["input_tokens"]) for e in events(settings)] == [("ok", 3)] * 6


# -- health ----------------------------------------------------------------------------------


def test_health_is_answered_by_the_proxy_itself(costsplit_home):
    # The only route goes nowhere: the health answer never leaves the proxy, nor is recorded.
    settings = proxy_settings(costsplit_home, f"http://127.0.0.1:{closed_port()}")
    with run_in_thread(settings) as proxy, run_in_thread(settings, record=False) as bare:
        health = httpx.get(proxy.base_url + "/costsplit/health")
        assert httpx.head(proxy.base_url + "/costsplit/health").status_code == 200
        refused = httpx.post(proxy.base_url + "/costsplit/health", json={})
        unrecorded = httpx.get(bare.base_url + "/costsplit/health").json()
    assert (health.status_code, health.headers["content-type"]) == (200, "application/json")
    report = health.json()
    assert (report["status"], report["recording"], report["events_held"]) == ("ok", True, 0)
    assert type(report["recording_errors"]) is int
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
    assert unrecorded == {
        "status": "ok", "recording": False, "events_held": 0, "recording_errors": 0
    }  # fmt: skip
    assert events(settings) == []


def test_health_tells_of_events_held_through_a_full_disk_until_they_are_written(
    simulator, costsplit_home
):
    settings = proxy_settings(costsplit_home, simulator.base_url)
    with run_in_thread(settings) as proxy:
        errors = httpx.get(proxy.base_url + "/costsplit/health").json()["recording_errors"]
        with file_size_limit(100):  # no room for the spool's first segment
            answered = httpx.post(proxy.base_url + CHAT, json=BODY, headers=AUTH)
            held = httpx.get(proxy.base_url + "/costsplit/health").json()
        assert answered.status_code == 200  # the call is forwarded all the same
        assert held == {
            "status": "degraded", "recording": True, "events_held": 1,
            "recording_errors": errors + 1,
        }  # fmt: skip
        # room again, and no call follows: the spool's background thread writes the event
        deadline = time.monotonic() + 10
        while httpx.get(proxy.base_url + "/costsplit/health").json()["events_held"]:
            assert time.monotonic() < deadline, "the held event was not written"
            time.sleep(0.05)
        [event] = events(settings)
    assert (event["outcome"], event["input_tokens"]) == (
        "ok",
        answered.json()["usage"]["prompt_tokens"],
    )
