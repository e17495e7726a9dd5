"""Tests for collabinfer.runtime.link: profiles, traces and the simulated link."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collabinfer.errors import ConfigError
from collabinfer.runtime.link import BandwidthTrace, Link, SimulatedLink, synthetic_trace
from collabinfer.testing.links import MockLink
from collabinfer.topology.links import (
    HEADER_BYTES,
    PROFILES,
    LinkProfile,
    get_profile,
    packet_count,
    wire_bytes,
)

STEP = BandwidthTrace((0.0, 1.0, 3.0), (8.0, 2.0, 4.0), period_s=4.0)  # 16 Mbit per period


def naive_transfer(trace: BandwidthTrace, nbits: float, start: float) -> float:
    """Walk segment by segment: slow but obviously right."""
    k = math.floor(start / trace.period_s)
    r = start - k * trace.period_s
    i = max(j for j, s in enumerate(trace.times_s) if s <= r)
    ends = (*trace.times_s[1:], trace.period_s)
    left = nbits
    while True:
        bps = trace.mbps[i] * 1e6
        if left <= bps * (ends[i] - r):
            return k * trace.period_s + r + left / bps - start
        left -= bps * (ends[i] - r)
        i += 1
        if i == len(trace.times_s):
            i, k = 0, k + 1
        r = trace.times_s[i]


# ---- profiles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mbps", "rtt"),
    [("3g", 1.1, 120), ("lte", 5.85, 50), ("wifi", 18.88, 10), ("wan", 100, 40)],
)
def test_profile_values_and_assumption_notes(name: str, mbps: float, rtt: float) -> None:
    p = get_profile(name)
    assert (p.name, p.bandwidth_mbps, p.rtt_ms) == (name, mbps, rtt)
    assert "ASSUMPTION" in p.note
    if name != "wan":
        assert "Neurosurgeon" in p.note and "2017" in p.note


def test_profiles_registry() -> None:
    assert set(PROFILES) == {"3g", "lte", "wifi", "wan"}
    assert all(get_profile(k) is p and p.name == k for k, p in PROFILES.items())


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"3g, lte, wan, wifi"):
        get_profile("5g")


@pytest.mark.parametrize(
    "bad",
    [
        {"bandwidth_mbps": 0.0},
        {"bandwidth_mbps": math.inf},
        {"rtt_ms": -1.0},
        {"jitter_ms": -0.1},
        {"loss": 1.0},
        {"loss": -0.1},
        {"loss": math.nan},
        {"mtu_bytes": 40},
        {"mtu_bytes": 1500.0},
        {"name": ""},
    ],
)
def test_profile_rejects_bad_values(bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"name": "x", "bandwidth_mbps": 1.0, "rtt_ms": 10.0} | bad
    with pytest.raises(ConfigError):
        LinkProfile(**kwargs)


def test_packet_model() -> None:
    assert packet_count(0, 1500) == 1 and wire_bytes(0, 1500) == HEADER_BYTES
    assert packet_count(1460, 1500) == 1 and packet_count(1461, 1500) == 2
    assert wire_bytes(3000, 1500) == 3000 + 3 * HEADER_BYTES


# ---- traces ------------------------------------------------------------------------------


def test_trace_at_and_cycles() -> None:
    times = (0.0, 0.99, 1.0, 3.5, 4.0, 5.5, 401.2, 403.2)
    assert [STEP.at(t) for t in times] == [8, 8, 2, 4, 8, 2, 2, 4]
    assert STEP.mean_mbps() == pytest.approx(4.0)
    with pytest.raises(ConfigError):
        STEP.at(-1.0)


def test_transfer_crossing_segments_matches_hand_integral() -> None:
    # from 0.5: 0.5 s at 8 Mbit/s (4 Mbit) + 2 s at 2 (4 Mbit) + 0.5 s at 4 (2 Mbit)
    assert STEP.transfer_seconds(10e6, 0.5) == pytest.approx(3.0)
    # from 3.5: 0.5 s at 4 (2 Mbit) + one whole period (16 Mbit) + 0.25 s at 8 (2 Mbit)
    assert STEP.transfer_seconds(20e6, 3.5) == pytest.approx(4.75)
    assert STEP.transfer_seconds(0, 2.0) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_transfer_matches_naive_walk_and_is_additive(seed: int) -> None:
    trace = synthetic_trace(5.0, 60.0, seed=seed, step_s=0.7)
    for nbits, start in [(1e3, 0.0), (3e7, 12.3), (9e8, 59.9), (5e6, 1234.5)]:
        got = trace.transfer_seconds(nbits, start)
        assert got == pytest.approx(naive_transfer(trace, nbits, start), rel=1e-9)
        first = trace.transfer_seconds(nbits / 3, start)
        rest = trace.transfer_seconds(2 * nbits / 3, start + first)
        assert first + rest == pytest.approx(got, rel=1e-9)


def test_transfer_cost_does_not_grow_with_the_segments_it_spans() -> None:
    """O(log n) per transfer: spanning 18,000 segments costs about what spanning one
    does (both timed here, side by side; an O(n) walk would be ~1,000x slower)."""
    trace = synthetic_trace(10.0, 10_000.0, seed=1, step_s=0.5)  # 20_000 segments
    long_bits = trace.mean_mbps() * 1e6 * 9_000.0  # spans most of the trace
    short_bits = trace.mean_mbps() * 1e6 * 0.1  # within one segment

    def cost(nbits: float) -> float:
        t0 = time.perf_counter()
        for i in range(500):
            trace.transfer_seconds(nbits, float(i))
        return time.perf_counter() - t0

    cost(short_bits)  # warm up
    ratios = [cost(long_bits) / cost(short_bits) for _ in range(3)]
    assert min(ratios) < 20.0, ratios


@pytest.mark.parametrize(
    "args",
    [
        ((), (), 1.0),
        ((0.0, 1.0), (1.0,), 2.0),
        ((0.5,), (1.0,), 2.0),
        ((0.0, 1.0, 1.0), (1, 1, 1), 2.0),
        ((0.0,), (0.0,), 1.0),
        ((0.0, 1.0), (1.0, 2.0), 1.0),
    ],
)
def test_trace_rejects_bad_values(args: tuple[tuple[float, ...], tuple[float, ...], float]) -> None:
    with pytest.raises(ConfigError):
        BandwidthTrace(*args)


@pytest.mark.parametrize(
    ("mean", "duration", "step"), [(5.85, 100.0, 0.5), (1.1, 10.3, 0.4), (100.0, 0.2, 0.5)]
)
def test_synthetic_trace_mean_is_exact_and_positive(
    mean: float, duration: float, step: float
) -> None:
    trace = synthetic_trace(mean, duration, seed=3, step_s=step)
    assert trace.mean_mbps() == pytest.approx(mean, rel=1e-12)
    assert trace.period_s == duration and min(trace.mbps) > 0
    assert len(trace.times_s) == max(1, math.ceil(duration / step - 1e-9))


def test_synthetic_trace_seeded() -> None:
    assert synthetic_trace(5.0, 50.0, seed=7) == synthetic_trace(5.0, 50.0, seed=7)
    assert synthetic_trace(5.0, 50.0, seed=7).mbps != synthetic_trace(5.0, 50.0, seed=8).mbps


def test_synthetic_trace_volatility_and_dips() -> None:
    flat = synthetic_trace(4.0, 20.0, seed=0, volatility=0.0, dip_prob=0.0)
    assert flat.mbps == pytest.approx([4.0] * len(flat.mbps))
    logs = [math.log(r) for r in synthetic_trace(4.0, 2000.0, seed=0, dip_prob=0.0).mbps]
    mu = sum(logs) / len(logs)
    std = math.sqrt(sum((x - mu) ** 2 for x in logs) / len(logs))
    assert 0.4 < std < 0.6  # stationary std == volatility
    dipped = synthetic_trace(4.0, 20.0, seed=0, volatility=0.0, dip_prob=0.2, dip_factor=0.1)
    assert min(dipped.mbps) == pytest.approx(max(dipped.mbps) * 0.1)


@pytest.mark.parametrize(
    "bad",
    [
        {"mean_mbps": 0.0},
        {"duration_s": -1.0},
        {"step_s": 0.0},
        {"dip_prob": 1.5},
        {"dip_factor": 0.0},
        {"volatility": -1},
    ],
)
def test_synthetic_trace_rejects_bad_values(bad: dict[str, float]) -> None:
    kwargs: dict[str, Any] = {"mean_mbps": 5.0, "duration_s": 10.0, "seed": 0} | bad
    with pytest.raises(ConfigError):
        synthetic_trace(**kwargs)


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    trace = synthetic_trace(5.85, 30.3, seed=2)
    trace.to_csv(tmp_path / "t.csv")
    assert BandwidthTrace.from_csv(tmp_path / "t.csv") == trace


def test_csv_without_end_row_assumes_uniform_sampling(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("time_s,mbps\n0,5\n2,3\n4,1\n\n")
    assert BandwidthTrace.from_csv(tmp_path / "m.csv") == BandwidthTrace((0, 2, 4), (5, 3, 1), 6.0)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("time,bw\n0,5\n", 1),
        ("time_s,mbps\n0,5\n1,abc\n", 3),
        ("time_s,mbps\n0,5\n1,-2\n", 3),
        ("time_s,mbps\n0,5\n2,1\n1,1\n", 4),
        ("time_s,mbps\n0,5,7\n", 2),
        ("time_s,mbps\n1,5\n", 2),
        ("time_s,mbps\n0,5\n3,\n4,1\n", 4),
    ],
)
def test_malformed_csv_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ConfigError) as err:
        BandwidthTrace.from_csv(tmp_path / "bad.csv")
    assert err.value.context["line"] == line


def test_missing_csv_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        BandwidthTrace.from_csv(tmp_path / "nope.csv")


# ---- simulated link ----------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [0, 1, 1460, 1461, 100_000])
def test_constant_link_is_serialisation_plus_half_rtt(nbytes: int) -> None:
    p = get_profile("lte")
    nbits = 8 * (nbytes + HEADER_BYTES * max(1, math.ceil(nbytes / 1460)))
    expected = nbits / (p.bandwidth_mbps * 1e6) + p.rtt_ms / 2e3
    assert SimulatedLink(p).transfer(nbytes, 3.0) == pytest.approx(expected, rel=1e-12)


def test_traced_link_integrates_the_trace() -> None:
    link = SimulatedLink(LinkProfile("x", 1.0, rtt_ms=20.0, mtu_bytes=10_040), trace=STEP)
    # 1_250_000 payload bytes = 125 packets -> 1_255_000 wire bytes = 10.04 Mbit
    assert link.transfer(1_250_000, 0.5) == pytest.approx(
        STEP.transfer_seconds(10.04e6, 0.5) + 0.010
    )
    assert link.bandwidth_at(1.5) == 2.0 and SimulatedLink(get_profile("3g")).bandwidth_at(9) == 1.1


def noisy() -> LinkProfile:
    return LinkProfile("noisy", 5.0, rtt_ms=40.0, jitter_ms=5.0, loss=0.05)


def test_same_seed_same_durations_and_reset_repeats() -> None:
    a, b = SimulatedLink(noisy(), seed=11), SimulatedLink(noisy(), seed=11)
    calls = [(1000 * i, 0.1 * i) for i in range(100)]
    first = [a.transfer(n, t) for n, t in calls]
    assert first == [b.transfer(n, t) for n, t in calls]
    a.reset()
    assert first == [a.transfer(n, t) for n, t in calls]
    c = SimulatedLink(noisy(), seed=12)
    assert first != [c.transfer(n, t) for n, t in calls]


def test_jitter_is_truncated_at_zero_delay() -> None:
    link = SimulatedLink(LinkProfile("j", 8.0, rtt_ms=2.0, jitter_ms=50.0), seed=0)
    serial = 8 * HEADER_BYTES / 8e6
    durations = [link.transfer(0, 0.0) for _ in range(200)]
    assert min(durations) == pytest.approx(serial) and all(d >= serial for d in durations)
    assert max(durations) > serial + 0.05


def test_loss_adds_expected_retransmission_cost() -> None:
    p = LinkProfile("lossy", 5.0, rtt_ms=50.0, loss=0.1)
    lossless = SimulatedLink(LinkProfile("clean", 5.0, rtt_ms=50.0)).transfer(14_600, 0.0)
    link = SimulatedLink(p, seed=5)
    mean = sum(link.transfer(14_600, 0.0) for _ in range(2000)) / 2000
    expected_losses = 10 * 0.1 / 0.9  # 10 packets, geometric retries
    expected = lossless + expected_losses * (0.050 + 1500 * 8 / 5e6)
    assert mean == pytest.approx(expected, rel=0.05)
    assert mean > lossless * 1.3


# ---- contract over every Link ------------------------------------------------------------

LINKS: dict[str, Callable[[], Link]] = {
    "constant": lambda: SimulatedLink(get_profile("wifi")),
    "traced": lambda: SimulatedLink(get_profile("lte"), synthetic_trace(5.85, 20.0, seed=0)),
    "noisy": lambda: SimulatedLink(noisy(), seed=3),
    "mock": lambda: MockLink(seconds_per_byte=1e-6, latency_s=0.01),
}


@pytest.mark.parametrize("make", LINKS.values(), ids=list(LINKS))
def test_link_contract(make: Callable[[], Link]) -> None:
    link = make()
    assert isinstance(link, Link) and isinstance(link.profile, LinkProfile)
    for nbytes, start in [(0, 0.0), (10, 1.0), (50_000, 2.5), (2_000_000, 30.0)]:
        d = link.transfer(nbytes, start)
        assert math.isfinite(d) and d >= 0
    assert link.transfer(np.int64(1000), 0.0) >= 0  # type: ignore[arg-type]  # numpy sizes ok
    bad: list[tuple[Any, float]] = [(-1, 0.0), (1.5, 0.0), (True, 0.0), (10, -1.0), (10, math.nan)]
    for nbytes, start in bad:
        with pytest.raises(ConfigError):
            link.transfer(nbytes, start)
