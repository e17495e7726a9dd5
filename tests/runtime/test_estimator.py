"""Tests for collabinfer.runtime.estimator.LinkEstimator."""

from __future__ import annotations

import dataclasses

import pytest

from collabinfer.errors import ConfigError
from collabinfer.runtime.estimator import LinkEstimator
from collabinfer.runtime.link import BandwidthTrace, SimulatedLink
from collabinfer.topology.links import LinkProfile, get_profile


def run(link: SimulatedLink, est: LinkEstimator, n: int, nbytes: int, t: float) -> float:
    """Send ``n`` transfers back to back (1 s apart) and feed them to ``est``."""
    for _ in range(n):
        d = link.transfer(nbytes, t)
        est.observe(nbytes, d)
        t += d + 1.0
    return t


def test_converges_to_constant_link_bandwidth() -> None:
    true = dataclasses.replace(get_profile("lte"), jitter_ms=2.0)
    est = LinkEstimator(dataclasses.replace(true, bandwidth_mbps=1.0))
    run(SimulatedLink(true, seed=4), est, 20, 200_000, 0.0)
    assert est.bandwidth_mbps == pytest.approx(5.85, rel=0.05)
    assert est.samples == 20


def test_tracks_a_step_change() -> None:
    trace = BandwidthTrace((0.0, 100.0), (10.0, 2.0), period_s=1e6)
    link = SimulatedLink(LinkProfile("step", 10.0, rtt_ms=30.0, jitter_ms=1.0), trace, seed=1)
    est = LinkEstimator(LinkProfile("guess", 4.0, rtt_ms=30.0))
    t = run(link, est, 20, 100_000, 0.0)
    assert t < 100.0 and est.bandwidth_mbps == pytest.approx(10.0, rel=0.05)
    run(link, est, 15, 100_000, 100.0)
    assert est.bandwidth_mbps == pytest.approx(2.0, rel=0.05)


def test_tiny_transfers_only_update_rtt() -> None:
    link = SimulatedLink(get_profile("lte"))
    est = LinkEstimator(dataclasses.replace(get_profile("lte"), bandwidth_mbps=3.0, rtt_ms=200))
    run(link, est, 20, 100, 0.0)
    assert est.bandwidth_mbps == 3.0
    assert est.rtt_ms == pytest.approx(50.0, rel=0.05)


def test_transfer_faster_than_believed_delay_fixes_rtt_not_bandwidth() -> None:
    est = LinkEstimator(LinkProfile("x", 5.0, rtt_ms=400.0))
    est.observe(100_000, 0.15)  # would be a ~0 divisor with rtt/2 = 0.2 s
    assert est.bandwidth_mbps == 5.0 and est.rtt_ms == pytest.approx(0.7 * 400 + 0.3 * 300)


def test_explicit_rtt_samples() -> None:
    est = LinkEstimator(LinkProfile("x", 5.0, rtt_ms=100.0), alpha=0.5)
    est.observe_rtt(0.020)
    assert est.rtt_ms == pytest.approx(60.0) and est.samples == 1


def test_estimate_substitutes_only_bandwidth_and_rtt() -> None:
    initial = dataclasses.replace(get_profile("wifi"), jitter_ms=3.0, loss=0.01)
    est = LinkEstimator(initial)
    est.observe(50_000, 0.5)
    est.observe_rtt(0.03)
    got = est.estimate()
    assert (got.bandwidth_mbps, got.rtt_ms) == (est.bandwidth_mbps, est.rtt_ms)
    assert got == dataclasses.replace(initial, bandwidth_mbps=got.bandwidth_mbps, rtt_ms=got.rtt_ms)
    assert got.bandwidth_mbps < initial.bandwidth_mbps


def test_converged_estimate_predicts_the_true_link() -> None:
    true = get_profile("3g")
    est = LinkEstimator(dataclasses.replace(true, bandwidth_mbps=20.0))
    run(SimulatedLink(true), est, 25, 60_000, 0.0)
    predicted = SimulatedLink(est.estimate()).transfer(300_000, 0.0)
    assert predicted == pytest.approx(SimulatedLink(true).transfer(300_000, 0.0), rel=0.02)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError):
        LinkEstimator(get_profile("lte"), alpha=alpha)


@pytest.mark.parametrize(("nbytes", "seconds"), [(-1, 0.1), (10, 0.0), (10, float("nan"))])
def test_rejects_bad_observations(nbytes: int, seconds: float) -> None:
    est = LinkEstimator(get_profile("lte"))
    with pytest.raises(ConfigError):
        est.observe(nbytes, seconds)
    with pytest.raises(ConfigError):
        est.observe_rtt(-1.0)


def test_stale_estimate_relaxes_toward_nominal_and_fresh_samples_win() -> None:
    nominal = LinkProfile("n", 10.0, 20.0)
    est = LinkEstimator(nominal, alpha=1.0, recovery_s=2.0)
    slow = SimulatedLink(LinkProfile("slow", 0.5, 20.0))
    est.observe(50_000, slow.transfer(50_000, 0.0), at_s=0.0)
    fresh = est.estimate(now_s=1.0).bandwidth_mbps
    assert fresh == pytest.approx(0.5, rel=0.3)  # just measured: believed
    later = est.estimate(now_s=30.0).bandwidth_mbps
    assert later == pytest.approx(10.0, rel=0.01)  # 14 time constants: back to nominal
    mid = est.estimate(now_s=3.0).bandwidth_mbps
    assert fresh < mid < later
    # without recovery_s the estimate never moves on its own
    plain = LinkEstimator(nominal, alpha=1.0)
    plain.observe(50_000, slow.transfer(50_000, 0.0), at_s=0.0)
    assert plain.estimate(now_s=100.0).bandwidth_mbps == pytest.approx(0.5, rel=0.3)


def test_recovery_s_is_validated() -> None:
    with pytest.raises(ConfigError):
        LinkEstimator(LinkProfile("n", 10.0, 20.0), recovery_s=-1.0)
