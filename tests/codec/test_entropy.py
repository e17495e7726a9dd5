"""Entropy coding under integer tables: exactness, determinism, refusal of bad streams, rate.

Golden file: ``tests/expected/entropy_golden.json`` pins the sha256 of one
bitstream (and of its tables' JSON), so any change to the bits on the wire
fails ``test_golden_bitstream``. When a change is on purpose (and
``FORMAT_VERSION`` was bumped), regenerate, review the diff and commit::

    COLLABINFER_REGEN_GOLDEN=1 PYTHONPATH=src pytest -q tests/codec -k golden
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from collabinfer.codec import (
    Encoded,
    EntropyCodec,
    FactorizedTables,
    TensorHeader,
    decode_symbols,
    encode_symbols,
    list_codecs,
    max_stream_bytes,
    register_codec,
)
from collabinfer.codec import entropy as entropy_mod
from collabinfer.codec import tensor as tensor_mod
from collabinfer.errors import CodecError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "expected" / "entropy_golden.json"
LATENT = (1, 8, 7, 7)


def _laplace_tables(channels: int = 8, radius: int = 12, precision: int = 16) -> FactorizedTables:
    """Peaked tables of growing width, like a trained bottleneck's prior."""
    ks = np.arange(-radius, radius + 1)
    probs = [np.exp(-np.abs(ks) / (0.4 + 0.5 * c)) for c in range(channels)]
    return FactorizedTables.from_probabilities(probs, [-radius] * channels, precision)


TABLES = _laplace_tables()


def _sample(tables: FactorizedTables, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Symbols drawn from the tables themselves, channel axis -3."""
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype=np.int64)
    for c, (offset, freqs) in enumerate(zip(tables.offsets, tables.freqs, strict=True)):
        p = np.asarray(freqs, dtype=np.float64) / 2**tables.precision
        out[..., c, :, :] = offset + rng.choice(len(freqs), size=out[..., c, :, :].shape, p=p)
    return out


def _golden_symbols() -> np.ndarray:
    """A fixed latent from integer arithmetic only (no RNG whose stream could change)."""
    i = np.arange(math.prod(LATENT)).reshape(LATENT)
    symbols = ((i * i * 31 + i * 7) % 9) - 4
    symbols[0, 0, 0, :] = [-12, 12, -12, 12, 0, 1, -1]  # the extremes too
    return symbols


def _golden_stream() -> bytes:
    return encode_symbols(_golden_symbols(), TABLES)


def _reference_ans_words(indices: np.ndarray, tables: FactorizedTables) -> list[int]:
    """constriction's ANS (64-bit head, 32-bit words, 24-bit probabilities), written out
    over our integer frequencies: if constriction quantised them differently, words differ."""
    shift = entropy_mod.MAX_PRECISION - tables.precision
    head, bulk = 0, []
    for c in reversed(range(tables.num_channels)):
        freqs = [f << shift for f in tables.freqs[c]]
        lefts = np.concatenate([[0], np.cumsum(freqs)]).tolist()
        for s in reversed(indices[c].tolist()):
            prob, left = freqs[s], lefts[s]
            if head >> 40 >= prob:
                bulk.append(head & 0xFFFFFFFF)
                head >>= 32
            head = ((head // prob) << 24) | (head % prob + left)
    tail = ([head & 0xFFFFFFFF] if head else []) + ([head >> 32] if head >> 32 else [])
    return bulk + tail


def _words(stream: bytes) -> list[int]:
    body = stream[5:]
    return np.frombuffer(body + bytes(-len(body) % 4), dtype="<u4").tolist()


# --- tables -----------------------------------------------------------------------------------


def test_tables_from_probabilities_are_exact_and_hand_checkable() -> None:
    half = FactorizedTables.from_probabilities([[0.5, 0.25, 0.25]], [0], precision=4)
    assert half.freqs == ((8, 4, 4),)  # 1 each + 13 shared: 6.5, 3.25, 3.25 -> 6+1, 3, 3
    ties = FactorizedTables.from_probabilities([[1, 1, 1]], [0], precision=4)
    assert ties.freqs == ((6, 5, 5),)  # equal remainders: the smaller symbol wins
    counts = FactorizedTables.from_probabilities(np.array([[0, 10, 30]]), [5], precision=8)
    assert counts.freqs == ((1, 64, 191),) and counts.offsets == (5,)


@pytest.mark.parametrize("precision", [2, 8, 16, 24])
def test_tables_sum_exactly_with_every_freq_at_least_one(precision: int) -> None:
    rng = np.random.default_rng(precision)
    rows = [rng.dirichlet(np.full(k, 0.2)) for k in (2, 3, 4)]
    rows.append(np.array([1.0, 0.0, 1e-300, 5e-324]))  # zeros and subnormals still get 1
    if precision >= 8:
        rows.append(np.exp(-np.abs(np.arange(-100, 101)) / 3.0))
    tables = FactorizedTables.from_probabilities(rows, range(len(rows)), precision)
    for row, freqs in zip(rows, tables.freqs, strict=True):
        assert sum(freqs) == 2**precision and min(freqs) >= 1 and len(freqs) == len(row)
    again = FactorizedTables.from_probabilities(
        [list(r) for r in rows], range(len(rows)), precision
    )
    assert again == tables  # lists or arrays, same integers


def test_tables_json_round_trip() -> None:
    text = TABLES.to_json()
    assert FactorizedTables.from_json(text) == TABLES
    assert FactorizedTables.from_json(text.encode()) == TABLES
    assert FactorizedTables.from_json(text).to_json() == text


@pytest.mark.parametrize(
    "args",
    [
        (16, (0,), ((2**16,),)),  # one symbol
        (16, (0,), ((0, 2**16),)),  # a zero frequency
        (16, (0,), ((1, 2**16),)),  # does not sum to 2**16
        (25, (0,), ((2**24, 2**24),)),  # precision too high
        (0, (0,), ((1, 1),)),
        (16, (0, 1), ((2**15, 2**15),)),  # offsets and tables disagree
        (16, (), ()),
        (16, (2**31,), ((2**15, 2**15),)),  # offset out of range
        (16, (0,), ((2**15, True),)),
        (16, (0.5,), ((2**15, 2**15),)),
        (16, "0", ((2**15, 2**15),)),
        (True, (0,), ((1, 1),)),
        (2, (0,), ((1, 1, 1, 1, 0),)),
    ],
)
def test_invalid_tables_are_config_error(args: tuple[object, object, object]) -> None:
    with pytest.raises(ConfigError):
        FactorizedTables(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "probs",
    [[[1.0]], [[0.0, 0.0]], [[1.0, -0.1]], [[1.0, float("nan")]], [[1.0, float("inf")]]],
)
def test_invalid_probabilities_are_config_error(probs: list[list[float]]) -> None:
    with pytest.raises(ConfigError):
        FactorizedTables.from_probabilities(probs, [0])


def test_too_many_symbols_or_wrong_offsets_are_config_error() -> None:
    with pytest.raises(ConfigError):
        FactorizedTables.from_probabilities([[1.0] * 17], [0], precision=4)
    with pytest.raises(ConfigError):
        FactorizedTables.from_probabilities([[1.0, 1.0]], [0, 0])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        "not json",
        json.dumps({"format": "x", "version": 1, "precision": 16, "offsets": [], "freqs": []}),
        TABLES.to_json().replace('"version":1', '"version":2'),
        TABLES.to_json().replace('"precision":16', '"precision":15'),
        TABLES.to_json().replace('"offsets":[', '"offsets":{"a":1},"x":['),
    ],
)
def test_malformed_tables_json_is_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        FactorizedTables.from_json(text)


# --- the coder --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 7, 7), (1, 8, 7, 7), (3, 8, 2, 5), (1, 8, 1, 1)], ids=str)
def test_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    y = _sample(TABLES, shape)
    data = encode_symbols(y, TABLES)
    out = decode_symbols(data, shape, TABLES)
    assert out.dtype == np.int64 and out.shape == shape and np.array_equal(out, y)
    assert len(data) <= max_stream_bytes(shape, TABLES)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_of_uniform_symbols_including_both_ends(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(-12, 13, size=LATENT)
    y[0, :, 0, 0], y[0, :, 0, 1] = -12, 12
    for symbols in (y, np.full(LATENT, -12), np.full(LATENT, 12), y.astype(np.int8)):
        data = encode_symbols(symbols, TABLES)
        assert np.array_equal(decode_symbols(data, LATENT, TABLES), symbols)
        assert len(data) <= max_stream_bytes(LATENT, TABLES)


def test_out_of_support_symbols_are_clamped_or_refused() -> None:
    y = np.zeros(LATENT, dtype=np.int64)
    y[0, 0, 0, :3] = [-1000, 1000, 13]
    out = decode_symbols(encode_symbols(y, TABLES), LATENT, TABLES)
    assert out[0, 0, 0, :3].tolist() == [-12, 12, 12] and (out[0, 0, 0, 3:] == 0).all()
    with pytest.raises(CodecError, match="support"):
        encode_symbols(y, TABLES, clamp=False)


@pytest.mark.parametrize("precision", [8, 12, 16, 24])
def test_constriction_codes_with_exactly_our_integer_frequencies(precision: int) -> None:
    """Bit-for-bit equal to a reference ANS over the integer tables: no re-quantisation."""
    rng = np.random.default_rng(precision)
    rows = [rng.dirichlet(np.full(k, 0.3)) for k in (2, 5, 40)]
    tables = FactorizedTables.from_probabilities(rows, [0, -2, -20], precision)
    for _ in range(20):
        y = _sample(tables, (2, 3, 4, 5), seed=int(rng.integers(1 << 30)))
        y[0, :, 0, 0] = np.asarray(tables.offsets)  # the rarest symbols too
        indices = (y - np.asarray(tables.offsets)[:, None, None]).swapaxes(0, 1).reshape(3, -1)
        assert _words(encode_symbols(y, tables)) == _reference_ans_words(indices, tables)


def test_same_bytes_twice_and_in_another_process() -> None:
    stream = _golden_stream()
    assert _golden_stream() == stream
    code = (
        "import hashlib; from tests.codec.test_entropy import _golden_stream; "
        "print(hashlib.sha256(_golden_stream()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(stream).hexdigest()


def test_rate_is_close_to_the_empirical_entropy() -> None:
    """A skewed source coded under its own (quantised) distribution costs ~its entropy."""
    p = 0.55 ** np.arange(16)
    tables = FactorizedTables.from_probabilities([p] * 4, [0] * 4, precision=16)
    y = _sample(tables, (32, 4, 7, 7), seed=1)
    counts = np.bincount(y.ravel(), minlength=16)
    freq = counts[counts > 0] / y.size
    entropy_bytes = -(freq * np.log2(freq)).sum() * y.size / 8
    q = np.asarray(tables.freqs[0]) / 2**16
    model_bytes = -np.log2(q[y]).sum() / 8  # what the tables say these symbols cost
    size = len(encode_symbols(y, tables))
    assert model_bytes <= size <= model_bytes + 16  # ANS: within a few bytes of the model
    assert size <= 1.05 * entropy_bytes + 16


def test_upper_bound_holds_for_adversarial_symbols() -> None:
    rng = np.random.default_rng(3)
    rows = [rng.dirichlet(np.full(k, 0.1)) for k in (2, 3, 17, 200)] + [np.ones(2), np.ones(256)]
    for precision in (8, 16, 24):
        tables = FactorizedTables.from_probabilities(rows, [0] * len(rows), precision)
        rarest = [int(np.argmin(f)) for f in tables.freqs]
        likeliest = [int(np.argmax(f)) for f in tables.freqs]
        for shape in [(6, 1, 1), (6, 5, 5), (4, 6, 16, 16)]:
            for pick in (rarest, likeliest):
                y = np.broadcast_to(np.asarray(pick).reshape(6, 1, 1), shape).copy()
                assert len(encode_symbols(y, tables)) <= max_stream_bytes(shape, tables)
            y = _sample(tables, shape)
            assert len(encode_symbols(y, tables)) <= max_stream_bytes(shape, tables)


# --- refusing bad streams ---------------------------------------------------------------------


def test_every_truncation_is_codec_error() -> None:
    stream = _golden_stream()
    for cut in range(len(stream)):
        with pytest.raises(CodecError):
            decode_symbols(stream[:cut], LATENT, TABLES)


def test_every_single_byte_change_is_codec_error() -> None:
    stream = _golden_stream()
    rng = random.Random(0)
    changes = [(i, mask) for i in range(len(stream)) for mask in (0x01, 0x80, 0xFF)]
    changes += [(rng.randrange(len(stream)), rng.randrange(1, 256)) for _ in range(300)]
    for i, mask in changes:
        mutated = bytearray(stream)
        mutated[i] ^= mask
        with pytest.raises(CodecError):
            decode_symbols(bytes(mutated), LATENT, TABLES)


@pytest.mark.parametrize(
    "suffix", [b"\x00", b"\x01", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00", b"\xff" * 8]
)
def test_trailing_bytes_are_codec_error(suffix: bytes) -> None:
    with pytest.raises(CodecError):
        decode_symbols(_golden_stream() + suffix, LATENT, TABLES)


def test_wrong_version_tables_or_shape_are_codec_error() -> None:
    stream = _golden_stream()
    for version in (0, 2, 255):
        with pytest.raises(CodecError, match="version"):
            decode_symbols(bytes([version]) + stream[1:], LATENT, TABLES)
    other = _laplace_tables(radius=13)  # a receiver holding another model's tables
    with pytest.raises(CodecError):
        decode_symbols(stream, LATENT, other)
    for shape in [(1, 8, 7, 6), (2, 8, 7, 7), (1, 8, 6, 7)]:
        with pytest.raises(CodecError):
            decode_symbols(stream, shape, TABLES)
    # (8, 7, 7) is the same symbols in the same order as (1, 8, 7, 7): same stream, by design
    assert np.array_equal(decode_symbols(stream, (8, 7, 7), TABLES)[None], _golden_symbols())
    bad_shapes: list[tuple[int, ...]] = [(1, 7, 7, 7), (8, 49), (1, 1, 8, 7, 7), (1, 8, 0, 7)]
    for bad in bad_shapes:
        with pytest.raises(CodecError, match="shape"):
            decode_symbols(stream, bad, TABLES)


def test_bad_arguments_are_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_symbols("abc", LATENT, TABLES)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="integers"):
        encode_symbols(np.zeros(LATENT), TABLES)
    with pytest.raises(CodecError, match="channels"):
        encode_symbols(np.zeros((1, 3, 7, 7), dtype=np.int64), TABLES)


@pytest.mark.parametrize("seed", range(3))
def test_random_garbage_is_codec_error(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (5, 6, 40, 200):
        garbage = bytes([1]) + rng.integers(0, 256, n - 1, dtype=np.uint8).tobytes()
        with pytest.raises(CodecError):
            decode_symbols(garbage, LATENT, TABLES)


# --- EntropyCodec -----------------------------------------------------------------------------


def test_codec_round_trip_within_half_a_step() -> None:
    codec = EntropyCodec(TABLES, step=0.5, suffix="-test")
    assert codec.name == "ent-test" and not codec.lossless and not codec.fixed_size
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    assert float(x.abs().max()) < 6  # inside the support: |x / step| < 12
    enc = codec.encode(x)
    out = codec.decode(enc)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert enc.header == TensorHeader("ent-test", "float32", LATENT, (0.5,))
    assert float((out - x).abs().max()) <= 0.25 + 1e-6
    assert enc.payload_bytes <= codec.payload_size(LATENT)
    assert codec.encode(x).payload == enc.payload


def test_codec_clamps_outside_the_support() -> None:
    codec = EntropyCodec(TABLES, step=1.0)
    x = torch.zeros(LATENT)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1e30, -50.0
    out = codec.decode(codec.encode(x))
    assert out[0, 0, 0, :2].tolist() == [12.0, -12.0] and (out.flatten()[2:] == 0).all()


def test_codec_refuses_what_it_cannot_decode() -> None:
    codec = EntropyCodec(TABLES, step=0.5)
    enc = codec.encode(torch.zeros(LATENT))
    bad_headers = [
        TensorHeader("ent", "float32", LATENT, (1.0,)),  # another step
        TensorHeader("ent", "float32", LATENT, ()),
        TensorHeader("int8", "float32", LATENT, (0.5,)),
        TensorHeader("ent", "float32", (1, 8, 7, 8), (0.5,)),
    ]
    for header in bad_headers:
        with pytest.raises(CodecError):
            codec.decode(Encoded(header, enc.payload))
    too_long = enc.payload + bytes(codec.payload_size(LATENT))
    with pytest.raises(CodecError, match="expected at most"):
        codec.decode(Encoded(enc.header, too_long))
    with pytest.raises(CodecError):
        codec.decode(enc.payload)  # type: ignore[arg-type]
    for bad in (torch.full(LATENT, float("nan")), torch.zeros(1, 4, 7, 7), torch.zeros(8, 49)):
        with pytest.raises(CodecError):
            codec.encode(bad)
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(LATENT, dtype=torch.int64))


@pytest.mark.parametrize("step", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_codec_needs_a_positive_step(step: object) -> None:
    with pytest.raises(ConfigError):
        EntropyCodec(TABLES, step=step)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        EntropyCodec(TABLES.to_json())  # type: ignore[arg-type]


def test_codec_is_not_registered_by_default_but_can_be(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not any(name.startswith("ent") for name in list_codecs())
    monkeypatch.setattr(tensor_mod, "_REGISTRY", dict(tensor_mod._REGISTRY))
    register_codec(EntropyCodec(TABLES, suffix="-bottleneck"))
    assert "ent-bottleneck" in list_codecs()


# --- golden bitstream -------------------------------------------------------------------------


def test_golden_bitstream() -> None:
    stream = _golden_stream()
    got = {
        "bytes": len(stream),
        "stream_sha256": hashlib.sha256(stream).hexdigest(),
        "tables_sha256": hashlib.sha256(TABLES.to_json().encode()).hexdigest(),
    }
    if os.environ.get("COLLABINFER_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {GOLDEN}; review and commit it")
    hint = "entropy bitstream changed; if on purpose, rerun with COLLABINFER_REGEN_GOLDEN=1"
    assert GOLDEN.exists(), hint
    assert json.loads(GOLDEN.read_text()) == got, hint
