"""Tier specs: a name and how fast the tier computes relative to this CPU.

Compute on a tier is *measured* on this machine and multiplied by the tier's
``speed_factor`` (``> 1`` means slower, e.g. 60 for an IoT camera board).
That emulation is only honest when labelled, so every report prints
:func:`describe_tiers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collabinfer.errors import ConfigError


@dataclass(frozen=True)
class TierSpec:
    name: str
    speed_factor: float = 1.0  # compute time = measured time on this CPU x speed_factor
    note: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a tier needs a name")
        if not self.speed_factor > 0:
            raise ConfigError(
                f"tier {self.name!r}: speed_factor must be > 0, got {self.speed_factor}"
            )


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
