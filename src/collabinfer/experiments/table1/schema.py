"""Table 1's types: its config, its rows and its result file, read back with checks.

Why apart from the orchestration (:mod:`~collabinfer.experiments.table1.run`):
the report, the CLI and the real-socket row read and write these types, and
none of them needs the code that runs the rows. :meth:`Table1Result.from_json`
is the only way a result file is read: a missing or mistyped field is a
:class:`~collabinfer.errors.ConfigError` that names it, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from collabinfer.cache.keys import KEYS
from collabinfer.data.workloads import WORKLOADS
from collabinfer.errors import ConfigError
from collabinfer.topology.links import get_profile
from collabinfer.topology.tiers import (
    CLOUD_FACTOR,
    DEVICE_FACTOR,
    EDGE_FACTOR,
    TierSpec,
    default_tiers,
)

__all__ = ["PARADIGMS", "Row", "Table1Config", "Table1Result"]

PARADIGMS = ("LC", "EC", "CC", "static-split", "collabinfer")


@dataclass(frozen=True)
class Table1Config:
    link: str = "lte"
    wan: str = "wan"
    fluctuating: bool = True
    trace_seed: int = 7
    volatility: float = 0.6
    arrival_interval_s: float = 0.1
    device_factor: float = DEVICE_FACTOR
    edge_factor: float = EDGE_FACTOR
    cloud_factor: float = CLOUD_FACTOR
    full_model: str = "fmnist-resnet"
    local_model: str = "fmnist-small"
    num_inputs: int = 10_000
    subset_seed: int = 0
    private_splits: bool = True
    ewma_alpha: float = 0.3
    recovery_s: float = 2.0
    real_sockets: bool = True  # the collabinfer row over real servers, relays and sockets
    real_inputs: int = 1000  # how many of the inputs the real-socket row runs (wall time!)
    dynamic: bool = True  # the collabinfer row runs the gated backbone with device exits
    dynamic_max_drop: float = 0.005  # validation accuracy the exit rule may give up
    bottleneck: bool = True  # offer the learned bottleneck to the collabinfer row
    bottleneck_max_drop: float = 0.01  # validation accuracy it may lose against the teacher
    link_seed: int = 0
    privacy: bool = True  # measure each row's privacy_ssim (inversion attacks on its sends)
    # The planner's privacy bound: the split rows may send only (cut, codec) pairs whose
    # strongest attack SSIM in ``attack_ssim`` (from a privacy assessment of full_model)
    # is <= max_attack_ssim. None: the blunt rule (private_splits) alone.
    max_attack_ssim: float | None = None
    attack_ssim: tuple[tuple[int, str, float], ...] = ()
    privacy_images: int = 48  # test images the attacks are scored on
    privacy_aux: int = 2000  # the attacker's training images (training split)
    paradigms: tuple[str, ...] = PARADIGMS
    # The request stream (data/workloads.py): "iid" is the plain test subset (no cache);
    # "video" and "multi-client" are streams with locality over test images, and the
    # collabinfer rows' edge runs the semantic cache on them.
    workload: str = "iid"
    workload_seed: int = 1000  # test streams; the cache's rules are fitted on seeds < 1000
    cache_mb: float = 64.0
    cache_key: str = "features"

    def __post_init__(self) -> None:
        get_profile(self.link)
        get_profile(self.wan)
        if self.num_inputs < 1 or self.arrival_interval_s <= 0:
            raise ConfigError("num_inputs and arrival_interval_s must be positive")
        if self.workload not in WORKLOADS:
            raise ConfigError(f"unknown workload {self.workload!r}; choose one of {WORKLOADS}")
        if self.cache_key not in KEYS or not self.cache_mb > 0:
            raise ConfigError(f"cache key must be one of {KEYS} and cache_mb > 0")
        unknown = set(self.paradigms) - set(PARADIGMS)
        if unknown:
            raise ConfigError(f"unknown paradigms {sorted(unknown)}; choose from {PARADIGMS}")

    def tiers(self) -> list[TierSpec]:
        return default_tiers(self.device_factor, self.edge_factor, self.cloud_factor)

    def privacy_map(self) -> dict[tuple[int, str], float] | None:
        """``attack_ssim`` as the planner reads it (None without a bound)."""
        if self.max_attack_ssim is None:
            return None
        if not self.attack_ssim:
            raise ConfigError("max_attack_ssim needs attack_ssim, the assessment's SSIM per send")
        return {(cut, codec): ssim for cut, codec, ssim in self.attack_ssim}

    @property
    def min_device_blocks(self) -> int:
        """1 keeps the raw input on the device in the split rows (``private_splits``)."""
        return 1 if self.private_splits else 0


@dataclass(frozen=True)
class Row:
    paradigm: str
    accuracy: float
    latency_p50_ms: float
    latency_p95_ms: float
    bytes_per_input: float
    raw_input_leaves_device: bool
    edge_cpu_ms_per_input: float
    measured_on: str
    plan: str = ""  # the plan (or, for collabinfer, how often each plan was chosen)
    fallbacks: int = 0
    num_inputs: int = 0
    exited_on_device: float = 0.0  # fraction of inputs answered by a device exit (0 bytes)
    sends: str = ""  # what left the device, "cut:codec" by frequency ("0:u8" is the image)
    privacy_ssim: float | None = None  # the strongest inversion attack's SSIM on those sends
    cache_hits: float | None = None  # fraction answered by the edge's semantic cache (None: none)


_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "paradigm": (str,),
    "accuracy": (int, float),
    "latency_p50_ms": (int, float),
    "latency_p95_ms": (int, float),
    "bytes_per_input": (int, float),
    "raw_input_leaves_device": (bool,),
    "edge_cpu_ms_per_input": (int, float),
    "measured_on": (str,),
    "plan": (str,),
    "fallbacks": (int,),
    "num_inputs": (int,),
    "exited_on_device": (int, float),
    "sends": (str,),
    "privacy_ssim": (type(None), int, float),
    "cache_hits": (type(None), int, float),
}
_CONDITION_KEYS = (
    "link_profile",
    "wan_profile",
    "fluctuating_trace",
    "num_inputs",
    "subset_seed",
    "arrival_interval_s",
    "tier_labels",
    "full_model",
    "local_model",
)


def _row(obj: object, where: str) -> Row:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object, got {type(obj).__name__}")
    names = {f.name for f in fields(Row)}
    unknown = set(obj) - names
    if unknown:
        raise ConfigError(f"{where} has unknown fields {sorted(unknown)}")
    required = {f.name for f in fields(Row) if f.default is dataclasses.MISSING}
    missing = required - set(obj)
    if missing:
        raise ConfigError(f"{where} lacks {sorted(missing)}")
    for key, value in obj.items():
        kinds = _ROW_TYPES[key]
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise ConfigError(f"{where}.{key} must be {kinds[-1].__name__}, got {value!r}")
    return Row(**obj)


@dataclass(frozen=True)
class Table1Result:
    conditions: dict[str, Any]
    rows: tuple[Row, ...]
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {"conditions": self.conditions, "rows": [dataclasses.asdict(r) for r in self.rows]}

    def row(self, paradigm: str) -> Row:
        for r in self.rows:
            if r.paradigm == paradigm:
                return r
        raise ConfigError(f"no row {paradigm!r}; rows: {[r.paradigm for r in self.rows]}")

    def save(self, out: Path) -> list[Path]:
        """``table1.json``, ``table1_latencies.json`` and the resolved ``config.json``."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "table1.json").write_text(json.dumps(self.to_json_dict(), indent=2))
        (out / "table1_latencies.json").write_text(json.dumps(self.latencies_ms))
        paths = [out / "table1.json", out / "table1_latencies.json"]
        if "config" in self.conditions:
            (out / "config.json").write_text(json.dumps(self.conditions["config"], indent=2))
            paths.append(out / "config.json")
        return paths

    @classmethod
    def from_json(cls, data: object, latencies: object = None) -> Table1Result:
        """The result from parsed JSON; anything malformed is a :class:`ConfigError`."""
        if not isinstance(data, dict) or set(data) != {"conditions", "rows"}:
            raise ConfigError("table1.json must be an object with keys 'conditions' and 'rows'")
        cond, rows = data["conditions"], data["rows"]
        if not isinstance(cond, dict):
            raise ConfigError("table1.json: 'conditions' must be an object")
        missing = [k for k in _CONDITION_KEYS if k not in cond]
        if missing:
            raise ConfigError(f"table1.json: conditions lack {missing}")
        if not isinstance(rows, list) or not rows:
            raise ConfigError("table1.json: 'rows' must be a non-empty list")
        parsed = tuple(_row(r, f"table1.json: rows[{i}]") for i, r in enumerate(rows))
        lat: dict[str, list[float]] = {}
        if latencies is not None:
            if not isinstance(latencies, dict):
                raise ConfigError("table1_latencies.json must map a row name to a list of ms")
            for name, values in latencies.items():
                if not isinstance(values, list) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values
                ):
                    raise ConfigError(f"table1_latencies.json: {name!r} must be a list of numbers")
                lat[str(name)] = [float(v) for v in values]
        return cls(cond, parsed, lat)

    @classmethod
    def load(cls, out: Path) -> Table1Result:
        """Read ``table1.json`` (and ``table1_latencies.json``) from ``out``."""
        try:
            data = json.loads((out / "table1.json").read_text())
            lat_path = out / "table1_latencies.json"
            latencies = json.loads(lat_path.read_text()) if lat_path.exists() else None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read Table 1 results in {out}: {exc}") from None
        return cls.from_json(data, latencies)
