"""Codecs that turn intermediate features into bytes for the wire.

Every codec meets the :class:`Codec` protocol and is found by name through
:func:`get_codec`; the rate of a split is ``Encoded.payload_bytes``.

Registered here: the fixed-length ``fp32``, ``fp16``, ``int8``,
``int8-channel`` and ``u8``; each of the last four under zstd and lz4
(``int8+zstd``, ...); and the image codecs ``png``, ``webp-lossless``,
``jpeg-q{Q}`` and ``webp-q{Q}``. An :class:`EntropyCodec` is never registered
by default: it needs the tables of a trained bottleneck, which registers it.
"""

from collabinfer.codec.entropy import (
    EntropyCodec,
    FactorizedTables,
    decode_symbols,
    encode_symbols,
    max_stream_bytes,
)
from collabinfer.codec.image import ImageCodec
from collabinfer.codec.image import default_codecs as _image_codecs
from collabinfer.codec.lossless import LosslessCodec
from collabinfer.codec.pixels import PixelCodec
from collabinfer.codec.tensor import (
    MAX_ELEMENTS,
    Codec,
    Encoded,
    TensorHeader,
    get_codec,
    list_codecs,
    register_codec,
)

register_codec(PixelCodec())
for _inner in ("fp16", "int8", "int8-channel", "u8"):
    for _method in ("zstd", "lz4"):
        register_codec(LosslessCodec(get_codec(_inner), _method))
for _codec in _image_codecs():
    register_codec(_codec)
del _inner, _method, _codec  # no loop names left in the package namespace

__all__ = [
    "MAX_ELEMENTS",
    "Codec",
    "Encoded",
    "EntropyCodec",
    "FactorizedTables",
    "ImageCodec",
    "LosslessCodec",
    "PixelCodec",
    "TensorHeader",
    "decode_symbols",
    "encode_symbols",
    "get_codec",
    "list_codecs",
    "max_stream_bytes",
    "register_codec",
]
