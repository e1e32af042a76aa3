"""Benchmark what recording adds to a call, on an in-process upstream (no network, no server).

Measures, with the openai SDK's HTTP client (httpx2) and with httpx:
  1. the added cost per non-streamed chat call: median time of a call through
     ``RecordingTransport(MockTransport)`` minus the median through the bare ``MockTransport``,
     events appended to a real spool (target ≤ 50 µs); as wall time and as this thread's CPU
     time (steadier on a shared host);
  2. stream throughput: chunks per second read through the recording transport vs the bare one
     (target ≥ 95% of bare). The figure that answers the target: streams of about 200 chunks
     from the simulator in its own process on loopback (a real HTTP upstream, told to answer
     800 tokens), compatible whose caller did not ask for usage (costsplit injected
     include_usage and removes the usage-only chunk and the "usage":null members) or did, and
     native. Also, as a worst case no network gives, from the in-process upstream where a
     chunk costs the bare client under 1 µs, so the per-stream cost of recording (one event,
     as for a non-streamed call) weighs as much as the stream itself.

Run: python benchmarks/bench_record.py [--calls 5000] [--streams 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import httpx
import httpx2
import orjson

from costsplit.config import Settings
from costsplit.spool import Spool
from costsplit.transport import RecordingTransport
from costsplit.transport_httpx2 import Httpx2RecordingTransport

KEY = "sk-" + "0" * 32
CHAT_URL = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
NATIVE_URL = "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/text-generation/generation"
REQUEST = {"model": "qwen-plus", "messages": [{"role": "user", "content": "How much in March?"}]}
CHAT_BODY = orjson.dumps(
    {
        "id": "chatcmpl-3b7e1c52-8d4a-9f10-b6c2-5a0e7d91c4f8",
        "object": "chat.completion",
        "created": 1767692400,
        "model": "qwen-plus",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Support spent 1,284.50 USD. " * 8},
            }
        ],
        "usage": {
            "prompt_tokens": 3019,
            "completion_tokens": 104,
            "total_tokens": 3123,
            "prompt_tokens_details": {"cached_tokens": 2048},
        },
    }
)


def compatible_stream(chunks: int) -> list[bytes]:
    """Chunks as Model Studio sends them with include_usage (the reference capture's layout)."""
    tail = (b'"created":1767692460,"system_fingerprint":null,"model":"qwen-flash",'
            b'"id":"chatcmpl-9c41d0e7-2f6b-9a3e-8d15-c7a2b0f46e19"}\n\n')  # fmt: skip
    head = b',"object":"chat.completion.chunk","usage":null,'
    events = []
    for i in range(chunks - 2):
        choice = {"delta": {"content": f" word{i}"}, "index": 0, "logprobs": None,
                  "finish_reason": None}  # fmt: skip
        events.append(b'data: {"choices":' + orjson.dumps([choice]) + head + tail)
    usage = {"prompt_tokens": 58, "completion_tokens": chunks, "total_tokens": 58 + chunks}
    events.append(b'data: {"choices":[],"object":"chat.completion.chunk","usage":'
                  + orjson.dumps(usage) + b"," + tail)  # fmt: skip
    events.append(b"data: [DONE]\n\n")
    return events


def native_stream(chunks: int) -> list[bytes]:
    events = []
    for i in range(chunks):
        reason = "stop" if i == chunks - 1 else "null"
        body = {
            "output": {"choices": [{"message": {"content": f" w{i}"}, "finish_reason": reason}]},
            "usage": {"input_tokens": 16, "output_tokens": i + 1, "total_tokens": 17 + i},
            "request_id": "r-1",
        }
        events.append(f"id:{i + 1}\nevent:result\n:HTTP_STATUS/200\ndata:".encode()
                      + orjson.dumps(body) + b"\n\n")  # fmt: skip
    return events


def upstream(lib: ModuleType, stream: list[bytes] | None):
    """An in-process upstream: a canned JSON answer, or a stream yielding one event per chunk."""

    class Chunks(lib.SyncByteStream):
        def __iter__(self):
            yield from stream

    def handle(request):
        if stream is None:
            return lib.Response(
                200, content=CHAT_BODY, headers={"content-type": "application/json"}
            )
        return lib.Response(200, stream=Chunks(), headers={"content-type": "text/event-stream"})

    return lib.MockTransport(handle)


def clients(lib: ModuleType, recording: type, spool: Spool, stream: list[bytes] | None):
    bare = lib.Client(transport=upstream(lib, stream))
    recorded_transport = recording(upstream(lib, stream), sink=spool, settings=Settings())
    return bare, lib.Client(transport=recorded_transport)


def per_call_us(client, calls: int) -> tuple[float, float]:
    """(median wall µs, mean CPU µs of this thread) per call."""
    headers = {"Authorization": f"Bearer {KEY}"}
    timings = []
    cpu = time.thread_time()
    for _ in range(calls):
        start = time.perf_counter_ns()
        client.post(CHAT_URL, json=REQUEST, headers=headers).read()
        timings.append(time.perf_counter_ns() - start)
    cpu = time.thread_time() - cpu
    return statistics.median(timings) / 1000, cpu / calls * 1e6


def chunks_per_second(client, url: str, body: dict, streams: int, chunks: int) -> float:
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-SSE": "enable"}
    start = time.perf_counter()
    for _ in range(streams):
        with client.stream("POST", url, json=body, headers=headers) as response:
            for _chunk in response.iter_raw():
                pass
    return streams * chunks / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        spool = Spool(Path(folder), fsync_interval=0.05)
        for lib, recording in ((httpx2, Httpx2RecordingTransport), (httpx, RecordingTransport)):
            bare, recorded = clients(lib, recording, spool, None)
            per_call_us(bare, 500), per_call_us(recorded, 500)  # warm up
            added, added_cpu = [], []
            for _ in range(args.rounds):
                (plain, plain_cpu), (with_recording, recording_cpu) = (
                    per_call_us(bare, args.calls),
                    per_call_us(recorded, args.calls),
                )
                added.append(with_recording - plain)
                added_cpu.append(recording_cpu - plain_cpu)
            print(f"{lib.__name__:6} non-streamed call: bare {plain:.1f} µs, recorded "
                  f"{with_recording:.1f} µs, added {statistics.median(added):.1f} µs wall, "
                  f"{statistics.median(added_cpu):.1f} µs CPU "
                  f"(median of {args.rounds} rounds; target ≤ 50)")  # fmt: skip
            asked = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
            cases = (
                ("compatible (filtered)", compatible_stream(args.chunks), CHAT_URL,
                 {**REQUEST, "stream": True}),
                ("compatible (usage asked)", compatible_stream(args.chunks), CHAT_URL, asked),
                ("native", native_stream(args.chunks), NATIVE_URL, {"model": "qwen-plus"}),
            )  # fmt: skip
            for name, events, url, body in cases:
                bare, recorded = clients(lib, recording, spool, events)
                ratios = []
                for _ in range(args.rounds):
                    plain = chunks_per_second(bare, url, body, args.streams, len(events))
                    through = chunks_per_second(recorded, url, body, args.streams, len(events))
                    ratios.append(through / plain)
                print(f"{lib.__name__:6} stream {name}: bare {plain:,.0f} chunks/s, recorded "
                      f"{through:,.0f} chunks/s, ratio {statistics.median(ratios):.1%} "
                      f"(median of {args.rounds}; target ≥ 95%)")  # fmt: skip
        loopback_streams(spool, args.rounds, max(args.streams // 3, 20))
        spool.close()


def loopback_streams(spool: Spool, rounds: int, streams: int) -> None:
    """Streams from the simulator in its own process: the upstream does not share our GIL.

    Bare and recorded streams alternate one by one, so the drift of a shared host's speed falls
    on both alike; the ratio of chunks per second is given per round with the median, and
    beside it the ratio of this thread's CPU time per chunk (what recording adds in the caller).

    The simulator is told to answer 800 tokens (about 200 chunks of 4 tokens, as Model Studio
    streams an answer of a few paragraphs), so a stream is long enough for its chunks, not the
    request around them, to set the pace.
    """
    prompt = [{"role": "user", "content": "Explain the March bill. " * 20}]
    cases = (
        ("compatible, filtered", "/compatible-mode/v1/chat/completions",
         {"model": "qwen-plus", "stream": True, "messages": prompt}),
        ("compatible, usage asked", "/compatible-mode/v1/chat/completions",
         {"model": "qwen-plus", "stream": True, "messages": prompt,
          "stream_options": {"include_usage": True}}),
        ("native, incremental", "/api/v1/services/aigc/text-generation/generation",
         {"model": "qwen-plus", "input": {"messages": prompt},
          "parameters": {"incremental_output": True}}),
    )  # fmt: skip
    headers = {"Authorization": "Bearer sk-sim-default-intl", "X-DashScope-SSE": "enable"}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "simulator.toml"
        config.write_text("[simulator]\nanswer_tokens = [800, 800]\n")
        command = [sys.executable, "-c", "from costsplit.cli import main; main()", "simulate",
                   "--config", str(config)]  # fmt: skip
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            base = server.stdout.readline().strip()
            transport = Httpx2RecordingTransport(
                sink=spool, settings=Settings(), region="ap-southeast-1"
            )
            with httpx2.Client() as bare, httpx2.Client(transport=transport) as recorded:
                for name, path, body in cases:

                    def one(client, path=path, body=body) -> tuple[float, float, int]:
                        """(wall s, this thread's CPU s, chunks) of one whole stream."""
                        wall, cpu, chunks = time.perf_counter(), time.thread_time(), 0
                        with client.stream(
                            "POST", base + path, json=body, headers=headers
                        ) as response:
                            for _ in response.iter_raw():
                                chunks += 1
                        return time.perf_counter() - wall, time.thread_time() - cpu, chunks

                    one(bare), one(recorded)
                    walls, cpus = [], []
                    for _ in range(rounds):
                        # One bare stream, one recorded, in turn (which goes first alternates):
                        # the host's speed drifts within seconds, and so falls on both alike.
                        totals = {id(bare): [0.0, 0.0, 0], id(recorded): [0.0, 0.0, 0]}
                        for i in range(streams):
                            pair = (bare, recorded) if i % 2 else (recorded, bare)
                            for client in pair:
                                figures = one(client)
                                total = totals[id(client)]
                                for k in range(3):
                                    total[k] += figures[k]
                        (b_wall, b_cpu, b_chunks) = totals[id(bare)]
                        (r_wall, r_cpu, r_chunks) = totals[id(recorded)]
                        walls.append((r_chunks / r_wall) / (b_chunks / b_wall))
                        cpus.append((b_cpu / b_chunks) / (r_cpu / r_chunks))
                    ratio = statistics.median(walls)
                    print(f"httpx2 stream over loopback ({name}, {b_chunks / streams:.0f} chunks "
                          f"a stream): bare {b_chunks / b_wall:,.0f} chunks/s, recorded "
                          f"{r_chunks / r_wall:,.0f} chunks/s, ratio {ratio:.1%} "
                          f"(median of {rounds}: {', '.join(f'{w:.1%}' for w in walls)}; target "
                          f"≥ 95%); client CPU per chunk {b_cpu / b_chunks * 1e6:.1f} µs bare, "
                          f"{r_cpu / r_chunks * 1e6:.1f} µs recorded: ratio "
                          f"{statistics.median(cpus):.1%}")  # fmt: skip
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
