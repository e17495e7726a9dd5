"""Computational reuse: a semantic cache on the edge, keyed by the split's own features."""

from collabinfer.cache.keys import KEYS, FlatKey, Keyer, PooledKey, ProjectionKey, ProjectionNet
from collabinfer.cache.reuse import Probe, Reuse
from collabinfer.cache.rule import OFF, HitRule, RuleFit, simulate, solve_rule
from collabinfer.cache.semantic import EVICTIONS, CacheStats, Hit, Namespace, SemanticCache

__all__ = [
    "EVICTIONS",
    "KEYS",
    "OFF",
    "CacheStats",
    "FlatKey",
    "Hit",
    "HitRule",
    "Keyer",
    "Namespace",
    "PooledKey",
    "Probe",
    "ProjectionKey",
    "ProjectionNet",
    "Reuse",
    "RuleFit",
    "SemanticCache",
    "simulate",
    "solve_rule",
]
