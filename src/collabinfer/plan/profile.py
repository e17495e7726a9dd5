"""Profiles: per-block compute and per-cut bytes, the input of every plan.

A :class:`Profile` is measured once per model (``collabinfer profile``) and
read by the planner, the policy and the reports: FLOPs come from
``torch.utils.flop_counter`` (the path actually run), times are medians of
batch-1 repeats on this CPU, and bytes are the exact payload lengths of each
codec at each cut, plus the header that crosses the wire with them.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import torch
from torch.utils.flop_counter import FlopCounterMode

from collabinfer.codec import get_codec
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.gates import GatedResidual, gated_blocks, gates_forced

INPUT_CODECS = ("u8", "fp16", "fp32")  # what may carry the raw input (cut 0)
FEATURE_CODECS = ("fp32", "fp16", "int8")  # what may carry features


@dataclass(frozen=True)
class BlockProfile:
    index: int
    name: str
    flops: int
    params: int
    out_shape: tuple[int, ...]
    time_ms: float  # median at batch 1 on this CPU (a gated block: expected, see below)
    # A gated block (model/gates.py) costs one thing when its branch runs and another
    # when it is skipped; the chain charges whichever happened. ``time_ms``/``flops``
    # are then what the planner plans with: the branch-run values from
    # :func:`profile_model`, the rate-weighted expectation from :func:`with_gate_rates`.
    open_ms: float | None = None
    skip_ms: float | None = None
    skip_flops: int | None = None


@dataclass(frozen=True)
class CodecCost:
    payload_bytes: int
    header_bytes: int
    encode_ms: float
    decode_ms: float

    @property
    def wire_bytes(self) -> int:
        return self.payload_bytes + self.header_bytes


@dataclass(frozen=True)
class CutProfile:
    index: int
    name: str
    shape: tuple[int, ...]
    codecs: dict[str, CodecCost] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    model: str
    blocks: tuple[BlockProfile, ...]
    cuts: tuple[CutProfile, ...]
    repeats: int
    measured_on: str

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def total_ms(self) -> float:
        return sum(b.time_ms for b in self.blocks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        try:
            d = json.loads(text)
            blocks = tuple(
                BlockProfile(**{**b, "out_shape": tuple(b["out_shape"])}) for b in d["blocks"]
            )
            cuts = tuple(
                CutProfile(
                    c["index"],
                    c["name"],
                    tuple(c["shape"]),
                    {k: CodecCost(**v) for k, v in c["codecs"].items()},
                )
                for c in d["cuts"]
            )
            prof = cls(d["model"], blocks, cuts, int(d["repeats"]), str(d["measured_on"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a valid profile: {exc}") from exc
        if len(prof.cuts) != len(prof.blocks) + 1:
            raise ConfigError("a profile needs exactly one more cut than blocks")
        return prof

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.from_json(path.read_text())


def _flops(block: Callable[[torch.Tensor], object], x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        block(x)
    return int(counter.get_total_flops())


def with_gate_rates(profile: Profile, rates: dict[int, float]) -> Profile:
    """The profile the planner should use for a gated model: every gated block's
    ``time_ms`` and ``flops`` become their expectation at its execution rate
    (``rates[block index]``, measured on validation data)."""
    blocks = []
    for b in profile.blocks:
        if b.index in rates:
            if b.open_ms is None or b.skip_ms is None or b.skip_flops is None:
                raise ConfigError(f"block {b.index} ({b.name}) was not profiled as a gated block")
            r = rates[b.index]
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f"execution rate of block {b.index} must be in [0, 1], got {r}")
            b = replace(
                b,
                time_ms=r * b.open_ms + (1 - r) * b.skip_ms,
                flops=round(r * b.flops + (1 - r) * b.skip_flops),
            )
        blocks.append(b)
    return replace(profile, blocks=tuple(blocks))


def machine_label() -> str:
    cpu = f"{platform.machine()} {platform.processor() or ''}".strip()
    return f"{cpu}, torch threads={torch.get_num_threads()}"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Batch-1 timing on one core (stable, and fair to a device); restores the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def median_ms(fn: object, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


@torch.inference_mode()
def profile_model(
    net: BlockNet,
    model_name: str,
    repeats: int = 30,
    warmup: int = 5,
    input_codecs: Sequence[str] = INPUT_CODECS,
    feature_codecs: Sequence[str] = FEATURE_CODECS,
    sample: torch.Tensor | None = None,
    cut_codecs: dict[int, Sequence[str]] | None = None,
    byte_samples: torch.Tensor | None = None,
) -> Profile:
    """Measure ``net`` block by block at batch 1 on this CPU.

    ``cut_codecs`` adds codecs at particular cuts (a learned bottleneck's entropy
    codec only fits its own latent). Variable-size codecs need real inputs for a
    representative byte count: with ``byte_samples`` (N real inputs) every
    payload size is the mean over those inputs, each encoded on its own.
    """
    if repeats < 1:
        raise ConfigError("repeats must be >= 1")
    net.eval()
    if sample is None:
        if net.input_shape is None:
            raise ConfigError("profile_model needs a sample input or a net with input_shape")
        sample = torch.rand((1, *net.input_shape), generator=torch.Generator().manual_seed(0))
    # Inputs to every block, from one pass (every branch run).
    acts = [sample]
    with gates_forced(net, "open"):
        for block in net.blocks:
            acts.append(block(acts[-1]))
        for _ in range(warmup):
            net(sample)
    gated = {i for i, _ in gated_blocks(net)}
    # Times: interleave blocks in whole passes so cache/thermal effects spread evenly.
    # Gated blocks are timed with their branch forced to run and forced to skip.
    per_block: list[list[float]] = [[] for _ in net.blocks]
    skipped: list[list[float]] = [[] for _ in net.blocks]
    for _ in range(repeats):
        for mode, into in (("open", per_block), ("closed", skipped)):
            if mode == "closed" and not gated:
                continue
            with gates_forced(net, mode):
                for i, block in enumerate(net.blocks):
                    t0 = time.perf_counter()
                    block(acts[i])
                    into[i].append((time.perf_counter() - t0) * 1e3)
    blocks = []
    for i, block in enumerate(net.blocks):
        with gates_forced(net, "open"):
            flops = _flops(block, acts[i])
        prof = BlockProfile(
            index=i,
            name=net.block_names[i],
            flops=flops,
            params=sum(p.numel() for p in block.parameters()),
            out_shape=tuple(acts[i + 1].shape[1:]),
            time_ms=statistics.median(per_block[i]),
        )
        if i in gated:  # forced modes skip the gate itself: add what deciding costs
            decide = cast(GatedResidual, block).decide
            gate_ms = median_ms(lambda d=decide, a=acts[i]: d(a), repeats)
            gate_flops = _flops(decide, acts[i])
            with gates_forced(net, "closed"):
                skip_flops = _flops(block, acts[i])
            prof = replace(
                prof,
                time_ms=prof.time_ms + gate_ms,
                flops=prof.flops + gate_flops,
                open_ms=prof.time_ms + gate_ms,
                skip_ms=statistics.median(skipped[i]) + gate_ms,
                skip_flops=skip_flops + gate_flops,
            )
        blocks.append(prof)
    sample_acts = [byte_samples] if byte_samples is not None else []
    for block in net.blocks if byte_samples is not None else ():
        sample_acts.append(block(sample_acts[-1]))
    cuts = []
    for k, z in enumerate(acts):
        name = (
            "input"
            if k == 0
            else ("output" if k == net.num_blocks else f"after_{net.block_names[k - 1]}")
        )
        names = list(input_codecs if k == 0 else feature_codecs)
        names += [c for c in (cut_codecs or {}).get(k, ()) if c not in names]
        costs: dict[str, CodecCost] = {}
        for cname in names:
            codec = get_codec(cname)
            enc = codec.encode(z)
            payload = enc.payload_bytes
            if sample_acts:
                zs = sample_acts[k]
                sizes = [codec.encode(zs[i : i + 1]).payload_bytes for i in range(zs.shape[0])]
                payload = math.ceil(sum(sizes) / len(sizes))
            costs[cname] = CodecCost(
                payload_bytes=payload,
                header_bytes=enc.header_bytes,
                encode_ms=median_ms(lambda c=codec, z=z: c.encode(z), max(3, repeats // 3)),
                decode_ms=median_ms(lambda c=codec, e=enc: c.decode(e), max(3, repeats // 3)),
            )
        cuts.append(CutProfile(k, name, tuple(z.shape[1:]), costs))
    return Profile(model_name, tuple(blocks), tuple(cuts), repeats, machine_label())
