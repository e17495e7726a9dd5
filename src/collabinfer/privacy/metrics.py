"""How much of an input an attacker got back: SSIM, PSNR and recognisability.

SSIM is scikit-image's, with the settings of Wang et al. (2004) that the
inversion papers report (Gaussian window, sigma 1.5, population covariance,
data range 1): it agrees with pytorch-msssim and piq to five digits, while
torchmetrics' default averages the padded border and reads higher. The papers
count SSIM < 0.3 as unrecognisable; :data:`UNRECOGNISABLE_SSIM` keeps that
line in one place.

Recognisability asks a different question: would a *classifier* (a fixed one,
trained on training images, not the attacked model) still tell what the
reconstruction shows? Its accuracy on reconstructions is the number; chance on
Fashion-MNIST is 10 %.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from collabinfer.errors import ConfigError
from collabinfer.privacy.names import UNRECOGNISABLE_SSIM

__all__ = ["PSNR_CAP_DB", "UNRECOGNISABLE_SSIM", "psnr", "recognisability", "ssim"]

PSNR_CAP_DB = 100.0  # a perfect reconstruction has infinite PSNR; files hold finite numbers


def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape or a.dim() != 4:
        raise ConfigError(
            f"compare two (N, C, H, W) batches of one shape, got {a.shape}, {b.shape}"
        )
    x = a.detach().float().clamp(0, 1).numpy()
    y = b.detach().float().clamp(0, 1).numpy()
    return x, y


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (N,), images in [0, 1]; channels are averaged (``channel_axis``)."""
    x, y = _pairs(originals, reconstructions)
    out = []
    for a, b in zip(x, y, strict=True):
        multi = a.shape[0] > 1
        out.append(
            structural_similarity(
                np.moveaxis(a, 0, -1) if multi else a[0],
                np.moveaxis(b, 0, -1) if multi else b[0],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1 if multi else None,
            )
        )
    return torch.tensor(out, dtype=torch.float64)


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (N,), capped at :data:`PSNR_CAP_DB` for exact copies."""
    x, y = _pairs(originals, reconstructions)
    out = []
    for a, b in zip(x, y, strict=True):
        if np.array_equal(a, b):
            out.append(PSNR_CAP_DB)
        else:
            out.append(min(PSNR_CAP_DB, float(peak_signal_noise_ratio(a, b, data_range=1.0))))
    return torch.tensor(out, dtype=torch.float64)


@torch.inference_mode()
def recognisability(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    reconstructions: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
) -> float:
    """The fraction of reconstructions the fixed ``classifier`` labels correctly."""
    if reconstructions.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ConfigError("one label per reconstruction, and at least one")
    correct = 0
    for i in range(0, labels.shape[0], batch_size):
        logits = classifier(reconstructions[i : i + batch_size].clamp(0, 1))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / labels.shape[0]
