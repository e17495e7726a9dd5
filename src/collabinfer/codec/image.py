"""Image codecs for input offloading: PNG, WebP and JPEG through Pillow.

Why: when the device sends the input instead of a feature, the honest
baseline is what a camera pipeline would send, a real image file, not raw
pixels. These codecs take images in ``[0, 1]`` shaped ``(N, 1, H, W)`` (grey)
or ``(N, 3, H, W)`` (RGB); values are clamped to ``[0, 1]`` and rounded to
8 bits first, exactly like ``u8``.

Registered names: ``png``, ``webp-lossless`` (both exact on the 8-bit grid,
so lossless for Fashion-MNIST) and the lossy ``jpeg-q{Q}`` / ``webp-q{Q}`` for
``Q`` in :data:`QUALITIES`.

Encoder settings are fixed so the same pixels always give the same bytes: no
metadata (no EXIF, ICC, XMP or timestamps), PNG ``compress_level=9`` without
``optimize``, JPEG baseline with 4:2:0 chroma subsampling and optimised
Huffman tables, WebP ``method=6``. Those bytes can still change with the
libpng/zlib, libjpeg or libwebp version Pillow was built with.

Payload format: the images of the batch one after another, each prefixed by
its byte length as an unsigned LEB128 varint (1 byte below 128, 2 bytes
below 16 KiB). The prefixes let the decoder refuse truncated payloads and
trailing bytes, which the image decoders themselves would ignore.

Decode checks each image with Pillow before decoding pixels (format, size
and mode must match the header shape, so a small payload cannot make it
decode a huge image; a PNG must end with its IEND chunk) and turns every
failure into :class:`CodecError`. Lossy JPEG and WebP carry no checksum, so
a corrupted file may still decode, to the right shape and range.
WebP has no grey mode, so grey images travel as RGB and come back as
Pillow's luma of the decoded RGB.

``payload_size`` is a loose upper bound, ``1024 + 4 * C * H16 * W16`` bytes
per image plus its prefix (``H16``, ``W16``: ``H``, ``W`` rounded up to 16,
the JPEG/WebP macroblock). Headers and tables take a few hundred bytes and no
format spends 4 bytes per sample even on noise; ``encode`` refuses rather
than exceed it.

Example::

    >>> import torch
    >>> from collabinfer.codec import get_codec
    >>> png = get_codec("png")
    >>> x = torch.zeros(1, 1, 28, 28)
    >>> png.encode(x).payload_bytes < 100
    True
    >>> torch.equal(png.decode(png.encode(x)), x)
    True
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
import torch

from collabinfer.codec.tensor import Encoded, TensorHeader, _BaseCodec, _numel, _source_dtype
from collabinfer.errors import CodecError, ConfigError

Format = Literal["PNG", "JPEG", "WEBP"]

QUALITIES = (10, 25, 50, 75, 90, 95)
"""The quality sweep registered for ``jpeg-q{Q}`` and ``webp-q{Q}``."""

_MAX_SIDE: dict[str, int] = {"PNG": 2**31 - 1, "JPEG": 65_500, "WEBP": 16_383}
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # Pillow decodes a PNG without it: check
_HEADER_ALLOWANCE = 1024  # bytes per image for file headers and tables in the size bound
_INSTALL_HINT = "pip install pillow (a collabinfer dependency)"


def _pil(fmt: str) -> Any:
    """Pillow's Image module, imported lazily, with an install hint when it is missing."""
    try:
        from PIL import Image, features
    except ImportError as e:
        raise CodecError(f"image codecs need Pillow: {_INSTALL_HINT}") from e
    if fmt == "WEBP" and not features.check("webp"):
        raise CodecError("this Pillow was built without WebP support", format=fmt)
    return Image


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Value and next position of the minimal LEB128 varint at ``pos`` (at most 5 bytes)."""
    value = 0
    for i in range(5):
        if pos + i >= len(data):
            raise CodecError("payload ends inside a length prefix, expected more bytes")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise CodecError("length prefix is not minimal")
            return value, pos + i + 1
    raise CodecError("length prefix longer than 5 bytes")


class ImageCodec(_BaseCodec):
    """One image format at one setting; see the module docstring for format and bounds."""

    fixed_size = False
    lossless = False  # exact only for images already on the 1/255 grid (png, webp-lossless)

    def __init__(self, name: str, fmt: Format, quality: int | None = None) -> None:
        if fmt not in _MAX_SIDE:
            raise ConfigError(f"unknown image format {fmt!r}; use one of {sorted(_MAX_SIDE)}")
        if quality is not None and (
            isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
        ):
            raise ConfigError(f"quality must be an integer in 1..100, got {quality!r}")
        if (fmt == "PNG") != (quality is None) and fmt != "WEBP":  # WebP: None is lossless
            raise ConfigError(f"{name}: JPEG needs a quality and PNG takes none")
        self.name = name
        self.format = fmt
        self.quality = quality  # None: the lossless flavour of the format

    def _save_options(self) -> dict[str, Any]:
        if self.format == "PNG":
            return {"compress_level": 9, "optimize": False}
        if self.format == "JPEG":
            opts = {"subsampling": 2, "optimize": True, "progressive": False}
            return {"quality": self.quality, **opts}
        if self.quality is None:
            return {"lossless": True, "quality": 100, "method": 6, "exact": True}
        return {"lossless": False, "quality": self.quality, "method": 6}

    def _image_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        _numel(shape)
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise CodecError(
                f"image codecs take shape (N, 1 or 3, H, W), got {shape}", codec=self.name
            )
        n, c, h, w = shape
        if max(h, w) > _MAX_SIDE[self.format]:
            msg = f"shape {shape}: {self.format} images are at most {_MAX_SIDE[self.format]} px"
            raise CodecError(msg, codec=self.name)
        return n, c, h, w

    def _image_bound(self, c: int, h: int, w: int) -> int:
        return _HEADER_ALLOWANCE + 4 * c * (-(-h // 16) * 16) * (-(-w // 16) * 16)

    def payload_size(self, shape: tuple[int, ...]) -> int:
        """Upper bound on the payload bytes (see the module docstring)."""
        n, c, h, w = self._image_shape(tuple(shape))
        bound = self._image_bound(c, h, w)
        return n * (len(_varint(bound)) + bound)

    def encode(self, t: torch.Tensor) -> Encoded:
        src = _source_dtype(t)
        n, c, h, w = self._image_shape(tuple(t.shape))
        a = t.detach().to(device="cpu", dtype=torch.float32).numpy()
        if not np.isfinite(a).all():
            raise CodecError("image codecs need finite values", codec=self.name)
        q = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        image_mod, options = _pil(self.format), self._save_options()
        bound = self._image_bound(c, h, w)
        parts = []
        for img in q:
            pixels = img[0] if c == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
            buf = io.BytesIO()
            image_mod.fromarray(pixels).save(buf, format=self.format, **options)
            data = buf.getvalue()
            if len(data) > bound:  # never seen; keeps payload_size an honest bound
                raise CodecError(f"{self.format} file exceeds its size bound", codec=self.name)
            parts += [_varint(len(data)), data]
        return Encoded(TensorHeader(self.name, src, (n, c, h, w)), b"".join(parts))

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        n, c, h, w = self._image_shape(header.shape)
        image_mod, bound = _pil(self.format), self._image_bound(c, h, w)
        out = np.empty((n, c, h, w), dtype=np.float32)
        data, pos = enc.payload, 0
        for i in range(n):
            size, pos = _read_varint(data, pos)
            if not 0 < size <= bound or pos + size > len(data):
                msg = f"image {i} claims {size} bytes, expected 1..{bound} within the payload"
                raise CodecError(msg, codec=self.name)
            pixels = self._decode_one(image_mod, data[pos : pos + size], c, h, w)
            out[i] = pixels.reshape(h, w, c).transpose(2, 0, 1)
            pos += size
        if pos != len(data):
            msg = f"{len(data) - pos} trailing bytes after {n} images, expected none"
            raise CodecError(msg, codec=self.name)
        out /= np.float32(255.0)
        return torch.from_numpy(out)

    def _decode_one(self, image_mod: Any, data: bytes, c: int, h: int, w: int) -> np.ndarray:
        """Pixels of one image file, refused unless format, size and mode fit the header."""
        want_mode = "RGB" if c == 3 or self.format == "WEBP" else "L"
        if self.format == "PNG" and not data.endswith(_PNG_END):
            raise CodecError("PNG file does not end with IEND: truncated", codec=self.name)
        try:
            img = image_mod.open(io.BytesIO(data), formats=[self.format])
            # size and mode come from the file header: refuse before decoding any pixels
            if img.format != self.format or img.size != (w, h) or img.mode != want_mode:
                got = f"{img.format} {img.mode} {img.size[0]}x{img.size[1]}"
                msg = f"image is {got}, expected {self.format} {want_mode} {w}x{h}"
                raise CodecError(msg, codec=self.name)
            img.load()
            if c == 1 and img.mode != "L":
                img = img.convert("L")
            return np.asarray(img, dtype=np.uint8)
        except CodecError:
            raise
        except Exception as e:  # Pillow signals bad files with OSError, SyntaxError,
            # ValueError, EOFError, struct.error, zlib.error, ...: all mean "not a valid image"
            msg = f"not a valid {self.format} image: {type(e).__name__}: {e}"
            raise CodecError(msg, codec=self.name) from None


def default_codecs() -> list[ImageCodec]:
    """The registered set: ``png``, ``webp-lossless``, ``jpeg-q{Q}``, ``webp-q{Q}``."""
    lossy: tuple[Format, ...] = ("JPEG", "WEBP")
    sweep = [ImageCodec(f"{fmt.lower()}-q{q}", fmt, q) for fmt in lossy for q in QUALITIES]
    return [ImageCodec("png", "PNG"), ImageCodec("webp-lossless", "WEBP"), *sweep]
