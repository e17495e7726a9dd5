"""Fuzzing the wire: structured mutations of valid messages never get out as a non-project error.

The property, for the request decoder + the validator against a hosted model,
and for the response decoder + the answer check: every input either passes or
raises a :class:`~collabinfer.serve.wire.WireError` with the documented class of
status (4xx for a request, 502 for an answer), and its error reply encodes.
Inputs are valid messages mutated where it hurts (a value anywhere replaced by
a huge integer, a float overflow, a lone surrogate, a wrong type, a nested
structure; keys dropped, added or duplicated; shapes, rows and codecs changed;
payload and framing cut or lied about), plus raw bytes. The unit run tries a
few hundred of each; the integration run (CI) over 10^5 in all, seeded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from collabinfer.codec import list_codecs
from collabinfer.errors import CollabInferError
from collabinfer.serve.handler import error_response
from collabinfer.serve.wire import (
    HostedModel,
    ResponseBody,
    WireError,
    check_answer,
    decode_request,
    decode_response,
    encode_response,
)

from .tier_helpers import NAME, device_request, frame, make_input, make_net

UNIT_CASES = 300
INTEGRATION_CASES = {"request": 40_000, "response": 30_000, "raw": 35_000}  # 105,000 in all
CAP = 1 << 20

_NET = make_net()
HOSTS = (
    HostedModel.from_model(NAME, _NET, 1, 4, 1, max_rows=8),
    HostedModel.from_model(NAME, _NET, 0, 4, None),
)
_HEADER, _PAYLOAD = device_request(_NET, make_input(), (0, 1, 2, 4), ("fp32", "int8", None), "r1")
VALID_HEADER: dict[str, Any] = json.loads(_HEADER.to_json_bytes())
VALID_ANSWER: dict[str, Any] = json.loads(
    encode_response(
        ResponseBody("r1", 2, ((0.5,) * 10,), (3,), ((0, 0, True),), (), 1.0, False)  # type: ignore[arg-type]
    )
)

NASTY = st.one_of(
    st.sampled_from(
        [10**400, -(10**400), 1e308, -1.0, 0, 2**63, "", "\ud800", "\udfff x", None, True, [], {}]
    ),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(list_codecs()),
    st.lists(st.integers(-3, 10**6), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _set(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _set(obj[head], rest, value)
    return copy


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """JSON text of ``valid`` with 1-3 structured mutations (and sometimes raw edits)."""
    obj: Any = valid
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "grow"]))
        if action == "replace":
            obj = _set(obj, path, draw(NASTY))
        elif action == "drop" and path and isinstance(_get(obj, path[:-1]), dict):
            parent = dict(_get(obj, path[:-1]))
            parent.pop(path[-1], None)
            obj = _set(obj, path[:-1], parent)
        elif action == "add" and isinstance(_get(obj, path), dict):
            obj = _set(obj, path, {**_get(obj, path), draw(st.text(max_size=4)): draw(NASTY)})
        elif action == "grow" and isinstance(_get(obj, path), list):
            obj = _set(obj, path, [*_get(obj, path), draw(NASTY)])
    text = json.dumps(obj)
    edit = draw(st.sampled_from(["none", "none", "none", "dup", "constant", "deep"]))
    if edit == "dup" and text.startswith("{"):
        text = '{"model": "x", ' + text[1:]
    elif edit == "constant":
        text = text.replace("0.5", draw(st.sampled_from(["1e400", "NaN", "-Infinity"])), 1)
    elif edit == "deep":
        text = "[" * 5000 + "]" * 5000
    return text.encode()


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _reply_encodes(e: WireError) -> None:
    reply = error_response(e)
    assert set(json.loads(reply.body)) == {"error", "field"}


def _check_request(body: bytes) -> None:
    try:
        header, payload = decode_request(body, CAP)
        for host in HOSTS:
            try:
                host.validate(header, payload)
            except WireError as e:
                assert 400 <= e.status < 500, (e.status, e.message)
                _reply_encodes(e)
    except WireError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        _reply_encodes(e)
    except CollabInferError as e:  # pragma: no cover - a project error without a status
        pytest.fail(f"{type(e).__name__} instead of a WireError: {e}")


def _check_response(data: bytes, rows: int) -> None:
    try:
        check_answer(decode_response(data), "r1", rows, 10)
    except WireError as e:
        assert e.status == 502, (e.status, e.message)
        _reply_encodes(e)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    head = draw(mutated(VALID_HEADER))
    payload = _PAYLOAD
    cut = draw(st.sampled_from(["keep", "keep", "short", "long", "empty"]))
    if cut == "short":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif cut == "long":
        payload = payload + bytes(draw(st.integers(1, 64)))
    elif cut == "empty":
        payload = b""
    lie = draw(st.sampled_from([None, None, None, 0, 7, len(head) + 1, 2**32 - 1]))
    return frame(head, payload, lie)


def _fuzz(cases: int, strategy: st.SearchStrategy[Any], check: Any) -> None:
    @seed(20261202)
    @settings(max_examples=cases, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def run(value: Any) -> None:
        check(*value) if isinstance(value, tuple) else check(value)

    run()


RESPONSES = st.tuples(mutated(VALID_ANSWER), st.integers(0, 3))
RAW = st.binary(max_size=300).map(lambda b: b"CIW1" + b if b[:1] == b"\x00" else b)


def test_request_decoder_and_validator_fuzz() -> None:
    _fuzz(UNIT_CASES, request_bodies(), _check_request)


def test_response_decoder_and_answer_check_fuzz() -> None:
    _fuzz(UNIT_CASES, RESPONSES, _check_response)


def test_raw_bytes_fuzz() -> None:
    _fuzz(UNIT_CASES, RAW, _check_request)


@pytest.mark.integration
@pytest.mark.parametrize("target", list(INTEGRATION_CASES))
def test_wire_fuzz_at_scale(target: str) -> None:
    """The same properties over 10^5 cases in all (CI's integration run)."""
    strategy, check = {
        "request": (request_bodies(), _check_request),
        "response": (RESPONSES, _check_response),
        "raw": (RAW, _check_request),
    }[target]
    _fuzz(INTEGRATION_CASES[target], strategy, check)
