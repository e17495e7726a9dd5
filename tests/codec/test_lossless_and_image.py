"""zstd/lz4 wrappers and image codecs, beyond the shared contract in test_tensor_codecs.py."""

from __future__ import annotations

import io
import random

import pytest
import torch
from PIL import Image

from collabinfer.codec import Encoded, ImageCodec, LosslessCodec, TensorHeader, get_codec
from collabinfer.errors import CodecError, ConfigError

LOSSLESS = ["fp16", "int8", "int8-channel", "u8"]
QUALITIES = (10, 25, 50, 75, 90, 95)


def _fashion_like(n: int = 1, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Dark background, one smooth garment-like blob with texture, on the 1/255 grid
    (RGB: the same blob, tinted)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = 14 + torch.randn(2, generator=g)
        body = ((yy - cy) / 11) ** 2 + ((xx - cx) / 7) ** 2 < 1
        sleeves = ((yy - cy + 6).abs() < 3) & ((xx - cx).abs() < 12)
        shade = 0.55 + 0.25 * torch.cos(yy / 3) * torch.sin(xx / 5)
        out.append((body | sleeves) * shade)
    tint = torch.tensor([1.0, 0.8, 0.6])[:channels].view(1, channels, 1, 1)
    x = torch.stack(out).view(n, 1, 28, 28) * tint
    return torch.round(x.clamp(0, 1) * 255) / 255


def _frame(data: bytes) -> bytes:
    """One image as it sits in a payload: LEB128 length, then the file."""
    n, prefix = len(data), bytearray()
    while n >= 0x80:
        prefix.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*prefix, n]) + data


def _unframe(payload: bytes) -> list[bytes]:
    files, pos = [], 0
    while pos < len(payload):
        n, shift = 0, 0
        while payload[pos] & 0x80:
            n, shift, pos = n | (payload[pos] & 0x7F) << shift, shift + 7, pos + 1
        n, pos = n | payload[pos] << shift, pos + 1
        files.append(payload[pos : pos + n])
        pos += n
    return files


def _mse(codec_name: str, x: torch.Tensor) -> float:
    codec = get_codec(codec_name)
    return float(((codec.decode(codec.encode(x)) - x) ** 2).mean())


# --- zstd / lz4 --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["zstd", "lz4"])
@pytest.mark.parametrize("inner", LOSSLESS)
def test_wrapper_decodes_exactly_what_the_inner_codec_decodes(inner: str, method: str) -> None:
    codec, base = get_codec(f"{inner}+{method}"), get_codec(inner)
    assert isinstance(codec, LosslessCodec) and codec.inner is base
    assert codec.lossless == base.lossless and not codec.fixed_size
    x = torch.relu(torch.randn(2, 16, 14, 14, generator=torch.Generator().manual_seed(1)))
    enc, plain = codec.encode(x), base.encode(x)
    assert enc.header == TensorHeader(f"{inner}+{method}", "float32", x.shape, plain.header.params)
    assert torch.equal(codec.decode(enc), base.decode(plain))
    assert enc.payload_bytes < plain.payload_bytes  # half the features are 0: it compresses
    assert enc.payload_bytes <= codec.payload_size(tuple(x.shape))


def test_zstd_shrinks_a_constant_feature_to_a_few_bytes() -> None:
    enc = get_codec("int8+zstd").encode(torch.zeros(1, 16, 28, 28))
    assert enc.payload_bytes < 30 < 12544


def test_zstd_level_and_name_are_settable() -> None:
    fast = LosslessCodec(get_codec("int8"), "zstd", level=1, name="int8+zstd1")
    x = torch.randn(1, 4, 8, 8)
    assert fast.name == "int8+zstd1"
    assert torch.equal(
        fast.decode(fast.encode(x)), get_codec("int8+zstd").decode(get_codec("int8+zstd").encode(x))
    )


@pytest.mark.parametrize(
    ("inner", "method", "level"),
    [("fp32", "gzip", 3), ("int8", "zstd", 0), ("int8", "zstd", 23), ("int8+zstd", "zstd", 3)],
)
def test_bad_wrapper_settings_are_config_error(inner: str, method: str, level: int) -> None:
    with pytest.raises(ConfigError):
        LosslessCodec(get_codec(inner), method, level=level)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LosslessCodec(get_codec("png"))


def test_zstd_refuses_bombs_missing_sizes_and_extra_frames() -> None:
    import zstandard

    codec = get_codec("int8+zstd")
    enc = codec.encode(torch.randn(1, 4, 3, 3))
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
    bomb = cctx.compress(bytes(50_000_000))  # ~2 KB that would inflate to 50 MB
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(36))
    wrong_size = cctx.compress(bytes(37))
    for payload in (bomb, no_size, wrong_size, enc.payload + cctx.compress(b""), b"\x28\xb5"):
        with pytest.raises(CodecError, match="expected"):
            codec.decode(Encoded(enc.header, payload))


def test_lz4_refuses_short_long_and_garbage_blocks() -> None:
    import lz4.block

    codec = get_codec("u8+lz4")
    enc = codec.encode(torch.rand(1, 4, 3, 3))
    for raw in (bytes(35), bytes(37)):
        with pytest.raises(CodecError, match="expected"):
            codec.decode(Encoded(enc.header, lz4.block.compress(raw, store_size=False)))
    rng = random.Random(0)
    for _ in range(200):  # flips: decode to the right shape or refuse cleanly
        mutated = bytearray(enc.payload)
        mutated[rng.randrange(len(mutated))] ^= rng.randrange(1, 256)
        try:
            out = codec.decode(Encoded(enc.header, bytes(mutated)))
        except CodecError:
            continue
        assert out.shape == (1, 4, 3, 3)


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["png", "webp-lossless"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_image_codecs_are_exact_on_8_bit_images(name: str, channels: int) -> None:
    codec = get_codec(name)
    g = torch.Generator().manual_seed(channels)
    for x in (
        _fashion_like(2, channels),
        torch.randint(0, 256, (3, channels, 9, 13), generator=g) / 255,
    ):
        assert torch.equal(codec.decode(codec.encode(x)), x)


def test_png_of_a_fashion_like_image_beats_raw_pixels() -> None:
    x = _fashion_like()
    sizes = {n: get_codec(n).encode(x).payload_bytes for n in ("u8", "png", "webp-lossless")}
    assert sizes["u8"] == 784
    assert sizes["png"] < 784 and sizes["webp-lossless"] < 784, sizes


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossy_error_falls_and_size_grows_with_quality(fmt: str, channels: int) -> None:
    x = _fashion_like(4, channels)
    errors = [_mse(f"{fmt}-q{q}", x) for q in QUALITIES]
    sizes = [get_codec(f"{fmt}-q{q}").encode(x).payload_bytes for q in QUALITIES]
    assert errors[0] > errors[2] > errors[-1], errors  # q10 > q50 > q95
    assert errors == sorted(errors, reverse=True), errors
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert errors[-1] < 1e-3  # q95 is visually lossless: RMSE < 0.032


def test_batches_are_length_prefixed_images_in_order() -> None:
    codec = get_codec("png")
    x = _fashion_like(3)
    batch = codec.encode(x).payload
    singles = [codec.encode(x[i : i + 1]).payload for i in range(3)]
    assert batch == b"".join(singles)
    files = _unframe(batch)
    assert len(files) == 3 and all(f.startswith(b"\x89PNG") for f in files)
    assert b"".join(_frame(f) for f in files) == batch
    assert torch.equal(codec.decode(codec.encode(x)), x)


@pytest.mark.parametrize("name", ["png", "webp-lossless", "jpeg-q75", "webp-q75"])
def test_files_carry_no_metadata(name: str) -> None:
    (data,) = _unframe(get_codec(name).encode(_fashion_like(1, 3)).payload)
    for marker in (b"tIME", b"tEXt", b"iTXt", b"eXIf", b"Exif", b"EXIF", b"XMP", b"ICCP", b"iCCP"):
        assert marker not in data


@pytest.mark.parametrize("name", ["png", "jpeg-q50", "webp-lossless", "webp-q50"])
def test_image_garbage_is_codec_error(name: str) -> None:
    codec = get_codec(name)
    x = _fashion_like(1, 1)
    enc = codec.encode(x)
    header = enc.header
    other_png = io.BytesIO()
    Image.new("L", (28, 28)).save(other_png, format="PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (28, 28)).save(rgba, format="PNG" if name == "png" else "WEBP")
    wrong_size = get_codec(name).encode(_fashion_like(1, 1)[..., :27]).payload
    (data,) = _unframe(enc.payload)
    bad_payloads = [
        b"\x05hello",
        _frame(bytes(100)),
        bytes([enc.payload[0], enc.payload[1] | 0x80, 0]) + data,  # non-minimal length prefix
        wrong_size,  # a 27 px wide image
        _frame(rgba.getvalue()),  # an alpha channel
        _frame(data[:-9]),  # a truncated file in a well-formed frame
    ]
    if name != "webp-q50":  # VP8 has no checksum: zeroed data decodes to a flat image
        bad_payloads.append(_frame(data[:30] + bytes(len(data) - 30)))
    if name != "png":
        bad_payloads.append(_frame(other_png.getvalue()))  # a PNG where JPEG/WebP is due
    for payload in bad_payloads:
        with pytest.raises(CodecError):
            codec.decode(Encoded(header, payload))
    assert torch.equal(codec.decode(Encoded(header, _frame(data))), codec.decode(enc))


@pytest.mark.parametrize("name", ["png", "jpeg-q50", "webp-lossless", "webp-q50"])
def test_flipped_image_bytes_decode_to_the_right_shape_or_refuse(name: str) -> None:
    codec = get_codec(name)
    enc = codec.encode(_fashion_like(2, 3))
    rng = random.Random(name)
    for _ in range(150):
        mutated = bytearray(enc.payload)
        mutated[rng.randrange(len(mutated))] ^= rng.randrange(1, 256)
        try:
            out = codec.decode(Encoded(enc.header, bytes(mutated)))
        except CodecError:
            continue
        assert out.shape == (2, 3, 28, 28) and out.dtype == torch.float32
        assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize(
    "shape", [(1, 2, 8, 8), (1, 4, 8, 8), (8, 8), (1, 8, 8), (1, 1, 1, 8, 8), (1, 1, 20_000, 1)]
)
def test_image_codecs_refuse_non_image_shapes(shape: tuple[int, ...]) -> None:
    codec = get_codec("webp-q50")
    with pytest.raises(CodecError, match="shape"):
        codec.payload_size(shape)
    with pytest.raises(CodecError, match="shape"):
        codec.encode(torch.zeros(shape))


def test_image_codecs_refuse_non_finite_pixels_and_bad_settings() -> None:
    x = _fashion_like()
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(CodecError, match="finite"):
        get_codec("png").encode(x)
    for args in [("GIF", None), ("JPEG", None), ("PNG", 50), ("WEBP", 0), ("JPEG", True)]:
        with pytest.raises(ConfigError):
            ImageCodec("x", *args)  # type: ignore[arg-type]


def test_image_codecs_clamp_like_u8() -> None:
    x = torch.tensor([[[[-0.5, 0.2, 1.7, 0.0]]]])
    want = torch.tensor([[[[0.0, 51.0, 255.0, 0.0]]]]) / 255
    for name in ("u8", "png", "webp-lossless"):
        assert torch.equal(get_codec(name).decode(get_codec(name).encode(x)), want)
