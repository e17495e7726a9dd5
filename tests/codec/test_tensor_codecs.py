"""Contract tests for every registered tensor codec, plus golden bitstream hashes.

Every test taking ``name`` runs over ``list_codecs()``, so a newly registered
codec gets the whole contract (a lossy one must add its documented error bound
to ``BOUNDS`` below). ``payload_size`` must equal the payload length for a
``fixed_size`` codec and bound it otherwise. Image codecs (``ImageCodec``) only
take ``(N, 1 or 3, H, W)`` images in ``[0, 1]``: they get the image-shaped twin
of each test shape (``IMAGE_TWIN``) and uniform noise instead of ``randn``.

Golden file: ``tests/expected/codec_golden.json`` pins sha256(header JSON +
payload) per codec for ``torch.manual_seed(0); torch.randn(1, 4, 3, 3)``, so any
change to the bytes on the wire fails ``test_golden_hashes``. When a change is
on purpose, regenerate the file, review its diff and commit it::

    COLLABINFER_REGEN_GOLDEN=1 PYTHONPATH=src pytest -q tests/codec -k golden
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import collabinfer.codec as codec_pkg
from collabinfer.codec import (
    Encoded,
    ImageCodec,
    LosslessCodec,
    TensorHeader,
    get_codec,
    list_codecs,
    register_codec,
)
from collabinfer.codec import tensor as tensor_mod
from collabinfer.errors import CodecError

CODECS = list_codecs()
INT8 = ["int8", "int8-channel"]
GOLDEN = Path(__file__).resolve().parents[1] / "expected" / "codec_golden.json"
SHAPES = [(1, 16, 28, 28), (2, 3, 5), (7,), (), (1, 1)]
EPS32 = 2.0**-23
IMAGE_CODECS = {n for n in CODECS if isinstance(get_codec(n), ImageCodec)}
IMAGE_TWIN: dict[tuple[int, ...], tuple[int, ...]] = {  # same role, image-shaped
    (1, 16, 28, 28): (1, 1, 28, 28),
    (2, 3, 5): (2, 3, 5, 7),
    (7,): (1, 1, 1, 7),
    (): (1, 1, 1, 1),
    (1, 1): (1, 3, 1, 1),
    (9,): (1, 3, 3, 3),
    (1, 4, 3, 3): (1, 1, 6, 6),  # 36 elements, like the original
    (1, 4, 3, 4): (1, 1, 6, 7),
    (2, 3, 4): (2, 3, 4, 5),
    (1, 2, 3, 3): (1, 3, 3, 3),
}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape codec ``name`` is tested at in place of ``shape`` (twins map to themselves)."""
    return IMAGE_TWIN.get(shape, shape) if name in IMAGE_CODECS else shape


def _input(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """randn of ``shape``, or for an image codec uniform [0, 1] pixels of its image twin."""
    if name not in IMAGE_CODECS:
        return _randn(*shape, seed=seed)
    return torch.rand(_shape(name, shape), generator=torch.Generator().manual_seed(seed))


def _affine_bound(x: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """The documented int8 bound: scale/2 + 8 * eps32 * max(|min|, |max|), per group."""
    params = torch.tensor(enc.header.params, dtype=torch.float64)
    groups = len(params) // 2
    lo, scale = params[:groups], params[groups:]
    view = [1, groups] + [1] * (x.ndim - 2) if groups > 1 else [1] * x.ndim
    mag = torch.maximum(lo.abs(), (lo + 255 * scale).abs())
    return (scale / 2 + 8 * EPS32 * mag).view(view)


BOUNDS: dict[str, Callable[[torch.Tensor, Encoded], torch.Tensor]] = {
    "fp16": lambda x, enc: 2.0**-11 * x.abs().double() + 2.0**-25,
    "int8": _affine_bound,
    "int8-channel": _affine_bound,
    # pixels: clamped to [0, 1], then rounded to the 1/255 grid
    "u8": lambda x, enc: (x.double() - x.double().clamp(0, 1)).abs() + 0.5 / 255 + 1e-7,
}
BOUNDS["png"] = BOUNDS["webp-lossless"] = BOUNDS["u8"]  # exact on the 8-bit grid
for _name in IMAGE_CODECS - set(BOUNDS):  # lossy JPEG/WebP: only "decodes into [0, 1]"
    BOUNDS[_name] = lambda x, enc: (x.double() - x.double().clamp(0, 1)).abs() + 1.0 + 1e-7
for _name in CODECS:  # zstd / lz4 are exact: the inner codec's bound holds
    _codec = get_codec(_name)
    if isinstance(_codec, LosslessCodec) and _codec.inner.name in BOUNDS:
        BOUNDS[_name] = BOUNDS[_codec.inner.name]


def _wire(enc: Encoded) -> bytes:
    return enc.header.to_json_bytes() + enc.payload


def _with_header(enc: Encoded, **changes: Any) -> Encoded:
    fields: dict[str, Any] = {
        "codec": enc.header.codec,
        "dtype": enc.header.dtype,
        "shape": enc.header.shape,
        "params": enc.header.params,
    }
    fields.update(changes)
    return Encoded(TensorHeader(**fields), enc.payload)


# --- the contract, over every registered codec -------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", CODECS)
def test_round_trip_shape_dtype_and_size(name: str, shape: tuple[int, ...]) -> None:
    codec = get_codec(name)
    shape = _shape(name, shape)
    enc = codec.encode(_input(name, shape))
    out = codec.decode(enc)
    assert out.dtype == torch.float32 and tuple(out.shape) == shape
    assert enc.header.shape == shape and enc.header.dtype == "float32"
    assert len(enc.payload) == enc.payload_bytes
    if codec.fixed_size:
        assert codec.payload_size(shape) == enc.payload_bytes
    else:
        assert enc.payload_bytes <= codec.payload_size(shape)
    assert enc.header_bytes == len(enc.header.to_json_bytes())


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-3])
@pytest.mark.parametrize("shape", [(1, 16, 28, 28), (2, 3, 5), (9,)], ids=str)
@pytest.mark.parametrize("name", CODECS)
def test_decode_error_within_documented_bound(
    name: str, shape: tuple[int, ...], scale: float
) -> None:
    codec = get_codec(name)
    shift = 0.0 if name in IMAGE_CODECS else 3 * scale  # images: keep [0, 1] at scale 1
    x = _input(name, shape) * scale + shift
    enc = codec.encode(x)
    out = codec.decode(enc)
    if codec.lossless:
        assert torch.equal(out.view(torch.int32), x.view(torch.int32)), "not bit-exact"
        return
    if name not in BOUNDS:
        pytest.fail(f"lossy codec {name!r} has no documented error bound in BOUNDS")
    err = (out.double() - x.double()).abs()
    assert bool((err <= BOUNDS[name](x, enc)).all()), f"max error {err.max().item()}"


@pytest.mark.parametrize("name", CODECS)
def test_encoding_is_deterministic_and_layout_independent(name: str) -> None:
    codec = get_codec(name)
    channels = 3 if name in IMAGE_CODECS else 16
    base = _input(name, (28, 28, channels, 1)).permute(3, 2, 0, 1)  # non-contiguous view
    variants = [base, base.contiguous(), base.clone().requires_grad_(True), base.contiguous()]
    wires = {_wire(codec.encode(v)) for v in variants}
    assert len(wires) == 1


@pytest.mark.parametrize("name", CODECS)
def test_header_json_round_trip_is_compact_and_sorted(name: str) -> None:
    header = get_codec(name).encode(_input(name, (2, 3, 4))).header
    raw = header.to_json_bytes()
    assert TensorHeader.from_json_bytes(raw) == header
    assert TensorHeader.from_json_bytes(raw).to_json_bytes() == raw
    assert b" " not in raw and list(json.loads(raw)) == sorted(json.loads(raw))


@pytest.mark.parametrize("name", CODECS)
def test_wrong_payload_length_is_codec_error(name: str) -> None:
    codec = get_codec(name)
    enc = codec.encode(_input(name, (1, 4, 3, 3)))
    for payload in (enc.payload[:-1], b"", enc.payload + b"\x00", enc.payload * 2):
        with pytest.raises(CodecError, match="expected"):
            codec.decode(Encoded(enc.header, payload))


@pytest.mark.parametrize("name", CODECS)
def test_header_for_another_codec_is_refused(name: str) -> None:
    codec = get_codec(name)
    enc = codec.encode(_input(name, (1, 4, 3, 3)))
    for other in [*(n for n in CODECS if n != name), "no-such-codec"]:
        with pytest.raises(CodecError, match="codec"):
            codec.decode(_with_header(enc, codec=other))


@pytest.mark.parametrize("name", CODECS)
def test_header_with_wrong_shape_or_params_is_refused(name: str) -> None:
    codec = get_codec(name)
    enc = codec.encode(_input(name, (1, 4, 3, 3)))
    with pytest.raises(CodecError):
        codec.decode(_with_header(enc, shape=_shape(name, (1, 4, 3, 4))))
    with pytest.raises(CodecError, match="params"):
        codec.decode(_with_header(enc, params=(*enc.header.params, 1.0)))


@pytest.mark.parametrize("name", CODECS)
def test_mangled_header_bytes_never_raise_anything_but_codec_error(name: str) -> None:
    codec = get_codec(name)
    enc = codec.encode(_input(name, (1, 4, 3, 3)))
    raw = enc.header.to_json_bytes()
    rng = random.Random(name)
    for cut in range(len(raw)):  # every truncation is malformed
        with pytest.raises(CodecError):
            TensorHeader.from_json_bytes(raw[:cut])
    for _ in range(300):  # flips may stay valid; then decode must succeed or refuse cleanly
        mutated = bytearray(raw)
        mutated[rng.randrange(len(raw))] = rng.randrange(256)
        try:
            out = codec.decode(Encoded(TensorHeader.from_json_bytes(bytes(mutated)), enc.payload))
        except CodecError:
            continue
        assert out.dtype == torch.float32 and out.numel() == 36


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, dtype=torch.int64),
        torch.zeros(3, dtype=torch.bool),
        torch.zeros(2, 0, 3),
        torch.zeros(3, dtype=torch.complex64),
        [1.0, 2.0],
    ],
    ids=["int64", "bool", "empty", "complex", "list"],
)
def test_unencodable_input_is_codec_error(name: str, bad: object) -> None:
    with pytest.raises(CodecError):
        get_codec(name).encode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CODECS)
def test_decode_refuses_non_encoded(name: str) -> None:
    with pytest.raises(CodecError):
        get_codec(name).decode(b"\x00" * 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0, 3), (-1,), (2**20, 2**20), (1,) * 40, (1.5,), (True,)])
@pytest.mark.parametrize("name", CODECS)
def test_absurd_shapes_are_codec_error(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(CodecError, match="shape"):
        get_codec(name).payload_size(shape)
    with pytest.raises(CodecError, match="shape"):
        TensorHeader(name, "float32", shape)


# --- headers and Encoded ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe\x00",
        b"not json",
        b"[]",
        b"{}",
        b"null",
        b"[" * 100_000,
        b'{"codec":"fp32","dtype":"float32","shape":[1]}',
        b'{"codec":"fp32","dtype":"float32","shape":[1],"params":[],"x":1}',
        b'{"codec":"fp32","codec":"fp32","dtype":"float32","shape":[1],"params":[]}',
        b'{"codec":"","dtype":"float32","shape":[1],"params":[]}',
        b'{"codec":3,"dtype":"float32","shape":[1],"params":[]}',
        b'{"codec":"fp32","dtype":"int64","shape":[1],"params":[]}',
        b'{"codec":"fp32","dtype":"float32","shape":"1","params":[]}',
        b'{"codec":"fp32","dtype":"float32","shape":[1e400],"params":[]}',
        b'{"codec":"fp32","dtype":"float32","shape":[' + b"9" * 5000 + b'],"params":[]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":[NaN,1]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":[-Infinity,1]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":[1e999,1]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":["0",1]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":[true,1]}',
        b'{"codec":"int8","dtype":"float32","shape":[1],"params":{}}',
    ],
)
def test_garbage_header_bytes_are_codec_error(raw: bytes) -> None:
    with pytest.raises(CodecError):
        TensorHeader.from_json_bytes(raw)


def test_header_from_non_bytes_is_codec_error() -> None:
    with pytest.raises(CodecError):
        TensorHeader.from_json_bytes("{}")  # type: ignore[arg-type]


def test_encoded_validates_and_freezes_payload() -> None:
    header = TensorHeader("fp32", "float32", (1,))
    assert Encoded(header, bytearray(4)).payload == bytes(4)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        Encoded(header, "abcd")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        Encoded({"codec": "fp32"}, b"")  # type: ignore[arg-type]


# --- codec specifics ------------------------------------------------------------------------


def test_payload_sizes_at_mnist_feature_shape() -> None:
    shape = (1, 16, 28, 28)
    sizes = {"fp32": 50176, "fp16": 25088, "int8": 12544, "int8-channel": 12544}
    for name, size in sizes.items():
        codec = get_codec(name)
        assert codec.payload_size(shape) == size
        assert len(codec.encode(_randn(*shape)).payload) == size


@pytest.mark.parametrize("value", [0.0, 3.25, -1e-30, 1e30])
@pytest.mark.parametrize("name", INT8)
def test_int8_constant_tensor_decodes_exactly(name: str, value: float) -> None:
    codec = get_codec(name)
    x = torch.full((1, 4, 3, 3), value)
    enc = codec.encode(x)
    assert all(p == p and abs(p) != float("inf") for p in enc.header.params)
    assert torch.equal(codec.decode(enc), x)


def test_int8_channel_keeps_a_constant_channel_exact() -> None:
    x = _randn(2, 3, 4, 4) * 100
    x[:, 1] = 0.5
    out = get_codec("int8-channel").decode(get_codec("int8-channel").encode(x))
    assert torch.equal(out[:, 1], x[:, 1])


def test_int8_channel_uses_per_channel_params_and_falls_back_for_1d() -> None:
    codec = get_codec("int8-channel")
    assert len(codec.encode(_randn(1, 16, 2, 2)).header.params) == 32
    assert len(codec.encode(_randn(5)).header.params) == 2
    ranges = torch.tensor([1e-3, 1.0, 1e3]).view(1, 3, 1, 1)
    x = _randn(1, 3, 8, 8) * ranges
    err_channel = (codec.decode(codec.encode(x)) - x).abs()[:, 0].max()
    err_tensor = (get_codec("int8").decode(get_codec("int8").encode(x)) - x).abs()[:, 0].max()
    assert err_channel < err_tensor / 100  # the quiet channel is not flattened by the loud one


def test_int8_error_bound_holds_far_from_zero() -> None:
    x = 1e4 + _randn(1, 8, 5, 5) * 1e-3  # range tiny against magnitude: float32 slack matters
    for name in INT8:
        enc = get_codec(name).encode(x)
        err = (get_codec(name).decode(enc).double() - x.double()).abs()
        assert bool((err <= _affine_bound(x, enc)).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", INT8)
def test_int8_refuses_non_finite_input(name: str, bad: float) -> None:
    x = _randn(1, 2, 3, 3)
    x[0, 1, 1, 1] = bad
    with pytest.raises(CodecError, match="finite"):
        get_codec(name).encode(x)


@pytest.mark.parametrize("params", [(float(2**130), 1.0), (0.0, -1.0), (0.0, 0.0), (0.0, 1e38)])
def test_int8_refuses_params_outside_float32(params: tuple[float, float]) -> None:
    enc = Encoded(TensorHeader("int8", "float32", (4,), params), b"\x00\x01\x02\xff")
    with pytest.raises(CodecError, match="params"):
        get_codec("int8").decode(enc)


# --- registry and public API ----------------------------------------------------------------


def test_unknown_codec_lists_known_names() -> None:
    with pytest.raises(CodecError) as info:
        get_codec("fp8")
    assert all(name in str(info.value) for name in CODECS)
    with pytest.raises(CodecError):
        get_codec(None)  # type: ignore[arg-type]


def test_register_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensor_mod, "_REGISTRY", dict(tensor_mod._REGISTRY))
    with pytest.raises(CodecError, match="already registered"):
        register_codec(get_codec("fp32"))
    with pytest.raises(CodecError, match="protocol"):
        register_codec(object())  # type: ignore[arg-type]
    extra = tensor_mod.RawFloatCodec("fp32-copy", torch.float32, "<f4", lossless=True)
    register_codec(extra)
    assert get_codec("fp32-copy") is extra and "fp32-copy" in list_codecs()


def test_public_api_is_exactly_all() -> None:
    submodules = {"tensor", "pixels", "lossless", "image", "entropy"}
    public = {n for n in vars(codec_pkg) if not n.startswith("_") and n not in submodules}
    assert set(codec_pkg.__all__) == public


# --- golden bitstreams ----------------------------------------------------------------------


def test_golden_hashes() -> None:
    # for most codecs the same values as torch.manual_seed(0); torch.randn(1, 4, 3, 3)
    inputs = {n: _input(n, (1, 4, 3, 3)) for n in CODECS}
    got = {n: hashlib.sha256(_wire(get_codec(n).encode(inputs[n]))).hexdigest() for n in CODECS}
    if os.environ.get("COLLABINFER_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {GOLDEN}; review and commit it")
    hint = "codec bytes changed; if on purpose, rerun with COLLABINFER_REGEN_GOLDEN=1"
    assert GOLDEN.exists(), hint
    assert json.loads(GOLDEN.read_text()) == got, hint
