"""The hit rule (H-kNN consensus) and the solver that picks it for a target precision.

A lookup hits when the ``k`` nearest entries all lie within squared distance
``tau`` of the key and agree on the label (FoggyCache's H-kNN). ``k`` and
``tau`` trade hit rate against precision the way an exit threshold trades
exits against accuracy, so they are chosen the same way: on validation
streams, the rule with the most hits whose hit precision (against the model's
own answer) reaches the target.

Why simulate and not score pairs: what a lookup finds depends on what was
inserted before it, and only misses insert, so the rule changes the cache it
is judged on. :func:`simulate` replays a stream through an exact cache of
unbounded size; :func:`solve_rule` runs it for every grid point (``k`` in
``ks``, ``tau`` from the quantiles of the nearest-neighbour distances seen),
and its brute-force twin in the tests is :func:`simulate` on each point.

Give it **validation streams only** (the caller decides which split they come
from; nothing here can tell).

Example::

    >>> import numpy as np
    >>> keys = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
    >>> labels = np.array([0, 0, 1, 1])
    >>> sim = simulate([(keys, labels)], HitRule(1, 0.01))
    >>> sim.hits, sim.correct
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from collabinfer.errors import ConfigError

__all__ = [
    "OFF",
    "GridPoint",
    "HitRule",
    "RuleFit",
    "Simulation",
    "Stream",
    "simulate",
    "solve_rule",
]

DEDUPE_DIST = 1e-6
"""Squared distance under which an insert refreshes the entry it finds under the same
label instead of adding one (above float32 rounding of the expanded distance, ~1e-7 for
unit keys); :mod:`~collabinfer.cache.semantic` and :func:`simulate` share it."""
DEFAULT_PRECISION = 0.99
TAU_LEVELS = 24
DEFAULT_KS = (1, 2, 3, 5)
DEFAULT_CONFIDENCES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)


Stream = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]
"""(keys ``(T, d)``, the model's labels ``(T,)``[, the answers' confidence ``(T,)``])."""


@dataclass(frozen=True)
class HitRule:
    """Hit when the ``k`` nearest entries lie within ``tau``, agree on the label, and each
    answered with softmax confidence >= ``min_confidence``.

    Why the confidence floor: the model itself flips between two near-identical
    views of an ambiguous object (measured on validation video streams: about 1
    consecutive frame in 20 changes answer), so an entry stored from an
    ambiguous input is a poor answer for its neighbours however close they are;
    its own confidence says so, and costs nothing to keep.
    """

    k: int
    tau: float  # squared L2 distance; keys are unit vectors, so 0 <= tau <= 4
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"the hit rule needs k >= 1, got {self.k}")
        if not self.tau >= 0:
            raise ConfigError(f"the hit rule needs tau >= 0, got {self.tau}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in [0, 1], got {self.min_confidence}")

    @property
    def enabled(self) -> bool:
        return self.tau > 0

    def to_json(self) -> dict[str, float]:
        return {"k": self.k, "tau": self.tau, "min_confidence": self.min_confidence}


OFF = HitRule(1, 0.0)
"""Never hits (the solver's answer when no rule reaches the target)."""


class GridPoint(NamedTuple):
    k: int
    tau: float
    min_confidence: float
    hit_rate: float
    precision: float


@dataclass(frozen=True)
class Simulation:
    requests: int
    hits: int
    correct: int  # hits whose label equals the model's own answer
    hit_flags: np.ndarray  # (requests,) bool, the streams concatenated
    answers: np.ndarray  # (requests,) the label answered (cached on a hit, else the model's)
    per_stream: tuple[tuple[int, int], ...] = ()  # (hits, correct) of each stream

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def precision(self) -> float:
        return self.correct / self.hits if self.hits else 1.0

    @property
    def worst_precision(self) -> float:
        """The lowest precision over the streams that hit at all (1.0: none did)."""
        return min((c / h for h, c in self.per_stream if h), default=1.0)


@dataclass(frozen=True)
class RuleFit:
    rule: HitRule
    target: float
    hit_rate: float  # on the validation streams
    precision: float
    grid: tuple[GridPoint, ...]


class _Prepared(NamedTuple):
    """One stream's neighbours, computed once for every rule: for request ``t``, its
    predecessors within ``max_tau``, nearest first (indices and squared distances)."""

    labels: np.ndarray
    confidence: np.ndarray
    near: list[np.ndarray]
    dist: list[np.ndarray]


def _prepare(stream: Stream, max_tau: float) -> _Prepared:
    keys = np.ascontiguousarray(stream[0], dtype=np.float32)
    labels = np.asarray(stream[1], dtype=np.int64)
    conf = np.asarray(stream[2], dtype=np.float64) if len(stream) > 2 else np.ones(len(labels))
    sq = (keys * keys).sum(1)
    pair = np.maximum(sq[:, None] - 2.0 * (keys @ keys.T) + sq[None, :], 0.0)  # one matmul
    near, dist = [], []
    for t in range(len(keys)):
        d = pair[t, :t]
        idx = np.flatnonzero(d <= max_tau)
        order = idx[np.argsort(d[idx], kind="stable")]
        near.append(order)
        dist.append(d[order])
    return _Prepared(labels, conf, near, dist)


def _replay(p: _Prepared, rule: HitRule) -> tuple[np.ndarray, np.ndarray]:
    """Hit flags and answers of one prepared stream under ``rule`` (misses insert)."""
    t_len = len(p.labels)
    held = np.zeros(t_len, dtype=bool)
    hit = np.zeros(t_len, dtype=bool)
    answer = p.labels.copy()
    confidence = p.confidence.copy()  # a refreshed entry takes its new answer's
    k, tau, floor = rule.k, rule.tau, rule.min_confidence
    for t in range(t_len):
        found: list[int] = []
        if rule.enabled:
            for j, d in zip(p.near[t], p.dist[t], strict=True):
                if d > tau:
                    break
                if held[j]:
                    found.append(int(j))
                    if len(found) == k:
                        break
        if len(found) == k:
            lab = p.labels[found]
            if (lab == lab[0]).all() and (confidence[found] >= floor).all():
                hit[t] = True
                answer[t] = lab[0]
                continue
        twin = _twin(p, held, t)
        if twin is not None:  # the cache refreshes an entry it holds under the same key
            confidence[twin] = p.confidence[t]
            continue
        held[t] = True
    return hit, answer


def _twin(p: _Prepared, held: np.ndarray, t: int) -> int | None:
    """The held entry an insert of ``t`` would refresh instead of adding one (the cache's
    dedupe: the nearest held key within ``DEDUPE_DIST``, under the same label)."""
    for j, d in zip(p.near[t], p.dist[t], strict=True):
        if d > DEDUPE_DIST:
            return None
        if held[j]:
            return int(j) if p.labels[j] == p.labels[t] else None
    return None


def simulate(streams: Sequence[Stream], rule: HitRule) -> Simulation:
    """Replay each stream through an empty, unbounded exact cache under ``rule``."""
    return _simulate([_prepare(s, max(rule.tau, DEDUPE_DIST)) for s in streams], rule)


def _simulate(prepared: Sequence[_Prepared], rule: HitRule) -> Simulation:
    flags, answers, per_stream = [], [], []
    for p in prepared:
        h, a = _replay(p, rule)
        flags.append(h)
        answers.append(a)
        per_stream.append((int(h.sum()), int((h & (a == p.labels)).sum())))
    hit_flags = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    answered = np.concatenate(answers) if answers else np.zeros(0, dtype=np.int64)
    hits = sum(h for h, _ in per_stream)
    correct = sum(c for _, c in per_stream)
    return Simulation(len(hit_flags), hits, correct, hit_flags, answered, tuple(per_stream))


def tau_grid(streams: Sequence[Stream], levels: int) -> np.ndarray:
    """Candidate taus: quantiles of each request's distance to its nearest predecessor."""
    nearest = []
    for stream in streams:
        keys = np.asarray(stream[0], dtype=np.float32)
        if len(keys) < 2:
            continue
        sq = (keys * keys).sum(1)
        d = sq[:, None] - 2.0 * keys @ keys.T + sq[None, :]
        d[np.triu_indices(len(keys))] = np.inf  # only earlier requests
        nearest.append(d[1:].min(1))
    pooled = np.concatenate(nearest) if nearest else np.zeros(0)
    pooled = np.maximum(pooled[np.isfinite(pooled)], 0.0)
    if len(pooled) == 0:
        return np.zeros(0)
    qs = np.quantile(pooled, np.linspace(0.0, 1.0, levels + 1)[1:])
    return np.unique(qs[qs > 0])


def solve_rule(
    streams: Sequence[Stream],
    target: float = DEFAULT_PRECISION,
    ks: Sequence[int] = DEFAULT_KS,
    levels: int = TAU_LEVELS,
    confidences: Sequence[float] = DEFAULT_CONFIDENCES,
) -> RuleFit:
    """The rule with the most hits whose precision reaches ``target`` on *every* stream
    that hits (ties: smaller tau, then smaller k, then lower floor); :data:`OFF` when
    none does. Per stream, because the edge cannot tell a video stream from an
    i.i.d. one: a rule precise on the pooled hits can still be imprecise on the
    stream whose hits are rare look-alikes (measured: 99 % pooled on validation,
    96-97 % on the i.i.d. test stream)."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"the precision target must be in (0, 1], got {target}")
    taus = tau_grid(streams, levels)
    if len(taus) == 0:
        return RuleFit(OFF, target, 0.0, 1.0, ())
    prepared = [_prepare(s, max(float(taus.max()), DEDUPE_DIST)) for s in streams]
    grid = []
    best: tuple[int, float, int, float] | None = None
    best_sim: Simulation | None = None
    best_rule = OFF
    for k in ks:
        for floor in confidences:
            for tau in taus:
                rule = HitRule(int(k), float(tau), float(floor))
                sim = _simulate(prepared, rule)
                grid.append(
                    GridPoint(rule.k, rule.tau, rule.min_confidence, sim.hit_rate, sim.precision)
                )
                if sim.hits == 0 or sim.worst_precision < target:
                    continue  # every stream must reach it: the edge cannot tell them apart
                score = (sim.hits, -rule.tau, -rule.k, -rule.min_confidence)
                if best is None or score > best:
                    best, best_sim, best_rule = score, sim, rule
    if best_sim is None:
        return RuleFit(OFF, target, 0.0, 1.0, tuple(grid))
    return RuleFit(best_rule, target, best_sim.hit_rate, best_sim.precision, tuple(grid))
