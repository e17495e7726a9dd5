"""Tier specs: a name and how fast the tier computes relative to this CPU.

Compute on an *emulated* tier (``speed_factor != 1``) is charged its profiled
time on this machine multiplied by the factor (``> 1`` means slower, e.g. 100
for an IoT camera board); a tier at factor 1 is charged what it measured.
That emulation is only honest when labelled, so every report prints
:func:`describe_tiers`.

Why at the bottom of the package: the cost model, the planner, the engine,
the servers and the experiments all take tier specs, and the default
deployment (:func:`default_tiers`) is one fact they must share, not copy.

    >>> for part in describe_tiers(default_tiers()).split("; "):
    ...     print(part)
    device: emulated 100x slower than this CPU
    edge: this CPU (x1)
    cloud: emulated 2x faster than this CPU
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collabinfer.errors import ConfigError

__all__ = [
    "CLOUD_FACTOR",
    "DEVICE_FACTOR",
    "EDGE_FACTOR",
    "TierSpec",
    "check_tiers",
    "default_tiers",
    "describe_tiers",
]

# Why these factors (README, "Why these tiers"): the device stands for an
# IoT-class camera board (a microcontroller-class or low-clock Cortex-A core
# without tuned kernels), ~100x slower than one core of this CPU, so the full
# model's device time (~150 ms) is about 3x the edge round trip over LTE. The
# edge *is* this CPU. The cloud is a bigger server (2x faster) behind a WAN.
DEVICE_FACTOR = 100.0
EDGE_FACTOR = 1.0
CLOUD_FACTOR = 0.5


@dataclass(frozen=True)
class TierSpec:
    name: str
    speed_factor: float = 1.0  # compute time = time on this CPU x speed_factor
    note: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a tier needs a name")
        if not self.speed_factor > 0:
            raise ConfigError(
                f"tier {self.name!r}: speed_factor must be > 0, got {self.speed_factor}"
            )

    @property
    def emulated(self) -> bool:
        """Charged profiled time x factor instead of what it measured (see the module doc)."""
        return self.speed_factor != 1.0


def default_tiers(
    device_factor: float = DEVICE_FACTOR,
    edge_factor: float = EDGE_FACTOR,
    cloud_factor: float = CLOUD_FACTOR,
) -> list[TierSpec]:
    """Device, edge and cloud as Table 1 and the demo deploy them (labelled notes)."""
    return [
        TierSpec("device", device_factor, "IoT-class camera board (emulated)"),
        TierSpec("edge", edge_factor, "this CPU"),
        TierSpec("cloud", cloud_factor, "bigger server behind a WAN (emulated)"),
    ]


def check_tiers(tiers: Sequence[TierSpec]) -> None:
    if not tiers:
        raise ConfigError("at least one tier is needed")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ConfigError(f"tier names must be unique, got {names}")


def describe_tiers(tiers: Sequence[TierSpec]) -> str:
    """One line for reports: which tiers were emulated, and by what factor."""
    parts = []
    for t in tiers:
        if t.speed_factor == 1.0:
            parts.append(f"{t.name}: this CPU (x1)")
        elif t.speed_factor > 1.0:
            parts.append(f"{t.name}: emulated {t.speed_factor:g}x slower than this CPU")
        else:
            parts.append(f"{t.name}: emulated {1 / t.speed_factor:g}x faster than this CPU")
    return "; ".join(parts)
