"""``u8``: 8-bit pixels, the way a camera hands an image to the network.

Input offloading (EC, CC) sends the raw image. Fashion-MNIST images are 8-bit,
so ``round(x * 255)`` as one byte per pixel is lossless for them; anything
outside ``[0, 1]`` is clamped. It is the honest "raw input" byte count
(784 bytes for a 28x28 image) that feature codecs are compared against.
"""

from __future__ import annotations

import numpy as np
import torch

from collabinfer.codec.tensor import Encoded, TensorHeader, _BaseCodec, _source_dtype


class PixelCodec(_BaseCodec):
    name = "u8"
    lossless = False  # lossless only for images already on the 1/255 grid
    _bytes_per_element = 1

    def encode(self, t: torch.Tensor) -> Encoded:
        src = _source_dtype(t)
        a = t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        q = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Encoded(TensorHeader(self.name, src, tuple(a.shape)), q.tobytes())

    def decode(self, enc: Encoded) -> torch.Tensor:
        header = self._open(enc)
        arr = np.frombuffer(enc.payload, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(arr).reshape(header.shape)
