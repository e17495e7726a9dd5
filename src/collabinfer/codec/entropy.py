"""Entropy coding of integer latents under a factorized prior with integer tables.

Why: a learned bottleneck is only as cheap as the bits its latents really
cost, so the rate must come from a real bitstream, not from likelihoods. The
prior is one categorical distribution per channel, stored as **integer
frequency tables** (:class:`FactorizedTables`). Integers, because sender and
receiver must use bit-identical probabilities. Today each side *derives* the
tables from the model's weights (:func:`collabinfer.model.bottleneck.deploy`:
the prior's float64 probabilities, quantised by :meth:`FactorizedTables.from_probabilities`);
that is deterministic arithmetic on the same weights, and a test derives them
in two separate processes and decodes one's bitstream in the other. Should two
machines ever differ in the last bit, the stream's CRC turns the mismatch into
a :class:`CodecError`, never into wrong symbols; :meth:`FactorizedTables.to_json`
is the form to ship them in where deriving is not wanted.

Coder: ``constriction``'s ANS (``AnsCoder``, 32-bit words, 24-bit
probabilities). constriction does not take integer tables directly: its
``Categorical(p, perfect=False)`` quantises floats as
``left[i] = floor(cumsum(p)[:i] * (2**24 - K) / sum(p)) + i``. Feeding it the
weights ``p[i] = f[i] * 2**(24 - P) - 1`` (integers below ``2**24``, exact in
float32 and float64) makes that scale exactly 1 and every step exact, so it
codes with exactly ``f[i] * 2**(24 - P)``, i.e. with our ``f[i] / 2**P``.
A test checks this bit for bit against a reference ANS over the integers.

Bitstream of :func:`encode_symbols` (``FORMAT_VERSION`` 1)::

    byte 0      format version (1)
    bytes 1..4  CRC-32 (zlib) of the coded symbol indices ``symbol - offset``
                as little-endian int32, channel by channel
    bytes 5..   the ANS words, little-endian uint32, with the zero high bytes
                of the last word dropped (a valid stream never ends in 0x00)

Symbols are coded channel by channel (for ``(N, C, H, W)``: all ``N*H*W``
symbols of channel 0 in C order, then channel 1, ...). The decoder knows the
shape and tables, so nothing else is sent. Framing costs 5 bytes; the ANS
flush costs at most 8 more. The CRC costs 4 of those bytes and buys what the
coder cannot: entropy-coded bytes carry almost no redundancy, so a flipped
bit usually decodes to other, valid-looking symbols. With it, truncation,
corruption, trailing bytes, or a receiver holding *different tables* raise
:class:`CodecError` (a random corruption passes with probability ``2**-32``).

Symbols outside a channel's support ``[offset, offset + K)`` are **clamped**
to its nearest end (``encode_symbols(..., clamp=False)`` refuses them
instead); build tables with enough tail mass that this is rare.

Example::

    >>> import numpy as np
    >>> tables = FactorizedTables.from_probabilities([[0.1, 0.8, 0.1]], offsets=[-1])
    >>> y = np.array([[[0, 0, 1], [-1, 0, 0]]])  # (C, H, W) = (1, 2, 3)
    >>> data = encode_symbols(y, tables)
    >>> len(data)  # 5 bytes framing + 4 of ANS state
    9
    >>> bool((decode_symbols(data, y.shape, tables) == y).all())
    True
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from collabinfer.codec.tensor import Encoded, TensorHeader, _BaseCodec, _numel, _source_dtype
from collabinfer.errors import CodecError, ConfigError

FORMAT_VERSION = 1
"""First byte of every bitstream; bump it when the format changes."""

MAX_PRECISION = 24
"""constriction's categorical models work with 24-bit probabilities."""

_TABLES_FORMAT = "collabinfer.factorized-tables"
_FRAME_BYTES = 5  # version byte + CRC-32
_MAX_OFFSET = 2**30  # |offset| and offset + K stay far inside int32
_MAX_SYMBOLS = 2**16  # per channel; a prior wider than this is a bug, and tables stay small
_INSTALL_HINT = "pip install constriction (a collabinfer dependency)"


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class FactorizedTables:
    """One integer frequency table per channel: the prior both sides must share.

    Channel ``c`` codes symbols ``offsets[c] .. offsets[c] + len(freqs[c]) - 1``;
    symbol ``offsets[c] + i`` has probability ``freqs[c][i] / 2**precision``.
    Every frequency is at least 1 (every symbol in range is codable) and each
    table sums to exactly ``2**precision``; a table has 2 to ``2**16`` symbols.
    """

    precision: int
    offsets: tuple[int, ...]
    freqs: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        p = _check_int(self.precision, "precision")
        if not 1 <= p <= MAX_PRECISION:
            raise ConfigError(f"precision must be in 1..{MAX_PRECISION}, got {p}")
        if not isinstance(self.offsets, Sequence) or not isinstance(self.freqs, Sequence):
            raise ConfigError("offsets and freqs must be sequences")
        if any(not isinstance(row, Sequence) for row in self.freqs):
            raise ConfigError("freqs must be a sequence of per-channel sequences")
        offsets = tuple(_check_int(o, "offset") for o in self.offsets)
        freqs = tuple(tuple(_check_int(f, "frequency") for f in row) for row in self.freqs)
        if not freqs or len(freqs) != len(offsets):
            msg = f"need one offset per table, got {len(offsets)} offsets, {len(freqs)} tables"
            raise ConfigError(msg)
        for c, (offset, row) in enumerate(zip(offsets, freqs, strict=True)):
            if not 2 <= len(row) <= min(2**p, _MAX_SYMBOLS):
                msg = (
                    f"channel {c}: a table has 2..min(2**precision, 2**16) symbols, not {len(row)}"
                )
                raise ConfigError(msg)
            if min(row) < 1 or sum(row) != 2**p:
                raise ConfigError(f"channel {c}: frequencies must be >= 1 and sum to 2**{p}")
            if abs(offset) > _MAX_OFFSET or abs(offset + len(row)) > _MAX_OFFSET:
                raise ConfigError(f"channel {c}: offset {offset} is out of range")
        object.__setattr__(self, "precision", p)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "freqs", freqs)

    @property
    def num_channels(self) -> int:
        return len(self.freqs)

    @classmethod
    def from_probabilities(
        cls,
        probs: Sequence[Sequence[float]] | np.ndarray,
        offsets: Sequence[int],
        precision: int = 16,
    ) -> FactorizedTables:
        """Integer tables from per-channel probabilities (or counts; rows may differ in length).

        Deterministic on every machine: the only float step is
        ``units[i] = floor(p[i] / fsum(p) * 2**32)`` (IEEE division, exact
        scaling, correctly rounded ``math.fsum``); the rest is integer
        arithmetic. Each symbol gets 1, the other ``2**precision - K`` are
        shared in proportion to ``units`` by the largest-remainder method
        (ties go to the smaller symbol).
        """
        p = _check_int(precision, "precision")
        if not 1 <= p <= MAX_PRECISION:
            raise ConfigError(f"precision must be in 1..{MAX_PRECISION}, got {p}")
        rows = [[float(x) for x in row] for row in probs]
        if len(rows) != len(offsets):
            raise ConfigError(f"got {len(rows)} probability rows but {len(offsets)} offsets")
        return cls(p, tuple(offsets), tuple(_quantise(row, p, c) for c, row in enumerate(rows)))

    def to_json(self) -> str:
        """Compact, sorted JSON: the form the tables travel in when they are shipped."""
        obj = {
            "format": _TABLES_FORMAT,
            "version": FORMAT_VERSION,
            "precision": self.precision,
            "offsets": list(self.offsets),
            "freqs": [list(row) for row in self.freqs],
        }
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> FactorizedTables:
        """Parse :meth:`to_json` output; anything malformed is a :class:`ConfigError`."""
        try:
            obj = json.loads(text)
        except (ValueError, TypeError, RecursionError) as e:
            raise ConfigError(f"tables are not valid JSON: {e}") from None
        keys = {"format", "version", "precision", "offsets", "freqs"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise ConfigError(f"tables JSON must be an object with keys {sorted(keys)}")
        if obj["format"] != _TABLES_FORMAT or obj["version"] != FORMAT_VERSION:
            raise ConfigError(f"unsupported tables format {obj['format']!r} v{obj['version']!r}")
        if not isinstance(obj["offsets"], list) or not isinstance(obj["freqs"], list):
            raise ConfigError("tables offsets and freqs must be lists")
        return cls(obj["precision"], tuple(obj["offsets"]), tuple(obj["freqs"]))

    def _max_bits(self) -> list[int]:
        """Per channel, whole bits the least likely symbol costs at most: P - floor(log2 f_min)."""
        return [self.precision - (min(row).bit_length() - 1) for row in self.freqs]


def _quantise(row: list[float], precision: int, channel: int) -> tuple[int, ...]:
    """One channel's probabilities -> integer frequencies (see ``from_probabilities``)."""
    k, total = len(row), math.fsum(row)
    if not 2 <= k <= min(2**precision, _MAX_SYMBOLS):
        msg = f"channel {channel}: need 2..min(2**precision, 2**16) probabilities, got {k}"
        raise ConfigError(msg)
    if not all(math.isfinite(x) and x >= 0 for x in row) or not (
        math.isfinite(total) and total > 0
    ):
        raise ConfigError(f"channel {channel}: probabilities must be finite, >= 0, not all 0")
    units = [math.floor(x / total * 2**32) for x in row]  # the one float -> int step
    scale, free = sum(units), 2**precision - k
    shares = [u * free for u in units]
    base = [s // scale for s in shares]
    by_remainder = sorted(range(k), key=lambda i: (-(shares[i] % scale), i))
    for i in by_remainder[: free - sum(base)]:
        base[i] += 1
    return tuple(1 + b for b in base)


# --- coding ---------------------------------------------------------------------------------


def _constriction() -> Any:
    try:
        import constriction
    except ImportError as e:
        raise CodecError(f"entropy coding needs constriction: {_INSTALL_HINT}") from e
    return constriction


@functools.lru_cache(maxsize=16)
def _models(tables: FactorizedTables) -> tuple[Any, ...]:
    """constriction models that code with exactly ``tables`` (see the module docstring)."""
    categorical = _constriction().stream.model.Categorical
    shift = 2 ** (MAX_PRECISION - tables.precision)
    return tuple(
        categorical(np.asarray(row, dtype=np.float64) * shift - 1.0, perfect=False)
        for row in tables.freqs
    )


def _channel_count(shape: tuple[int, ...], tables: FactorizedTables) -> int:
    """Symbols per channel for a ``(C, H, W)`` or ``(N, C, H, W)`` shape, validated."""
    n = _numel(shape)
    if len(shape) not in (3, 4):
        raise CodecError(f"latent shape must be (C, H, W) or (N, C, H, W), got {shape}")
    channels = shape[-3]
    if channels != tables.num_channels:
        msg = f"latent shape {shape} has {channels} channels, the tables {tables.num_channels}"
        raise CodecError(msg)
    return n // channels


def _to_channel_rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1) if a.ndim == 3 else a.swapaxes(0, 1).reshape(a.shape[1], -1)


def _from_channel_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 3:
        return rows.reshape(shape)
    n, c, h, w = shape
    return np.ascontiguousarray(rows.reshape(c, n, h, w).swapaxes(0, 1))


def _checksum(indices: np.ndarray) -> bytes:
    return zlib.crc32(indices.astype("<i4").tobytes()).to_bytes(4, "little")


def max_stream_bytes(shape: tuple[int, ...], tables: FactorizedTables) -> int:
    """Upper bound on ``len(encode_symbols(y, tables))`` for any ``y`` of ``shape``.

    Once the ANS state exceeds 24 bits, each step costs at most one bit more
    than the symbol's information (``P - log2 f``, at most ``_max_bits``)
    and each 32-bit word pushed at most ``log2(1 + 2**-8) < 0.006`` bit;
    before that the state holds at most 24 bits. The flush rounds up to
    whole bytes, and the frame adds 5. Loose by design (~1 bit per symbol
    more than the rarest symbol costs): what a planner may budget, not what
    is sent.
    """
    per_channel = _channel_count(tuple(shape), tables)
    n = per_channel * tables.num_channels
    bits = sum(per_channel * (b + 1) for b in tables._max_bits()) + 24 + n // 128 + 8
    return _FRAME_BYTES + 8 + -(-bits // 8)


def encode_symbols(symbols: np.ndarray, tables: FactorizedTables, *, clamp: bool = True) -> bytes:
    """Entropy-code integer ``symbols`` of shape ``(C, H, W)`` or ``(N, C, H, W)``.

    Out-of-support symbols are clamped to the support (``clamp=False``:
    :class:`CodecError` instead). See the module docstring for the bitstream.
    """
    a = np.asarray(symbols)
    if a.dtype.kind not in "iu":
        raise CodecError(f"symbols must be integers, got dtype {a.dtype}")
    _channel_count(tuple(a.shape), tables)
    rows = _to_channel_rows(a).astype(np.int64)
    lo = np.asarray(tables.offsets, dtype=np.int64)[:, None]
    hi = lo + np.asarray([len(f) for f in tables.freqs], dtype=np.int64)[:, None] - 1
    if not clamp and ((rows < lo) | (rows > hi)).any():
        raise CodecError("symbols outside the tables' support and clamp=False")
    indices = (np.clip(rows, lo, hi) - lo).astype(np.int32)
    models = _models(tables)
    coder = _constriction().stream.stack.AnsCoder()
    for c in reversed(range(tables.num_channels)):  # a stack: channel 0 is decoded first
        coder.encode_reverse(indices[c], models[c])
    body = coder.get_compressed().astype("<u4").tobytes().rstrip(b"\x00")
    return bytes([FORMAT_VERSION]) + _checksum(indices) + body


def decode_symbols(data: bytes, shape: tuple[int, ...], tables: FactorizedTables) -> np.ndarray:
    """Symbols (int64, ``shape``) from :func:`encode_symbols` output; CodecError if not valid."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"bitstream must be bytes, got {type(data).__name__}")
    data, shape = bytes(data), tuple(shape)
    per_channel = _channel_count(shape, tables)
    bound = max_stream_bytes(shape, tables)
    if not _FRAME_BYTES <= len(data) <= bound:
        raise CodecError(f"bitstream is {len(data)} bytes, expected {_FRAME_BYTES}..{bound}")
    if data[0] != FORMAT_VERSION:
        raise CodecError(f"bitstream format version {data[0]}, expected {FORMAT_VERSION}")
    body = data[_FRAME_BYTES:]
    if body.endswith(b"\x00"):
        raise CodecError("bitstream ends in a zero byte: truncated, padded or corrupt")
    words = np.frombuffer(body + bytes(-len(body) % 4), dtype="<u4").astype(np.uint32)
    models = _models(tables)
    indices = np.empty((tables.num_channels, per_channel), dtype=np.int32)
    try:
        coder = _constriction().stream.stack.AnsCoder(words)
        for c in range(tables.num_channels):
            indices[c] = coder.decode(models[c], per_channel)
        complete = coder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as e:  # constriction's refusals
        raise CodecError(f"bitstream does not decode: {e}") from None
    if not complete:
        raise CodecError("bitstream has data left after the last symbol: corrupt or trailing bytes")
    if _checksum(indices) != data[1:_FRAME_BYTES]:
        raise CodecError("bitstream checksum mismatch: corrupt, or coded with other tables")
    lo = np.asarray(tables.offsets, dtype=np.int64)[:, None]
    return _from_channel_rows(indices.astype(np.int64) + lo, shape)


# --- the codec ------------------------------------------------------------------------------


class EntropyCodec(_BaseCodec):
    """Quantise ``round(x / step)``, entropy-code under ``tables``; the codec of a bottleneck.

    Both sides build it from the same tables (shipped with the checkpoint),
    so the header carries only ``step``, checked on decode. Not registered by
    default: the bottleneck registers its own instance with ``register_codec``.

    Error bound: ``|x - decode(encode(x))| <= step / 2`` (plus float32
    rounding) where ``round(x / step)`` is inside the tables' support; values
    outside are clamped to its ends. Takes ``(C, H, W)`` or ``(N, C, H, W)``
    with ``C == tables.num_channels``; ``payload_size`` is the upper bound
    :func:`max_stream_bytes`.

    Example::

        >>> import torch
        >>> tables = FactorizedTables.from_probabilities([[1, 6, 1]] * 2, offsets=[-1, -1])
        >>> codec = EntropyCodec(tables, step=0.5, suffix="-demo")
        >>> x = torch.tensor([[[[0.1, -0.4], [0.0, 0.6]]] * 2])
        >>> enc = codec.encode(x)
        >>> codec.name, enc.payload_bytes, codec.decode(enc)[0, 0].tolist()
        ('ent-demo', 10, [[0.0, -0.5], [0.0, 0.5]])
    """

    fixed_size = False
    lossless = False

    def __init__(self, tables: FactorizedTables, *, step: float = 1.0, suffix: str = "") -> None:
        if not isinstance(tables, FactorizedTables):
            raise ConfigError(f"tables must be FactorizedTables, got {type(tables).__name__}")
        if isinstance(step, bool) or not isinstance(step, int | float):
            raise ConfigError(f"step must be a number, got {step!r}")
        if not (math.isfinite(step) and step > 0):
            raise ConfigError(f"step must be finite and > 0, got {step!r}")
        self.tables = tables
        self.step = float(step)
        self.name = f"ent{suffix}"

    def payload_size(self, shape: tuple[int, ...]) -> int:
        return max_stream_bytes(tuple(shape), self.tables)

    def _n_params(self, shape: tuple[int, ...]) -> int:
        return 1

    def encode(self, t: torch.Tensor) -> Encoded:
        src = _source_dtype(t)
        shape = tuple(t.shape)
        _channel_count(shape, self.tables)
        a = t.detach().to(device="cpu", dtype=torch.float64).numpy()
        if not np.isfinite(a).all():
            raise CodecError("entropy coding needs finite values", codec=self.name)
        limit = float(_MAX_OFFSET)  # clamp before the int cast; the coder clamps to the support
        q = np.clip(np.rint(a / self.step), -limit, limit).astype(np.int64)
        return Encoded(
            TensorHeader(self.name, src, shape, (self.step,)), encode_symbols(q, self.tables)
        )

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        if header.params[0] != self.step:
            msg = f"header params say step {header.params[0]}, this codec uses {self.step}"
            raise CodecError(msg, codec=self.name)
        symbols = decode_symbols(enc.payload, header.shape, self.tables)
        return torch.from_numpy((symbols * self.step).astype(np.float32))
