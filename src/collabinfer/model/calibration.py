"""Confidence calibration for exit heads: temperature scaling and its check (ECE).

An early exit fires when a head's confidence passes a threshold, so the
confidence should mean what it says: among inputs a head answers with 0.9
confidence, about 90 % should be right. Deep networks are overconfident
(Guo et al., ICML 2017, "On Calibration of Modern Neural Networks").

*Temperature scaling* fixes that with one scalar per head: ``softmax(z / T)``.
One parameter cannot overfit a validation split of a few thousand inputs, and
dividing by ``T > 0`` keeps the argmax, so the head's accuracy is unchanged;
only its confidences move.

*Expected calibration error* (ECE) measures what is left: equal-width
confidence bins over the top-1 probability, ``sum_b |acc_b - conf_b| * n_b / N``.
Equal-width bins are the usual definition (Naeini et al., 2015; Guo et al.,
2017), so our numbers are comparable to papers'; :func:`reliability_table`
returns the bins themselves, and ECE is computed from them.

Example::

    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
    >>> labels = torch.tensor([0, 1, 0, 0])  # 3 of 4 right, each at 98 % confidence
    >>> t = fit_temperature(logits, labels)
    >>> round(t, 2)  # softens to 75 %: 4 / T = log 3
    3.64
    >>> round(expected_calibration_error(torch.softmax(logits / t, dim=1), labels), 3)
    0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from collabinfer.errors import ConfigError

T_MIN = 0.05  # temperatures searched: wide enough for any sane head,
T_MAX = 20.0  # narrow enough that a degenerate split cannot send T to 0 or inf
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...: bracket shrink per step
_SUM_TOL = 1e-3  # rows of ``probs`` must sum to 1 within this (catches logits)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin ``(lo, hi]`` (the first bin also holds confidence 0).

    ``confidence`` is the mean top-1 probability of the samples in the bin and
    ``accuracy`` the fraction of them whose top-1 class is the label. An empty
    bin has ``count == 0`` and both set to ``0.0``; it adds nothing to ECE.
    """

    lo: float
    hi: float
    count: int
    confidence: float
    accuracy: float


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` in ``[T_MIN, T_MAX]`` minimising the NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T`` (log-sum-exp of a linear function, minus a
    linear function), hence unimodal in ``log T``, so a golden-section search
    over ``log T`` finds the minimum without a learning rate, a starting point
    or randomness: the same inputs always give the same ``T``. A minimum
    outside the range (e.g. a head that is always right) is clamped to it.

    ``logits`` is ``(N, C)`` from a validation split, ``labels`` is ``(N,)``
    class indices. ``max_iter`` caps the golden-section steps; each shrinks the
    bracket by 0.618, so about 50 reach float precision and the search stops
    there.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an int >= 1, got {max_iter!r}")
    z, y = _check_inputs(logits, labels, "logits")
    if not bool(torch.isfinite(z).all()):
        raise ConfigError("logits must be finite")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(max_iter):
        if hi - lo < 1e-10:
            break
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(a)
        else:  # ... in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    return min(max(math.exp((lo + hi) / 2.0), T_MIN), T_MAX)


def reliability_table(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> list[ReliabilityBin]:
    """Top-1 confidence and accuracy in ``bins`` equal-width bins over ``[0, 1]``.

    Every bin is returned, empty ones included (``count == 0``, confidence and
    accuracy ``0.0``), so a reliability diagram has a fixed x axis. Bins are
    right-closed, ``(lo, hi]``; confidence exactly 0 falls in the first.
    ``probs`` is ``(N, C)`` probabilities (rows sum to 1), not logits.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be an int >= 1, got {bins!r}")
    p, y = _check_inputs(probs, labels, "probs")
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ConfigError("probs must lie in [0, 1]; did you pass logits?")
    if not bool(((p.sum(dim=1) - 1.0).abs() <= _SUM_TOL).all()):
        raise ConfigError("each row of probs must sum to 1; did you pass logits?")
    conf, pred = p.max(dim=1)
    hit = (pred == y).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i] < c <= edges[i + 1] for inner edges
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(idx, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    hit_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, hit)
    table = []
    for i in range(bins):
        n = int(count[i])
        table.append(
            ReliabilityBin(
                lo=float(edges[i]),
                hi=float(edges[i + 1]),
                count=n,
                confidence=float(conf_sum[i]) / n if n else 0.0,
                accuracy=float(hit_sum[i]) / n if n else 0.0,
            )
        )
    return table


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE as a fraction (0.02 = 2 %): the count-weighted gap of :func:`reliability_table`."""
    table = reliability_table(probs, labels, bins)
    total = sum(b.count for b in table)
    return sum(b.count * abs(b.accuracy - b.confidence) for b in table) / total


def _check_inputs(
    x: torch.Tensor, labels: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as float64 ``(N, C)`` and ``labels`` as int64 ``(N,)``, or ConfigError."""
    if not isinstance(x, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ConfigError(f"{name} and labels must be torch tensors")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ConfigError(f"{name} must have shape (N, C) with N, C >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ConfigError(
            f"labels must have shape ({x.shape[0]},) to match {name}, got {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ConfigError(f"labels must be integer class indices, got {labels.dtype}")
    y = labels.detach().cpu().to(torch.int64)
    num_classes = x.shape[1]
    if bool(((y < 0) | (y >= num_classes)).any()):
        raise ConfigError(f"labels must lie in 0..{num_classes - 1}")
    return x.detach().cpu().to(torch.float64), y
