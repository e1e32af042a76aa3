"""What a simulator serves: its region, workspaces, keys, model list and fault knobs.

A `SimulatorConfig` is a frozen value built in code (`SimulatorConfig.default(region)`) or read
from TOML (`SimulatorConfig.from_toml(path)`, example in ``config/simulator.toml``). The model
list comes from ``costsplit/data/simulator_models.json`` (derived from the default price book):
a model that is not listed for the simulator's region, under its name or an alias, gets a 404.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from costsplit.errors import ConfigError

REGION_SHORT = {"ap-southeast-1": "intl", "cn-beijing": "cn", "us-east-1": "us"}
ANSWER_TOKENS = (16, 63)  # the fewest and most answer tokens of a choice, by default
# the default world also declares the keys of the paired region, which this one refuses (401)
_PAIRED = {"ap-southeast-1": ("cn-beijing",), "cn-beijing": ("ap-southeast-1",)}


@dataclass(frozen=True)
class SimWorkspace:
    """A workspace and the models granted to it (``models=None``: every model, as the default)."""

    id: str
    name: str
    models: tuple[str, ...] | None = None

    def grants(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True)
class SimKey:
    """An API key, the workspace it was created in, and the region it belongs to."""

    key: str
    workspace: str
    region: str


@dataclass(frozen=True)
class ModelInfo:
    """One served model: its canonical name, kind and whether it reports implicit cache hits."""

    name: str
    kind: str
    implicit_cache: bool


@cache
def _catalogue() -> dict[str, Any]:
    path = Path(__file__).resolve().parent.parent / "data" / "simulator_models.json"
    return json.loads(path.read_text("utf-8"))["regions"]


@cache
def region_models(region: str) -> Mapping[str, ModelInfo]:
    """Every model name and alias served in `region`, mapped to its canonical model."""
    served: dict[str, ModelInfo] = {}
    for name, row in _catalogue().get(region, {}).items():
        info = ModelInfo(name, row["kind"], row["implicit_cache"])
        served[name] = info
        for alias in row["aliases"]:
            served.setdefault(alias, info)
    return MappingProxyType(served)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything one simulator instance does. Faults here apply to every request.

    ``latency_ms``: delay before each response starts. ``first_byte_ms``: delay before the first
    body byte (streams send their headers first). ``cut_after``: streams close abruptly after that
    many chunks. ``error_rate``: share of requests answered with HTTP 500, drawn from a random
    generator seeded with ``seed``. ``rpm_limits``: requests per minute per canonical model,
    counted over all keys (as the real limits are per account). ``cache_block``: implicit-cache
    granularity and minimum in tokens. ``answer_tokens``: the fewest and most answer tokens of
    a choice (a request's ``max_tokens`` still caps them); the default answers are short, a
    benchmark or a demo may want long streams.
    """

    region: str = "ap-southeast-1"
    workspaces: tuple[SimWorkspace, ...] = ()
    keys: tuple[SimKey, ...] = ()
    latency_ms: int = 0
    first_byte_ms: int = 0
    cut_after: int | None = None
    error_rate: float = 0.0
    seed: int = 0
    rpm_limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    cache_block: int = 256
    answer_tokens: tuple[int, int] = ANSWER_TOKENS

    def __post_init__(self) -> None:
        fewest, most = self.answer_tokens
        if not 1 <= fewest <= most:
            raise ConfigError(
                f"simulator answer_tokens {list(self.answer_tokens)!r} must be two counts, "
                "1 <= fewest <= most"
            )

    @classmethod
    def default(cls, region: str = "ap-southeast-1", **overrides: Any) -> SimulatorConfig:
        """The demo world: a default workspace (all models) and two restricted ones, one key each.

        Keys are ``sk-sim-{default,support,research}-<short>`` with short ``intl`` for
        ap-southeast-1 and ``cn`` for cn-beijing. The paired region's keys are declared too
        (with their region), so using one here is answered 401 as on the real service.
        """
        if region not in REGION_SHORT:
            raise ConfigError(f"simulator region {region!r} is not one of {sorted(REGION_SHORT)}")
        workspaces = (
            SimWorkspace("ws-default0000000", "Default workspace", None),
            SimWorkspace(
                "ws-support0000000", "Support", ("qwen-plus", "qwen-flash", "text-embedding-v4")
            ),
            SimWorkspace(
                "ws-research000000",
                "Research",
                ("qwen3-max", "qwen-plus", "qwen-vl-max", "qwen3-vl-plus"),
            ),
        )
        keys = tuple(
            SimKey(f"sk-sim-{role}-{REGION_SHORT[key_region]}", ws.id, key_region)
            for key_region in (region, *(r for r in _PAIRED.get(region, ()) if r != region))
            for role, ws in zip(("default", "support", "research"), workspaces, strict=True)
        )
        return cls(region=region, workspaces=workspaces, keys=keys, **overrides)

    @classmethod
    def from_toml(cls, path: str | Path) -> SimulatorConfig:
        """Read a simulator config file; every bad value is named by file and key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> SimulatorConfig:
        """Build a config from the TOML structure (see ``config/simulator.toml``)."""
        sim = dict(data.get("simulator", {}))
        region = sim.pop("region", "ap-southeast-1")
        if region not in _catalogue():
            raise ConfigError(f"{source}: simulator.region {region!r} has no model list")
        knobs: dict[str, Any] = {}
        for name, kind in (
            ("latency_ms", int),
            ("first_byte_ms", int),
            ("cut_after", int),
            ("error_rate", float),
            ("seed", int),
            ("cache_block", int),
        ):
            if name in sim:
                value = sim.pop(name)
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ConfigError(f"{source}: simulator.{name} must be a number")
                knobs[name] = kind(value)
        if "answer_tokens" in sim:
            value = sim.pop("answer_tokens")
            if not (
                isinstance(value, list)
                and len(value) == 2
                and all(type(v) is int for v in value)
                and 1 <= value[0] <= value[1]
            ):
                raise ConfigError(
                    f"{source}: simulator.answer_tokens must be [fewest, most] with "
                    "1 <= fewest <= most"
                )
            knobs["answer_tokens"] = tuple(value)
        limits = sim.pop("rpm_limits", {})
        if not isinstance(limits, dict) or not all(
            isinstance(v, int) and v > 0 for v in limits.values()
        ):
            raise ConfigError(f"{source}: simulator.rpm_limits must map models to positive ints")
        if sim:
            raise ConfigError(f"{source}: unknown simulator keys {sorted(sim)}")
        workspaces = []
        for i, ws in enumerate(data.get("workspaces", [])):
            if "id" not in ws:
                raise ConfigError(f"{source}: workspaces[{i}].id is required")
            models = ws.get("models")
            workspaces.append(
                SimWorkspace(ws["id"], ws.get("name", ws["id"]), tuple(models) if models else None)
            )
        known = {ws.id for ws in workspaces}
        keys = []
        for i, key in enumerate(data.get("keys", [])):
            if key.get("workspace") not in known or "key" not in key:
                raise ConfigError(
                    f"{source}: keys[{i}] needs key and a workspace declared in [[workspaces]]"
                )
            keys.append(SimKey(key["key"], key["workspace"], key.get("region", region)))
        if not workspaces and not keys:
            default = cls.default(region) if region in REGION_SHORT else cls(region=region)
            workspaces, keys = list(default.workspaces), list(default.keys)
        return cls(
            region=region,
            workspaces=tuple(workspaces),
            keys=tuple(keys),
            rpm_limits=MappingProxyType(dict(limits)),
            **knobs,
        )

    def key(self, api_key: str) -> SimKey | None:
        """The declared key, or None."""
        for key in self.keys:
            if key.key == api_key:
                return key
        return None

    def workspace(self, workspace_id: str) -> SimWorkspace | None:
        for ws in self.workspaces:
            if ws.id == workspace_id:
                return ws
        return None
