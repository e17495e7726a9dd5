"""The circuit breaker: open after a failure, one trial after the back-off, doubling on failure."""

from __future__ import annotations

import doctest

import pytest

from collabinfer.errors import ConfigError
from collabinfer.runtime import breaker as breaker_module
from collabinfer.runtime.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_docstring_example() -> None:
    assert doctest.testmod(breaker_module).failed == 0


def test_back_off_doubles_on_failed_trials_up_to_the_cap_and_resets_on_success() -> None:
    clock = Clock()
    b = CircuitBreaker(1.0, 4.0, clock=clock)
    b.failure()
    waits = []
    for _ in range(4):  # every trial fails
        waits.append(b.retry_in_s())
        clock.now += b.retry_in_s()
        assert b.allow() == "trial"
        b.failure()
    assert waits == [1.0, 2.0, 4.0, 4.0]
    clock.now += 4.0
    assert b.allow() == "trial"
    b.success()
    assert b.state == "closed" and b.allow() == "send" and b.opened == 1
    b.failure()
    assert b.retry_in_s() == 1.0  # a fresh failure starts from the base again


def test_a_trial_that_never_reports_is_given_up_after_the_cap() -> None:
    clock = Clock()
    b = CircuitBreaker(1.0, 10.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow() == "trial"
    clock.now += 5.0
    assert b.allow() == "refuse"  # the trial is still out
    clock.now += 5.0
    assert b.allow() == "trial"  # its sender was cancelled: another one may try


def test_late_failures_of_requests_sent_before_it_opened_do_not_lengthen_the_back_off() -> None:
    clock = Clock()
    b = CircuitBreaker(1.0, 30.0, clock=clock)
    b.failure()
    b.failure()
    assert b.retry_in_s() == 1.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0)])
def test_bad_back_off_is_a_config_error(base: float, cap: float) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(base, cap)
