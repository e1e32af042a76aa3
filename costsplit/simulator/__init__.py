"""A local Model Studio (DashScope) that speaks both API styles over real HTTP.

Public API::

    from costsplit.simulator import SimulatorConfig, SimKey, SimWorkspace, run_in_thread, usage_for

    with run_in_thread(SimulatorConfig.default("ap-southeast-1")) as sim:   # port 0 = free port
        sim.base_url   # "http://127.0.0.1:PORT"; also sim.region, sim.requests, sim.stop()
        # OpenAI(base_url=sim.base_url + "/compatible-mode/v1", api_key="sk-sim-default-intl")
        # dashscope.base_http_api_url = sim.base_url + "/api/v1"

Served paths: ``POST /compatible-mode/v1/chat/completions`` (stream and not),
``/compatible-mode/v1/embeddings``, ``/api/v1/services/aigc/text-generation/generation``,
``/api/v1/services/aigc/multimodal-generation/generation`` and
``/api/v1/services/embeddings/text-embedding/text-embedding`` (native streams with the header
``X-DashScope-SSE: enable``).

Default world (`SimulatorConfig.default(region)`; short = ``intl`` for ap-southeast-1, ``cn``
for cn-beijing):

    workspace           key                    granted models
    ws-default0000000   sk-sim-default-<short>  all models of the region
    ws-support0000000   sk-sim-support-<short>  qwen-plus, qwen-flash, text-embedding-v4
    ws-research000000   sk-sim-research-<short> qwen3-max, qwen-plus, qwen-vl-max, qwen3-vl-plus

A key of the other region (or any unknown key) gets 401 ``InvalidApiKey``/``invalid_api_key``; a
model outside the workspace's grants 403 ``Model.AccessDenied``; a model not in the region's
list (``costsplit/data/simulator_models.json``, from the price book, aliases included) 404
``ModelNotFound``/``model_not_found``; a malformed body 400 ``InvalidParameter``/
``invalid_parameter_error``; a model over its ``rpm_limits`` 429
``Throttling.RateQuota``/``limit_requests``.

Fault header, per request: ``X-Simulator-Fault: stream-error[=N], cut-after=N, status=500,
latency-ms=N, first-byte-ms=N`` (comma-separated). The same knobs exist globally in
`SimulatorConfig` (``latency_ms``, ``first_byte_ms``, ``cut_after``, ``error_rate`` + ``seed``,
``rpm_limits``). TOML: `SimulatorConfig.from_toml(path)`, example ``config/simulator.toml``.

Deterministic usage: ``usage_for(body, api_style, endpoint, *, region, cache_hit=False)`` returns
the exact usage object the simulator reports (api_style ``"compatible"`` with endpoints
``"chat"``/``"embeddings"``, or ``"native"`` with ``"text-generation"``,
``"multimodal-generation"``/``"text-embedding"``). The rules are in `costsplit.simulator.usage`.
"""

from __future__ import annotations

from costsplit.simulator.app import SeenRequest, build_app
from costsplit.simulator.config import SimKey, SimulatorConfig, SimWorkspace, region_models
from costsplit.simulator.faults import FAULT_HEADER
from costsplit.simulator.server import RunningSimulator, run_in_thread, serve_forever
from costsplit.simulator.usage import plan_request, text_tokens, usage_for

__all__ = [
    "FAULT_HEADER",
    "RunningSimulator",
    "SeenRequest",
    "SimKey",
    "SimWorkspace",
    "SimulatorConfig",
    "build_app",
    "plan_request",
    "region_models",
    "run_in_thread",
    "serve_forever",
    "text_tokens",
    "usage_for",
]
