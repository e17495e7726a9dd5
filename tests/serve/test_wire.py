"""The wire format (protocol 1): round trips, golden hashes, and every refusal's status.

Golden file: ``tests/expected/wire_golden.json`` pins sha256 of one encoded
request and one encoded response built from fixed values below, so any change
to the bytes on the wire fails ``test_golden_hashes``. When a change is on
purpose (it needs a protocol version bump, see docs/serving.md), regenerate
the file, review its diff and commit it::

    COLLABINFER_REGEN_GOLDEN=1 PYTHONPATH=src pytest -q tests/serve -k golden
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from collabinfer.codec import ImageCodec, TensorHeader, get_codec, list_codecs
from collabinfer.errors import TierError
from collabinfer.runtime.state import PathEntry, Step, StepKind
from collabinfer.serve import wire
from collabinfer.serve.wire import (
    MAX_HEADER_BYTES,
    HostedModel,
    RequestHeader,
    ResponseBody,
    WireError,
    WirePlan,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

from .tier_helpers import NAME, device_request, frame, make_input, make_net

GOLDEN = Path(__file__).resolve().parents[1] / "expected" / "wire_golden.json"
CAP = 2**20
DOCUMENTED_KEYS = {
    "protocol", "model", "weights", "request_id", "tier", "next_block",
    "tensor", "plan", "path", "deadline_ms",
}  # fmt: skip


def _golden_request() -> tuple[RequestHeader, bytes]:
    header = RequestHeader(
        model="tiny-cnn",
        weights="0123456789abcdef",
        request_id="golden-1",
        tier=1,
        next_block=2,
        tensor=TensorHeader("int8", "float32", (1, 4, 14, 14), (-0.5, 0.0078125)),
        plan=WirePlan((0, 2, 4), ("int8", None)),
        path=(PathEntry(0, 0, True), PathEntry(1, 0, True)),
        deadline_ms=250.5,
    )
    return header, bytes(i % 251 for i in range(784))


def _golden_response() -> ResponseBody:
    return ResponseBody(
        request_id="golden-1",
        tier=1,
        output=((0.25, -1.5, 3.0),),
        prediction=(2,),
        path=(PathEntry(0, 0, True), PathEntry(2, 1, True)),
        steps=(Step(StepKind.DECODE, 1, 0.5, None, 0, 0.5), Step(StepKind.COMPUTE, 1, 1.0, 2)),
        server_ms=2.75,
        fell_back=False,
    )


def _json(header: RequestHeader) -> dict:
    return json.loads(header.to_json_bytes())


def _hosted() -> HostedModel:
    return HostedModel.from_model(NAME, make_net(), 0, 4, tier=1)


def _code(exc: pytest.ExceptionInfo[WireError]) -> tuple[int, str | None]:
    return exc.value.status, exc.value.field


# --- round trips and the golden bytes -------------------------------------------------------


FEATURE_CODECS = [c for c in list_codecs() if not isinstance(get_codec(c), ImageCodec)]


@pytest.mark.parametrize("codec", FEATURE_CODECS)  # image codecs only take images (cut 0)
def test_request_round_trip_every_codec(codec: str) -> None:
    net, x = make_net(), make_input()
    header, payload = device_request(net, x, (0, 1, 4), (codec, None), deadline_ms=12.5)
    got_header, got_payload = decode_request(encode_request(header, payload), CAP)
    assert got_header == header and got_payload == payload
    assert encode_request(got_header, got_payload) == encode_request(header, payload)


def test_header_has_exactly_the_documented_keys_compact_and_sorted() -> None:
    header, payload = _golden_request()
    raw = header.to_json_bytes()
    assert set(json.loads(raw)) == DOCUMENTED_KEYS
    assert b" " not in raw
    assert list(json.loads(raw)) == sorted(DOCUMENTED_KEYS)
    body = encode_request(header, payload)
    assert body[:4] == b"CIW1" and int.from_bytes(body[4:8], "big") == len(raw)
    assert body[8 + len(raw) :] == payload  # the payload travels exactly as the codec made it


def test_response_round_trip_is_exact_for_float32() -> None:
    out = torch.randn(3, 10)
    body = ResponseBody.from_output("r", 2, out, [PathEntry(0, 1, True)], [], 1.5, True)
    back = decode_response(encode_response(body))
    assert back == body
    assert torch.equal(back.output_tensor(), out)
    assert back.prediction == tuple(out.argmax(1).tolist())


def test_golden_hashes() -> None:
    header, payload = _golden_request()
    got = {
        "request_sha256": hashlib.sha256(encode_request(header, payload)).hexdigest(),
        "response_sha256": hashlib.sha256(encode_response(_golden_response())).hexdigest(),
    }
    if os.environ.get("COLLABINFER_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {GOLDEN}; review and commit it")
    hint = "wire bytes changed; bump the protocol, then rerun with COLLABINFER_REGEN_GOLDEN=1"
    assert GOLDEN.exists(), hint
    assert json.loads(GOLDEN.read_text()) == got, hint


# --- structure: 400 and 413 -----------------------------------------------------------------


def _body_with(**changes: object) -> bytes:
    header, payload = _golden_request()
    obj = {**_json(header), **changes}
    return frame(json.dumps(obj).encode(), payload)


def _body_without(key: str) -> bytes:
    header, payload = _golden_request()
    obj = _json(header)
    del obj[key]
    return frame(json.dumps(obj).encode(), payload)


STRUCTURE_CASES = {
    "empty": (b"", 400, "body"),
    "short prefix": (b"CIW1\x00", 400, "body"),
    "bad magic": (b"HTTP/1.1 200 OK\r\n\r\n", 400, "magic"),
    "header cut short": (frame(b'{"model":', hlen=500), 400, "body"),
    "header too long": (frame(b"{}", hlen=MAX_HEADER_BYTES + 1), 413, "header"),
    "not json": (frame(b"{nope"), 400, "header"),
    "not utf-8": (frame(b'{"model":"\xff"}'), 400, "header"),
    "duplicate key": (frame(b'{"tier":1,"tier":2}'), 400, "header"),
    "nan": (frame(b'{"deadline_ms":NaN}'), 400, "header"),
    "not an object": (frame(b"[1,2,3]"), 400, None),
    "missing key": (_body_without("plan"), 400, "plan"),
    "extra key": (_body_with(priority=1), 400, "priority"),
    "protocol 2": (_body_with(protocol=2), 400, "protocol"),
    "tier as string": (_body_with(tier="1"), 400, "tier"),
    "tier as bool": (_body_with(tier=True), 400, "tier"),
    "negative cut": (_body_with(next_block=-1), 400, "next_block"),
    "bad request id": (_body_with(request_id="no spaces!"), 400, "request_id"),
    "long request id": (_body_with(request_id="a" * 65), 400, "request_id"),
    "empty model": (_body_with(model=""), 400, "model"),
    "tensor dtype int": (
        _body_with(tensor={"codec": "fp32", "dtype": "int64", "shape": [1], "params": []}),
        400,
        "tensor",
    ),
    "tensor zero dim": (
        _body_with(tensor={"codec": "fp32", "dtype": "float32", "shape": [0], "params": []}),
        400,
        "tensor",
    ),
    "tensor missing key": (_body_with(tensor={"codec": "fp32"}), 400, "tensor"),
    "plan not object": (_body_with(plan=[0, 4]), 400, "plan"),
    "plan codec int": (_body_with(plan={"boundaries": [0, 4], "codecs": [3]}), 400, "plan"),
    "path entry short": (_body_with(path=[[0, 0]]), 400, "path"),
    "negative deadline": (_body_with(deadline_ms=-1), 400, "deadline_ms"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE_CASES))
def test_decode_request_refuses_bad_structure(case: str) -> None:
    body, status, field = STRUCTURE_CASES[case]
    with pytest.raises(WireError) as exc:
        decode_request(body, CAP)
    assert _code(exc) == (status, field)
    assert exc.value.to_json()["error"]


def test_body_over_the_cap_is_413() -> None:
    header, payload = _golden_request()
    body = encode_request(header, payload)
    with pytest.raises(WireError) as exc:
        decode_request(body, len(body) - 1)
    assert _code(exc) == (413, "body")
    assert decode_request(body, len(body))[1] == payload


def test_real_huge_header_is_413_on_both_ends() -> None:
    header, payload = _golden_request()
    huge = replace(header, model="m" * (MAX_HEADER_BYTES + 10))
    with pytest.raises(WireError) as exc:
        encode_request(huge, payload)
    assert exc.value.status == 413
    body = frame(huge.to_json_bytes(), payload)
    with pytest.raises(WireError) as exc:
        decode_request(body, 10 * CAP)
    assert _code(exc) == (413, "header")


@pytest.mark.parametrize("size", [1, 3, 8, 100, 5000])
def test_random_bytes_are_400(size: int) -> None:
    body = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size))
    with pytest.raises(WireError) as exc:
        decode_request(bytes(body.to(torch.uint8).tolist()), CAP)
    assert exc.value.status == 400


# --- semantics against the hosted model: 404, 409, 422 --------------------------------------


def _valid() -> tuple[RequestHeader, bytes]:
    return device_request(make_net(), make_input(), (0, 1, 4), ("int8", None))


def _with_tensor(header: RequestHeader, **changes: object) -> RequestHeader:
    t = header.tensor
    fields = {"codec": t.codec, "dtype": t.dtype, "shape": t.shape, "params": t.params}
    return replace(header, tensor=TensorHeader(**{**fields, **changes}))  # type: ignore[arg-type]


def test_valid_request_passes() -> None:
    _hosted().validate(*_valid())


SEMANTIC_CASES = {
    "unknown model": (lambda h: replace(h, model="resnet-9000"), 404, "model"),
    "other weights": (lambda h: replace(h, weights="f" * 16), 409, "weights"),
    "tier mismatch": (lambda h: replace(h, tier=2, plan=WirePlan((0, 1, 1, 4), ("int8",) * 3)),
                      422, "tier"),
    "tier not in plan": (lambda h: replace(h, tier=1, plan=WirePlan((0, 4), ("int8",))),
                         422, "tier"),
    "cut not the plan's": (lambda h: replace(h, next_block=2), 422, "next_block"),
    "plan short": (lambda h: replace(h, plan=WirePlan((0, 1, 3), ("int8", None))), 422, "plan"),
    "plan backwards": (lambda h: replace(h, plan=WirePlan((0, 3, 1, 4), ("int8",) * 3)),
                       422, "plan"),
    "plan codec unknown": (lambda h: replace(h, plan=WirePlan((0, 1, 4), ("zip", None))),
                           422, "plan"),
    "unknown codec": (lambda h: _with_tensor(h, codec="zip"), 422, "tensor.codec"),
    "dtype": (lambda h: _with_tensor(h, dtype="float64"), 422, "tensor.dtype"),
    "shape": (lambda h: _with_tensor(h, shape=(1, 4, 14, 15)), 422, "tensor.shape"),
    "no batch dim": (lambda h: _with_tensor(h, shape=(4, 14, 14)), 422, "tensor.shape"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SEMANTIC_CASES))
def test_validate_refuses_what_the_model_cannot_serve(case: str) -> None:
    change, status, field = SEMANTIC_CASES[case]
    header, payload = _valid()
    with pytest.raises(WireError) as exc:
        _hosted().validate(change(header), payload)
    assert _code(exc) == (status, field)


def test_payload_length_and_hosted_range_are_422() -> None:
    header, payload = _valid()
    with pytest.raises(WireError) as exc:
        _hosted().validate(header, payload[:-1])
    assert _code(exc) == (422, "payload")
    partial = HostedModel.from_model(NAME, make_net(), 2, 4, tier=1)
    with pytest.raises(WireError) as exc:
        partial.validate(header, payload)
    assert _code(exc) == (422, "next_block")


def test_relay_needs_no_hosted_blocks() -> None:
    """A tier the plan gives no block only forwards: its hosted range does not matter."""
    header, payload = device_request(make_net(), make_input(), (0, 1, 1, 4), ("fp16", "x", None))
    HostedModel.from_model(NAME, make_net(), 3, 4, tier=1).validate(header, payload)


# --- responses and errors -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"request_id": "r"}', b'{"steps": 3}'])
def test_malformed_response_is_502(data: bytes) -> None:
    with pytest.raises(WireError) as exc:
        decode_response(data)
    assert exc.value.status == 502


def test_bad_step_in_response_is_502() -> None:
    obj = json.loads(encode_response(_golden_response()))
    obj["steps"][0]["kind"] = "teleport"
    with pytest.raises(WireError):
        decode_response(json.dumps(obj).encode())


def test_non_finite_output_is_refused_not_sent_as_nan() -> None:
    body = ResponseBody.from_output("r", 1, torch.tensor([[float("inf"), 0.0]]), [], [], 0.0, False)
    with pytest.raises(WireError) as exc:
        encode_response(body)
    assert exc.value.status == 422


def test_wire_error_is_a_tier_error_with_json() -> None:
    e = WireError("bad", 409, "weights")
    assert isinstance(e, TierError)
    assert e.to_json() == {"error": "bad", "field": "weights"}
    assert e.reason == "conflict"


def test_fp32_payload_is_the_codec_bytes() -> None:
    x = torch.randn(1, 4, 14, 14)
    enc = get_codec("fp32").encode(x)
    header = replace(_valid()[0], tensor=enc.header)
    _, payload = decode_request(encode_request(header, enc.payload), CAP)
    assert torch.equal(get_codec("fp32").decode(type(enc)(enc.header, payload)), x)
    assert wire.PROTOCOL == 1


def test_serve_package_exports_exist() -> None:
    import collabinfer.serve as serve_pkg

    for name in serve_pkg.__all__:
        assert hasattr(serve_pkg, name), name
