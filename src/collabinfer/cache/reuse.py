"""What a tier's engine holds to reuse answers: the shared cache, its keys and rules.

:class:`Reuse` binds a :class:`~collabinfer.cache.semantic.SemanticCache` to one
hosted model: its name and weights hash (the namespace), a key function per
cut, and a hit rule per cut (chosen on validation streams for a target
precision, :func:`~collabinfer.cache.rule.solve_rule`). The engine
(:mod:`collabinfer.runtime.engine`) calls :meth:`Reuse.probe` when a request
arrives on the tier, before any block runs, and :meth:`Reuse.store` once the
request's answer is known (computed here, or sent back by the next tier).

A cut with no rule is not cached: a rule is fitted for the cut's features,
and a threshold for one cut means nothing for another.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from collabinfer.cache.keys import Keyer
from collabinfer.cache.rule import HitRule
from collabinfer.cache.semantic import Hit, Namespace, SemanticCache, Ticket

__all__ = ["Probe", "Reuse"]


class Probe(NamedTuple):
    """One lookup: where and under which key, what it found, and what it cost."""

    ns: Namespace
    key: np.ndarray
    hit: Hit | None
    ms: float  # key + lookup, wall time
    ticket: Ticket | None = None  # lets the insert after a miss skip its search


class Reuse:
    """A hosted model's view of a shared cache (see the module docstring)."""

    def __init__(
        self,
        cache: SemanticCache,
        model: str,
        weights: str,
        keys: Mapping[int, Keyer],
        rules: Mapping[int, HitRule],
    ) -> None:
        self.cache = cache
        self.model, self.weights = model, weights
        self.keys = dict(keys)
        self.rules = {cut: rule for cut, rule in rules.items() if cut in self.keys}
        self._ns = {
            cut: Namespace(model, weights, cut, key.version) for cut, key in self.keys.items()
        }

    def emptied(self) -> Reuse:
        """The same keys and rules over a new, empty cache of the same size and policy."""
        c = self.cache
        fresh = SemanticCache(c.max_bytes, c.eviction, c.ttl_s, c.clock, c.ann_above)
        return Reuse(fresh, self.model, self.weights, self.keys, self.rules)

    def covers(self, cut: int) -> bool:
        rule = self.rules.get(cut)
        return rule is not None and rule.enabled

    def probe(self, z: torch.Tensor, cut: int) -> Probe | None:
        """Key and look up one request's tensor at ``cut`` (None: this cut is not cached)."""
        if not self.covers(cut) or z.shape[0] != 1:
            return None
        t0 = time.perf_counter()
        key = self.keys[cut](z)
        ns = self._ns[cut]
        hit, ticket = self.cache.probe(ns, key, self.rules[cut])
        return Probe(ns, key, hit, (time.perf_counter() - t0) * 1e3, ticket)

    def store(self, probe: Probe, logits: torch.Tensor, cost_ms: float) -> float:
        """Insert the answer of a missed probe; returns the insert's wall ms."""
        t0 = time.perf_counter()
        row = logits.detach().reshape(1, -1).float().numpy()[0]
        self.cache.insert(probe.ns, probe.key, row, cost_ms, probe.ticket)
        return (time.perf_counter() - t0) * 1e3
