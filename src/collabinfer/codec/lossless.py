"""General-purpose lossless compression on top of a fixed-length codec.

Why: ``int8`` or ``u8`` payloads of ReLU features and dark images are full of
repeats, so zstd or lz4 over them costs nothing in accuracy and can save a
large share of the bytes. A :class:`LosslessCodec` runs its inner codec, then
compresses the inner payload:

- the header is the inner codec's header with ``codec`` renamed (e.g.
  ``"int8+zstd"``); the inner params (min, scale, ...) stay as they are;
- ``zstd``: one standard zstd frame that records its content size, no
  checksum (the frame header costs a few bytes; a checksum would add 4);
- ``lz4``: one raw lz4 block, no frame and no stored size (the decoder knows
  the size from the header shape).

Decode refuses (:class:`CodecError`) anything that does not decompress to
exactly the inner payload length for the header's shape. That length is
known before decompressing, so it is also the cap on the output: a small
payload cannot make the decoder allocate more (no decompression bombs).

``payload_size`` is the library's worst-case bound for the inner size
(``ZSTD_compressBound`` / ``LZ4_compressBound``), so a rate budget planned
with it is never exceeded. The error bound of the result is the inner
codec's: compression is exact.

Example::

    >>> import torch
    >>> from collabinfer.codec import get_codec
    >>> codec = get_codec("int8+zstd")
    >>> enc = codec.encode(torch.zeros(1, 16, 28, 28))
    >>> enc.payload_bytes < 100 < codec.payload_size((1, 16, 28, 28))
    True
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from collabinfer.codec.tensor import Codec, Encoded, TensorHeader, _BaseCodec
from collabinfer.errors import CodecError, ConfigError

Method = Literal["zstd", "lz4"]

DEFAULT_ZSTD_LEVEL = 19
"""Strongest non-"ultra" level: payloads are kilobytes, so even level 19 takes ~1 ms."""

_INSTALL_HINT = "pip install zstandard lz4 (both are collabinfer dependencies)"


def _import(module: str) -> Any:
    """Import a compression library lazily, with an install hint instead of a traceback."""
    try:
        if module == "zstd":
            import zstandard

            return zstandard
        import lz4.block

        return lz4.block
    except ImportError as e:
        raise CodecError(f"codec needs {module}: {_INSTALL_HINT}") from e


def _compress_bound(method: Method, n: int) -> int:
    """Largest compressed size of ``n`` bytes (from ``zstd.h`` and ``lz4.h``)."""
    if method == "zstd":
        small = ((128 << 10) - n) >> 11 if n < (128 << 10) else 0
        return n + (n >> 8) + small
    return n + n // 255 + 16


class LosslessCodec(_BaseCodec):
    """``inner`` followed by zstd or lz4; see the module docstring for the format."""

    fixed_size = False

    def __init__(
        self,
        inner: Codec,
        method: Method = "zstd",
        *,
        level: int = DEFAULT_ZSTD_LEVEL,
        name: str | None = None,
    ) -> None:
        if not isinstance(inner, _BaseCodec) or not inner.fixed_size:
            raise ConfigError(f"inner codec must be a built-in fixed-length codec, got {inner!r}")
        if method not in ("zstd", "lz4"):
            raise ConfigError(f"unknown compression {method!r}; use 'zstd' or 'lz4'")
        if method == "zstd" and (
            isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22
        ):
            raise ConfigError(f"zstd level must be an integer in 1..22, got {level!r}")
        self.inner = inner
        self.method: Method = method
        self.level = level
        self.name = name if name is not None else f"{inner.name}+{method}"
        self.lossless = inner.lossless

    def payload_size(self, shape: tuple[int, ...]) -> int:
        """Upper bound: the compressor's worst case for the inner payload size."""
        return _compress_bound(self.method, self.inner.payload_size(shape))

    def _n_params(self, shape: tuple[int, ...]) -> int:
        return self.inner._n_params(shape)

    def encode(self, t: torch.Tensor) -> Encoded:
        enc = self.inner.encode(t)
        h = enc.header
        if self.method == "zstd":
            zstd = _import("zstd")
            cctx = zstd.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=False, threads=0
            )
            payload = cctx.compress(enc.payload)
        else:
            payload = _import("lz4").compress(enc.payload, mode="default", store_size=False)
        if len(payload) > self.payload_size(h.shape):  # cannot happen; keeps the bound a promise
            raise CodecError("compressed payload exceeds its documented bound", codec=self.name)
        return Encoded(TensorHeader(self.name, h.dtype, h.shape, h.params), payload)

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        expected = self.inner.payload_size(header.shape)
        raw = self._decompress(enc.payload, expected)
        inner_header = TensorHeader(self.inner.name, header.dtype, header.shape, header.params)
        return self.inner.decode(Encoded(inner_header, raw))

    def _decompress(self, data: bytes, expected: int) -> bytes:
        """Exactly ``expected`` bytes out of ``data``, or CodecError; never more memory."""
        fail = f"{self.method} payload does not decompress to the expected {expected} bytes"
        if self.method == "zstd":
            zstd = _import("zstd")
            try:
                size = zstd.frame_content_size(data)
                if size != expected:  # -1: size not recorded; checked before any allocation
                    raise CodecError(f"{fail}: frame says {size}", codec=self.name)
                raw = zstd.ZstdDecompressor().decompress(
                    data, max_output_size=expected, allow_extra_data=False
                )
            except zstd.ZstdError as e:
                raise CodecError(f"{fail}: {e}", codec=self.name) from None
        else:
            lz4 = _import("lz4")
            try:
                raw = lz4.decompress(data, uncompressed_size=expected)
            except lz4.LZ4BlockError as e:
                raise CodecError(f"{fail}: {e}", codec=self.name) from None
        if len(raw) != expected:
            raise CodecError(f"{fail}: got {len(raw)}", codec=self.name)
        return bytes(raw)
