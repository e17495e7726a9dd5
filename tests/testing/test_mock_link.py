"""Tests for collabinfer.testing.links.MockLink."""

from __future__ import annotations

from typing import Any

import pytest

from collabinfer.errors import ConfigError, LinkError
from collabinfer.runtime.link import Link
from collabinfer.testing.links import MockLink


def test_duration_and_calls_are_recorded() -> None:
    link = MockLink(seconds_per_byte=2e-6, latency_s=0.05)
    assert isinstance(link, Link)
    assert link.transfer(1000, 0.0) == pytest.approx(0.052)
    assert link.transfer(0, 1.5) == pytest.approx(0.05)
    assert link.calls == [(1000, 0.0), (0, 1.5)]


def test_profile_matches_duration_function() -> None:
    p = MockLink(seconds_per_byte=1e-6, latency_s=0.01).profile
    assert p.bandwidth_mbps == pytest.approx(8.0) and p.rtt_ms == pytest.approx(20.0)


def test_fails_on_chosen_calls_and_still_records_them() -> None:
    link = MockLink(latency_s=0.01, fail_on={1, 3})
    outcomes: list[str] = []
    for i in range(5):
        try:
            link.transfer(10 * i, float(i))
            outcomes.append("ok")
        except LinkError as e:
            assert e.context["call"] == i
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "ok", "fail", "ok"]
    assert [n for n, _ in link.calls] == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("kwargs", [{"seconds_per_byte": -1.0}, {"latency_s": float("inf")}])
def test_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        MockLink(**kwargs)
