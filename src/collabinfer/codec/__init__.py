"""Codecs that turn intermediate features into bytes for the wire.

Every codec meets the :class:`Codec` protocol and is found by name through
:func:`get_codec`; the rate of a split is ``Encoded.payload_bytes``.
"""

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

__all__ = [
    "MAX_ELEMENTS",
    "Codec",
    "Encoded",
    "PixelCodec",
    "TensorHeader",
    "get_codec",
    "list_codecs",
    "register_codec",
]
