"""Failed-authentication throttling, and where the bearer token comes from."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from collabinfer.cli.serve import resolve_token
from collabinfer.errors import ConfigError
from collabinfer.serve import limits
from collabinfer.serve.limits import AuthThrottle


def test_docstring_example() -> None:
    assert doctest.testmod(limits).failed == 0


def test_throttle_is_per_address_and_bounded_in_addresses() -> None:
    now = [0.0]
    t = AuthThrottle(2, 10.0, max_addresses=3, clock=lambda: now[0])
    for _ in range(2):
        t.failed("a")
    assert t.check("a") == 10.0 and t.check("b") is None
    for addr in ("b", "c", "d"):  # "a" is the least recently failed: forgotten
        t.failed(addr)
    assert t.check("a") is None
    now[0] = 5.0
    t.failed("d")
    assert t.check("d") == pytest.approx(5.0)  # the oldest failure leaves the window at 10
    t.succeeded("d")
    assert t.check("d") is None


def test_token_from_a_file_the_environment_or_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert resolve_token(None, f) == "s3cret"
    monkeypatch.setenv("COLLABINFER_TOKEN", "from-env")
    assert resolve_token("from-env", f) == "s3cret"  # the env var is only a default
    assert resolve_token("from-env", None) == "from-env"
    with pytest.raises(ConfigError, match="not both"):
        resolve_token("typed", f)
    for bad in ("", "two words"):
        f.write_text(bad)
        with pytest.raises(ConfigError, match="one token"):
            resolve_token(None, f)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(None, tmp_path / "missing")
