"""Temperature scaling recovers a known temperature; ECE matches its definition."""

from __future__ import annotations

import pytest
import torch

from collabinfer.errors import ConfigError
from collabinfer.model.calibration import (
    T_MAX,
    T_MIN,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)


def _calibrated(n: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a perfectly calibrated model: labels are drawn from softmax(logits)."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, classes, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_fit_temperature_recovers_the_scale(scale: float) -> None:
    logits, labels = _calibrated(20_000)
    t = fit_temperature(logits * scale, labels)
    assert t == pytest.approx(scale, rel=0.10)


def test_scaling_lowers_ece_and_keeps_argmax() -> None:
    logits, labels = _calibrated(20_000, seed=1)
    over = logits * 3.0
    t = fit_temperature(over, labels)
    before = expected_calibration_error(torch.softmax(over, dim=1), labels)
    after = expected_calibration_error(torch.softmax(over / t, dim=1), labels)
    assert before > 0.05
    assert after < before / 3
    assert torch.equal((over / t).argmax(dim=1), over.argmax(dim=1))


def test_fit_temperature_is_deterministic_and_accepts_float32() -> None:
    logits, labels = _calibrated(2_000, seed=2)
    a = fit_temperature(logits * 2.0, labels)
    b = fit_temperature(logits * 2.0, labels)
    c = fit_temperature((logits * 2.0).float(), labels)
    assert a == b
    assert c == pytest.approx(a, rel=1e-4)


def test_fit_temperature_clamps_to_its_range() -> None:
    # always right with a huge margin: the NLL keeps falling as T -> 0
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]] * 10)
    labels = torch.tensor([0, 1] * 10)
    assert fit_temperature(logits, labels) == pytest.approx(T_MIN, rel=1e-6)
    # right half the time at any margin: the NLL keeps falling as T -> inf
    wrong = torch.tensor([0, 0] * 10)
    assert fit_temperature(logits, wrong) == pytest.approx(T_MAX, rel=1e-6)


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long)),  # not (N, C)
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),  # N = 0
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)),  # N mismatch
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long)),  # labels not (N,)
        (torch.zeros(4, 3), torch.zeros(4)),  # float labels
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])),  # label out of range
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),  # int logits
        (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long)),  # non-finite
    ],
)
def test_fit_temperature_rejects_bad_inputs(logits: torch.Tensor, labels: torch.Tensor) -> None:
    with pytest.raises(ConfigError):
        fit_temperature(logits, labels)


def test_fit_temperature_rejects_bad_max_iter() -> None:
    logits, labels = _calibrated(10)
    with pytest.raises(ConfigError, match="max_iter"):
        fit_temperature(logits, labels, max_iter=0)


def test_ece_of_a_calibrated_model_is_near_zero() -> None:
    logits, labels = _calibrated(200_000, seed=3)
    assert expected_calibration_error(torch.softmax(logits, dim=1), labels) < 0.01


def test_ece_hand_computed() -> None:
    # bins (0, .5], (.5, 1]; top-1 confidences .9 (right) .8 (wrong) .6 (right) .4 (right)
    probs = torch.tensor(
        [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.6, 0.4, 0.0], [0.4, 0.3, 0.3]],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 0, 0, 0])
    # upper bin: conf (.9 + .8 + .6) / 3, acc 2 / 3, gap 0.1, weight 3/4
    # lower bin: conf .4, acc 1, gap 0.6, weight 1/4
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.225, abs=1e-12)
    low, high = reliability_table(probs, labels, bins=2)
    assert (low.lo, low.hi, low.count, high.lo, high.hi, high.count) == (0.0, 0.5, 1, 0.5, 1.0, 3)
    assert low.confidence == pytest.approx(0.4)
    assert low.accuracy == 1.0
    assert high.confidence == pytest.approx(2.3 / 3)
    assert high.accuracy == pytest.approx(2 / 3)


def test_bins_are_right_closed() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    low, high = reliability_table(probs, torch.tensor([0, 0]), bins=2)
    assert (low.count, high.count) == (1, 1)


def test_table_sums_to_n_and_gives_the_ece() -> None:
    logits, labels = _calibrated(5_000, seed=4)
    probs = torch.softmax(logits * 2.0, dim=1)
    table = reliability_table(probs, labels, bins=15)
    assert len(table) == 15
    assert sum(b.count for b in table) == 5_000
    assert [b.lo for b in table[1:]] == pytest.approx([b.hi for b in table[:-1]])
    gap = sum(b.count * abs(b.accuracy - b.confidence) for b in table) / 5_000
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(gap)


def test_empty_bins_are_listed_with_zeros() -> None:
    probs = torch.tensor([[0.95, 0.05]] * 3)
    table = reliability_table(probs, torch.tensor([0, 0, 1]), bins=10)
    assert [b.count for b in table] == [0] * 9 + [3]
    assert all(b.confidence == 0.0 and b.accuracy == 0.0 for b in table[:9])


@pytest.mark.parametrize(
    "probs",
    [
        torch.tensor([[2.0, -1.0], [0.5, 0.5]]),  # logits, not probabilities
        torch.tensor([[0.2, 0.2], [0.5, 0.5]]),  # row does not sum to 1
    ],
)
def test_ece_rejects_non_probabilities(probs: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="logits"):
        expected_calibration_error(probs, torch.tensor([0, 1]))


def test_ece_rejects_bad_bins_and_shapes() -> None:
    probs = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ConfigError, match="bins"):
        expected_calibration_error(probs, torch.tensor([0]), bins=0)
    with pytest.raises(ConfigError, match="labels"):
        expected_calibration_error(probs, torch.tensor([0, 1]))
