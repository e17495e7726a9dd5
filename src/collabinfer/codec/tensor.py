"""Tensor codecs: turn an intermediate feature into bytes whose length is the rate.

Why this module exists: a cut point is only as cheap as the bytes it sends, so
every codec reports the payload length for a shape *without encoding*
(``payload_size``, used by the planner and profiler). For a fixed-length codec
(``fixed_size = True``, all built-ins here) that number always equals
``len(encode(t).payload)``; a variable-length codec (entropy coding, zstd,
PNG, ...) cannot know it before encoding, so it sets ``fixed_size = False``
and ``payload_size`` is an upper bound that ``encode`` never exceeds and
``decode`` enforces. The header (codec, dtype, shape and the
params the decoder needs) is compact JSON and is counted separately
(``Encoded.header_bytes``). Nothing is pickled; byte order is fixed
little-endian, so bytes written on one machine decode on any other.

Built-in codecs (decode always yields float32 with the header's shape):

- ``fp32``: 4 bytes/element, lossless (bit-exact for float32 input).
- ``fp16``: 2 bytes/element; IEEE half rounding, ``|err| <= 2**-11 * |x|`` in the
  normal range, and ``|x| > 65504`` becomes inf.
- ``int8``: 1 byte/element; ``|err| <= scale/2 + 8 * eps32 * max(|min|, |max|)``
  with ``scale = (max - min) / 255`` and ``eps32 = 2**-23``. Ideal rounding
  gives ``scale/2``; the slack covers float32 rounding in ``(x - min) / scale``
  and ``min + q * scale``. A constant tensor gets ``scale = 1``, decodes exactly.
- ``int8-channel``: the ``int8`` bound per channel of dim 1 (per tensor if 1-D).

Example::

    >>> import torch
    >>> from collabinfer.codec import get_codec
    >>> codec = get_codec("int8")
    >>> enc = codec.encode(torch.randn(1, 16, 28, 28))
    >>> enc.payload_bytes == codec.payload_size((1, 16, 28, 28)) == 12544
    True
    >>> codec.decode(enc).shape
    torch.Size([1, 16, 28, 28])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from collabinfer.errors import CodecError

MAX_ELEMENTS = 2**28
"""Largest tensor a header may describe: a hostile header cannot make us allocate more."""
MAX_NDIM = 32  # most dimensions a header may describe

_HEADER_KEYS = frozenset({"codec", "dtype", "shape", "params"})
_FLOAT_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


def _numel(shape: Sequence[Any]) -> int:
    """Element count of ``shape``, refusing what no real feature has (CodecError)."""
    if len(shape) > MAX_NDIM:
        raise CodecError(f"shape has {len(shape)} dims, at most {MAX_NDIM} allowed")
    n = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise CodecError(f"shape dims must be integers, got {d!r}", shape=shape)
        if d <= 0:
            raise CodecError(f"shape dims must be positive, got {d}", shape=shape)
        n *= d  # dims are positive, so n only grows and the early exit is safe
        if n > MAX_ELEMENTS:
            raise CodecError(f"shape exceeds {MAX_ELEMENTS} elements", shape=shape)
    return n


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: a 400-digit number in an error
    message would cost more than the request that sent it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _reject_constant(name: str) -> float:
    raise CodecError(f"header contains non-finite number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CodecError(f"header has duplicate key {key!r}")
        out[key] = value
    return out


@dataclass(frozen=True)
class TensorHeader:
    """What the decoder needs besides the payload; validated on construction.

    ``dtype`` is the sender's torch dtype name (informational: decode always
    yields float32); ``params`` are codec-specific floats (e.g. min and scale).
    """

    codec: str
    dtype: str
    shape: tuple[int, ...]
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not self.codec:
            raise CodecError(f"header codec must be a non-empty string, got {self.codec!r}")
        if not isinstance(self.dtype, str) or self.dtype not in _FLOAT_DTYPES:
            msg = f"header dtype {self.dtype!r} is not one of {sorted(_FLOAT_DTYPES)}"
            raise CodecError(msg, codec=self.codec)
        if not isinstance(self.shape, tuple | list):
            raise CodecError(f"header shape must be a list, got {self.shape!r}", codec=self.codec)
        shape = tuple(self.shape)
        _numel(shape)
        if not isinstance(self.params, tuple | list):
            raise CodecError(f"header params must be a list, got {self.params!r}")
        for p in self.params:
            if isinstance(p, bool) or not isinstance(p, int | float):
                raise CodecError(f"header params must be numbers, got {p!r}", codec=self.codec)
            try:
                finite = math.isfinite(p)
            except OverflowError:  # an integer too large for a float
                finite = False
            if not finite:
                raise CodecError(f"header params must be finite, got {_short(p)}", codec=self.codec)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))

    def to_json_bytes(self) -> bytes:
        """Compact JSON with sorted keys: the same header always gives the same bytes."""
        obj = {"codec": self.codec, "dtype": self.dtype, "shape": list(self.shape)}
        obj["params"] = list(self.params)
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json_bytes(cls, b: bytes) -> TensorHeader:
        """Parse bytes from the wire; anything malformed is a :class:`CodecError`."""
        if not isinstance(b, bytes | bytearray | memoryview):
            raise CodecError(f"header must be bytes, got {type(b).__name__}")
        try:
            text = bytes(b).decode("utf-8")
            obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
            raise CodecError(f"header is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise CodecError(f"header must be a JSON object, got {type(obj).__name__}")
        if set(obj) != _HEADER_KEYS:
            missing, extra = sorted(_HEADER_KEYS - set(obj)), sorted(set(obj) - _HEADER_KEYS)
            raise CodecError(f"header keys wrong: missing {missing}, unexpected {extra}")
        return cls(codec=obj["codec"], dtype=obj["dtype"], shape=obj["shape"], params=obj["params"])


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor. Rate is ``payload_bytes``; ``header_bytes`` is reported apart."""

    header: TensorHeader
    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.header, TensorHeader):
            raise CodecError(f"header must be a TensorHeader, got {type(self.header).__name__}")
        if isinstance(self.payload, bytearray | memoryview):
            object.__setattr__(self, "payload", bytes(self.payload))  # freeze a mutable buffer
        elif not isinstance(self.payload, bytes):
            raise CodecError(f"payload must be bytes, got {type(self.payload).__name__}")

    @property
    def payload_bytes(self) -> int:
        return len(self.payload)

    @property
    def header_bytes(self) -> int:
        return len(self.header.to_json_bytes())


@runtime_checkable
class Codec(Protocol):
    """The whole contract a codec meets; tests run it over every registered codec.

    ``payload_size(shape)`` is exact when ``fixed_size`` is true, and an upper
    bound on ``len(encode(t).payload)`` for a ``t`` of that shape otherwise.
    """

    name: str
    lossless: bool
    fixed_size: bool

    def encode(self, t: torch.Tensor) -> Encoded: ...

    def decode(self, enc: Encoded) -> torch.Tensor: ...

    def payload_size(self, shape: tuple[int, ...]) -> int: ...


def _source_dtype(t: torch.Tensor) -> str:
    """Validate an input tensor before any work; return its dtype name."""
    if not isinstance(t, torch.Tensor):
        raise CodecError(f"can only encode a torch.Tensor, got {type(t).__name__}")
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _FLOAT_DTYPES:
        raise CodecError(f"cannot encode dtype {dtype}; expected one of {sorted(_FLOAT_DTYPES)}")
    _numel(tuple(t.shape))
    return dtype


def _f32_params(values: np.ndarray) -> tuple[float, ...]:
    """float32 values as the shortest decimals that read back to the same float32.

    Short headers, and decode (which rounds params to float32) sees exactly the encoder's values.
    """
    out = [float(s) for s in map(str, values)]  # numpy's str is the shortest float32 repr
    same = np.asarray(out, dtype=np.float64).astype(np.float32) == values
    if not same.all():  # double rounding via float64 can, rarely, land on a neighbour
        out = [o if ok else float(v) for o, ok, v in zip(out, same, values, strict=True)]
    return tuple(out)


class _BaseCodec:
    """Shared header checks, so every decode refuses bad input the same way.

    Fixed-length unless a subclass says otherwise (and then overrides
    ``payload_size`` with its upper bound): ``_open`` then refuses a payload
    longer than the bound instead of one of a different length.
    """

    name: str
    lossless: bool
    fixed_size: bool = True
    _bytes_per_element: int

    def payload_size(self, shape: tuple[int, ...]) -> int:
        return _numel(tuple(shape)) * self._bytes_per_element

    def _n_params(self, shape: tuple[int, ...]) -> int:
        return 0

    def _open(self, enc: Encoded) -> TensorHeader:
        if not isinstance(enc, Encoded):
            raise CodecError(f"can only decode Encoded, got {type(enc).__name__}", codec=self.name)
        header = enc.header
        if header.codec != self.name:
            raise CodecError(f"header is for codec {header.codec!r}", codec=self.name)
        want = self._n_params(header.shape)
        if len(header.params) != want:
            msg = f"header has {len(header.params)} params, expected {want}"
            raise CodecError(msg, codec=self.name, shape=header.shape)
        expected, got = self.payload_size(header.shape), len(enc.payload)
        if self.fixed_size and got != expected:
            msg = f"payload is {got} bytes, expected {expected} for shape {header.shape}"
            raise CodecError(msg, codec=self.name, expected=expected, got=got)
        if not self.fixed_size and got > expected:
            msg = f"payload is {got} bytes, expected at most {expected} for shape {header.shape}"
            raise CodecError(msg, codec=self.name, expected=expected, got=got)
        return header


class RawFloatCodec(_BaseCodec):
    """Raw little-endian IEEE floats: the baseline every other codec is measured against."""

    def __init__(self, name: str, dtype: torch.dtype, wire: str, *, lossless: bool) -> None:
        self.name = name
        self.lossless = lossless
        self._dtype = dtype
        self._wire = np.dtype(wire)
        self._bytes_per_element = self._wire.itemsize

    def encode(self, t: torch.Tensor) -> Encoded:
        src = _source_dtype(t)
        x = t.detach().to(device="cpu", dtype=self._dtype).contiguous()
        header = TensorHeader(self.name, src, tuple(x.shape))
        return Encoded(header, x.numpy().astype(self._wire, copy=False).tobytes())

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        arr = np.frombuffer(enc.payload, dtype=self._wire).astype(np.float32)  # owned copy
        return torch.from_numpy(arr).reshape(header.shape)


class AffineInt8Codec(_BaseCodec):
    """uint8 affine quantisation, ``x ≈ min + q * scale``, per tensor or per channel.

    Per channel (dim 1, tensors with ndim >= 2) spends ``2 * C`` header floats
    to stop one loud channel from flattening the others; 1-D and scalar
    tensors fall back to one (min, scale) pair. Params are ``mins + scales``.
    """

    lossless = False
    _bytes_per_element = 1

    def __init__(self, name: str, *, per_channel: bool) -> None:
        self.name = name
        self._per_channel = per_channel

    def _groups(self, shape: tuple[int, ...]) -> int:
        return shape[1] if self._per_channel and len(shape) >= 2 else 1

    def _n_params(self, shape: tuple[int, ...]) -> int:
        return 2 * self._groups(shape)

    def _view(self, shape: tuple[int, ...]) -> list[int]:
        """Broadcast shape of the per-group params against a tensor of ``shape``."""
        groups = self._groups(shape)
        if groups == 1:
            return [1] * len(shape)
        return [1, groups] + [1] * (len(shape) - 2)

    def encode(self, t: torch.Tensor) -> Encoded:
        src = _source_dtype(t)
        a = t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        shape = tuple(a.shape)
        groups = self._groups(shape)
        flat = a.swapaxes(0, 1).reshape(groups, -1) if groups > 1 else a.reshape(1, -1)
        # numpy, not torch: at batch 1 torch's per-op overhead dominates (~5x slower)
        with np.errstate(over="ignore", invalid="ignore"):
            lo = flat.min(axis=1)
            scale = (flat.max(axis=1) - lo) / np.float32(255)
        # NaN or inf anywhere makes min/max non-finite, so checking scale catches all
        if not np.isfinite(scale).all():
            raise CodecError("int8 needs finite values with a float32-sized range", codec=self.name)
        scale = np.where(scale > 0, scale, np.float32(1))  # constant: no division by zero
        view = self._view(shape)
        q = np.subtract(a, lo.reshape(view), out=np.empty_like(a))  # out=: stays an array at 0-d
        np.divide(q, scale.reshape(view), out=q)
        np.clip(np.rint(q, out=q), 0, 255, out=q)
        header = TensorHeader(self.name, src, shape, _f32_params(lo) + _f32_params(scale))
        return Encoded(header, q.astype(np.uint8).tobytes())

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        groups = self._groups(header.shape)
        with np.errstate(over="ignore"):  # a huge param becomes inf here and is refused below
            params = np.asarray(header.params, dtype=np.float64).astype(np.float32)
            lo, scale = params[:groups], params[groups:]
            top = lo + np.float32(255) * scale
        if not (np.isfinite(params).all() and np.isfinite(top).all() and (scale > 0).all()):
            raise CodecError("int8 params must be finite with scale > 0", codec=self.name)
        view = self._view(header.shape)
        out = np.frombuffer(enc.payload, dtype=np.uint8).astype(np.float32).reshape(header.shape)
        out *= scale.reshape(view)
        out += lo.reshape(view)
        return torch.from_numpy(out)


_REGISTRY: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available to :func:`get_codec` under ``codec.name``."""
    if not isinstance(codec, Codec):
        raise CodecError(f"{type(codec).__name__} does not implement the Codec protocol")
    if not isinstance(codec.name, str) or not codec.name:
        raise CodecError(f"codec name must be a non-empty string, got {codec.name!r}")
    if codec.name in _REGISTRY:
        raise CodecError(f"codec {codec.name!r} is already registered")
    _REGISTRY[codec.name] = codec


def get_codec(name: str) -> Codec:
    """The registered codec called ``name``; unknown names list the known ones."""
    codec = _REGISTRY.get(name) if isinstance(name, str) else None
    if codec is None:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(list_codecs())}")
    return codec


def list_codecs() -> list[str]:
    """Registered codec names, sorted so the order does not depend on import order."""
    return sorted(_REGISTRY)


for _codec in (
    RawFloatCodec("fp32", torch.float32, "<f4", lossless=True),
    RawFloatCodec("fp16", torch.float16, "<f2", lossless=False),
    AffineInt8Codec("int8", per_channel=False),
    AffineInt8Codec("int8-channel", per_channel=True),
):
    register_codec(_codec)
del _codec
