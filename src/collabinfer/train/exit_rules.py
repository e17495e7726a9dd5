"""Choosing exit rules on the validation split: thresholds, scores and path conditions.

One pass records every exit's logits on every validation input (and which
gated blocks ran); from that record, :func:`exit_problem` builds the solver's
:class:`~collabinfer.plan.thresholds.ExitProblem` (per-input confidence,
correctness and the FLOPs an input spends if it leaves at each exit, heads
tried included), and:

* :func:`calibrated_rule`: per-exit thresholds on calibrated max-probability
  from :func:`~collabinfer.plan.thresholds.solve_thresholds` ("max accuracy
  with mean compute <= B" or "least compute with accuracy drop <= eps");
* :func:`entropy_rule`: the BranchyNet baseline, one entropy threshold shared
  by every exit, uncalibrated, the cheapest one within the same drop;
* path-aware conditions (paper 3.1.2, :func:`path_conditions`): exit ``e``
  is evaluated only on paths (which gated blocks before it ran) where, on
  validation, it fires often enough to pay for itself:
  ``P(fire | path) * FLOPs saved >= FLOPs of the head``. Paths seen fewer than
  ``min_count`` times keep the exit (no evidence, no change).

Everything here refuses the test split (:func:`require_tuning_split`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.model.blocks import BlockNet
from collabinfer.model.dynamic import NEVER, ExitRule, FlopsTable
from collabinfer.model.exits import ExitBranches, confidence
from collabinfer.model.gates import GatedResidual
from collabinfer.plan.thresholds import (
    ExitOutcome,
    ExitProblem,
    evaluate_thresholds,
    solve_thresholds,
)


@dataclass(frozen=True)
class ExitRecords:
    """Every exit evaluated on every input of one split, in one pass."""

    split: str
    cuts: tuple[int, ...]
    logits: torch.Tensor  # (E, N, C) raw (uncalibrated)
    final: torch.Tensor  # (N, C)
    labels: torch.Tensor  # (N,)
    ran: torch.Tensor  # (N, G) bool: gated block j ran its branch
    temperatures: tuple[float, ...]

    @property
    def path(self) -> torch.Tensor:
        weights = 1 << torch.arange(self.ran.shape[1], dtype=torch.int64)
        return (self.ran.long() * weights).sum(dim=1)


@torch.inference_mode()
def record_exits(
    backbone: BlockNet, exits: ExitBranches, data: Dataset, batch_size: int = 500
) -> ExitRecords:
    """Run ``data`` through the backbone (hard gates) and every exit head."""
    backbone.eval()
    exits.eval()
    at = {c - 1: e for e, c in enumerate(exits.cuts)}
    per_exit: list[list[torch.Tensor]] = [[] for _ in exits.cuts]
    finals, rans = [], []
    for i in range(0, len(data), batch_size):
        z = data.images[i : i + batch_size]
        cols = []
        for k, block in enumerate(backbone.blocks):
            z = block(z)
            if isinstance(block, GatedResidual):
                cols.append(cast(torch.Tensor, block.last_ran))
            e = at.get(k)
            if e is not None:
                per_exit[e].append(exits.logits(e, z))
        finals.append(z)
        rans.append(
            torch.stack(cols, 1) if cols else torch.zeros((z.shape[0], 0), dtype=torch.bool)
        )
    return ExitRecords(
        split=data.split,
        cuts=exits.cuts,
        logits=torch.stack([torch.cat(p) for p in per_exit]),
        final=torch.cat(finals),
        labels=data.labels.clone(),
        ran=torch.cat(rans),
        temperatures=tuple(float(t) for t in exits.temperature),
    )


def _prefix_masks(records: ExitRecords, flops: FlopsTable) -> list[int]:
    """For each exit, the bit mask of the gated blocks before its cut."""
    masks = []
    for c in records.cuts:
        m = 0
        for j, k in enumerate(flops.gate_index):
            if k < c:
                m |= 1 << j
        masks.append(m)
    return masks


def _block_costs(records: ExitRecords, flops: FlopsTable) -> np.ndarray:
    """(num_blocks, N): FLOPs of block k for input n given whether its gate opened."""
    n = records.labels.shape[0]
    out = np.tile(np.asarray(flops.block_open, dtype=np.float64)[:, None], (1, n))
    ran = records.ran.numpy()
    for j, k in enumerate(flops.gate_index):
        out[k] = np.where(ran[:, j], flops.block_open[k], flops.block_skip[k])
    return out


def evaluated_mask(
    records: ExitRecords,
    flops: FlopsTable,
    allowed_paths: Sequence[frozenset[int] | None] | None,
) -> np.ndarray:
    """(E, N) bool: exit e would be evaluated on input n's path."""
    num_exits, n = records.logits.shape[0], records.labels.shape[0]
    ok = np.ones((num_exits, n), dtype=bool)
    if allowed_paths is None:
        return ok
    path = records.path.numpy()
    for e, (mask, allowed) in enumerate(
        zip(_prefix_masks(records, flops), allowed_paths, strict=True)
    ):
        if allowed is not None:
            ok[e] = np.isin(path & mask, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
    return ok


def exit_problem(
    records: ExitRecords,
    flops: FlopsTable,
    score: str = "maxprob",
    allowed_paths: Sequence[frozenset[int] | None] | None = None,
) -> ExitProblem:
    """The solver's view of ``records``: confidence, correctness and FLOPs per exit."""
    num_exits = records.logits.shape[0]
    scores = np.empty((num_exits, records.labels.shape[0]))
    correct = np.empty((num_exits + 1, records.labels.shape[0]), dtype=bool)
    for e in range(num_exits):
        lg = records.logits[e]
        if score == "maxprob":
            lg = lg / records.temperatures[e]
        scores[e] = confidence(lg, score).double().numpy()
        correct[e] = (records.logits[e].argmax(1) == records.labels).numpy()
    correct[num_exits] = (records.final.argmax(1) == records.labels).numpy()
    evaluated = evaluated_mask(records, flops, allowed_paths)
    scores[~evaluated] = np.nan
    blocks = np.cumsum(_block_costs(records, flops), axis=0)  # blocks[k] = blocks 0..k
    heads = np.cumsum(evaluated * np.asarray(flops.head, dtype=np.float64)[:, None], axis=0)
    cost = np.empty((num_exits + 1, records.labels.shape[0]))
    for e, c in enumerate(records.cuts):
        cost[e] = blocks[c - 1] + heads[e]
    cost[num_exits] = blocks[-1] + (heads[-1] if num_exits else 0.0)
    return ExitProblem(scores, correct, cost)


def _check(records: ExitRecords) -> None:
    if records.split == "test":
        raise ConfigError("exit rules must not be chosen on the test split")


def path_conditions(
    records: ExitRecords,
    flops: FlopsTable,
    thresholds: Sequence[float],
    score: str = "maxprob",
    min_count: int = 20,
) -> tuple[frozenset[int] | None, ...]:
    """Paths on which each exit is worth evaluating (see the module docstring)."""
    _check(records)
    problem = exit_problem(records, flops, score)
    n = records.labels.shape[0]
    path = records.path.numpy()
    blocks = _block_costs(records, flops)
    running = np.ones(n, dtype=bool)
    out: list[frozenset[int] | None] = []
    for e, (mask, c) in enumerate(zip(_prefix_masks(records, flops), records.cuts, strict=True)):
        t = thresholds[e]
        fire = problem.scores[e] >= t
        if t == NEVER or mask == 0:
            out.append(None)  # off, or no gate before it: nothing to condition on
            running &= ~fire
            continue
        saved = blocks[c:].sum(axis=0)  # what leaving here saves each input
        keys = path & mask
        allowed = set()
        for p in np.unique(keys):
            sel = running & (keys == p)
            count = int(sel.sum())
            if count < min_count:
                allowed.add(int(p))
                continue
            gain = float((fire[sel] * saved[sel]).mean())
            if gain >= flops.head[e]:
                allowed.add(int(p))
        # unseen paths keep the exit too: list every mask value over these bits
        seen = {int(p) for p in np.unique(keys)}
        sub = mask
        while True:
            if sub not in seen:
                allowed.add(sub)
            if sub == 0:
                break
            sub = (sub - 1) & mask
        out.append(frozenset(allowed))
        running &= ~(fire & np.isin(keys, list(allowed)))
    return tuple(out)


@dataclass(frozen=True)
class ChosenRule:
    rule: ExitRule
    val: ExitOutcome  # what the rule does on the validation split (cost in FLOPs)


def calibrated_rule(
    records: ExitRecords,
    flops: FlopsTable,
    *,
    budget: float | None = None,
    max_drop: float | None = None,
    path_aware: bool = False,
    levels: int = 24,
) -> ChosenRule:
    """Per-exit thresholds on calibrated max-probability, from the solver."""
    _check(records)
    problem = exit_problem(records, flops, "maxprob")
    best = solve_thresholds(problem, budget=budget, max_drop=max_drop, levels=levels)
    allowed: tuple[frozenset[int] | None, ...] | None = None
    if path_aware:
        allowed = path_conditions(records, flops, best.thresholds)
        problem = exit_problem(records, flops, "maxprob", allowed)
        best = solve_thresholds(problem, budget=budget, max_drop=max_drop, levels=levels)
    return ChosenRule(ExitRule(best.thresholds, "maxprob", allowed), best)


def entropy_rule(
    records: ExitRecords, flops: FlopsTable, *, max_drop: float, levels: int = 64
) -> ChosenRule:
    """BranchyNet baseline: one uncalibrated entropy threshold for every exit.

    The cheapest shared threshold whose validation accuracy is within
    ``max_drop`` of the final classifier's (the same constraint the calibrated
    rule meets), searched over ``levels`` quantiles of the pooled scores.
    """
    _check(records)
    problem = exit_problem(records, flops, "entropy")
    pooled = np.sort(problem.scores[~np.isnan(problem.scores)])
    candidates = np.unique(pooled[(np.arange(levels) * len(pooled)) // levels])
    reference = float(problem.correct[-1].mean())
    best = evaluate_thresholds(problem, [math.inf] * problem.num_exits)
    for t in candidates:
        out = evaluate_thresholds(problem, [float(t)] * problem.num_exits)
        if out.accuracy >= reference - max_drop - 1e-12 and out.mean_cost < best.mean_cost:
            best = out
    return ChosenRule(ExitRule(best.thresholds, "entropy"), best)
