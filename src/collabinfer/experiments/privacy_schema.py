"""The privacy assessment's result: one row per attack on one target, read back with checks.

Apart from the run (:mod:`~collabinfer.experiments.privacy`) so the report,
Table 1 and the planner read it without the attack code. ``privacy.json`` is
read only by :meth:`PrivacyResult.load` (a malformed field is a one-line
:class:`~collabinfer.errors.ConfigError`); the reconstructions for the picture
grid are in ``privacy_images.npz`` beside it (uint8, read without pickle).

:func:`strongest` is the number the rest of the system uses: for one thing
sent (cut, codec, defence, setting), the attack that got the most back.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from collabinfer.errors import ConfigError
from collabinfer.experiments.records import ResultFile
from collabinfer.privacy.names import ATTACKS, DEFENCES

__all__ = [
    "FILE",
    "IMAGES_FILE",
    "AssessmentRow",
    "PrivacyConditions",
    "PrivacyResult",
    "Reconstructions",
    "VariationalRun",
    "privacy_bounds",
    "strongest",
    "to_u8",
]

FILE = "privacy.json"
IMAGES_FILE = "privacy_images.npz"


@dataclass(frozen=True)
class AssessmentRow:
    """One attack on one target, scored on ``images`` test images."""

    attack: str
    adaptive: bool
    cut: int  # 0: the image (EC, CC); the model's block count: nothing sent (LC)
    codec: str
    defence: str
    setting: str
    ssim: float  # mean over the scored images
    psnr_db: float
    recognisability: float  # the fixed classifier's accuracy on the reconstructions
    task_accuracy: float  # the model's accuracy on what this target sends (test images)
    images: int
    attack_seconds: float
    aux: str = "train"  # the attacker's data: "train", "train classes 0-4", ...
    bytes_per_input: float = 0.0  # payload bytes on the wire, mean
    ssim_p90: float = 0.0  # the 90th percentile over images: the attack's good days

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown attack {self.attack!r}; choose from {ATTACKS}")
        if self.defence not in DEFENCES:
            raise ConfigError(f"unknown defence {self.defence!r}; choose from {DEFENCES}")
        for name in ("recognisability", "task_accuracy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} is a fraction in [0, 1], got {getattr(self, name)!r}")
        if not -1.0 <= self.ssim <= 1.0 or self.images < 1 or self.cut < 0:
            raise ConfigError("ssim lies in [-1, 1], images >= 1 and cut >= 0")

    @property
    def sent(self) -> tuple[int, str, str, str]:
        return (self.cut, self.codec, self.defence, self.setting)


@dataclass(frozen=True)
class VariationalRun:
    """One variational bottleneck of the KL sweep, as validation saw it."""

    kl_weight: float
    val_acc: float
    checkpoint: str
    codec: str
    chosen: bool = False


@dataclass(frozen=True)
class PrivacyConditions:
    config: dict[str, Any]  # the resolved PrivacyConfig, as written
    model: str
    scored_images: int
    accuracy_images: int
    classifier: str  # the recognisability classifier
    classifier_accuracy: float  # its accuracy on the scored originals
    deterministic_val_acc: float  # the deterministic bottleneck the sweep starts from
    selection: str  # how the deployed variational setting was chosen, in words
    variational: tuple[VariationalRun, ...] = ()


@dataclass(frozen=True)
class PrivacyResult(ResultFile):
    FILE: ClassVar[str] = FILE
    WHAT: ClassVar[str] = "privacy assessment"

    assessment: tuple[AssessmentRow, ...]
    conditions: PrivacyConditions

    def __post_init__(self) -> None:
        if not self.assessment:
            raise ConfigError("assessment is empty: a privacy result needs at least one row")


def strongest(
    result: PrivacyResult, cut: int, codec: str, defence: str = "none", setting: str = ""
) -> AssessmentRow | None:
    """The row with the highest SSIM among every attack on this one thing sent."""
    rows = [r for r in result.assessment if r.sent == (cut, codec, defence, setting)]
    return max(rows, key=lambda r: r.ssim) if rows else None


def privacy_bounds(result: PrivacyResult) -> dict[tuple[int, str], float]:
    """Strongest SSIM per undefended (cut, codec): what the planner's privacy bound reads."""
    out: dict[tuple[int, str], float] = {}
    for r in result.assessment:
        if r.defence == "none":
            key = (r.cut, r.codec)
            out[key] = max(out.get(key, -1.0), r.ssim)
    return out


def to_u8(images: Any) -> np.ndarray:
    """Images in [0, 1] (a tensor or an array) as uint8, the way the grid file keeps them."""
    arr = np.asarray(images, dtype=np.float32)
    return np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True)
class Reconstructions:
    """The picture grid's data, uint8 (N, C, H, W): the first scored originals and,
    per assessment row (in the same order), that attack's reconstructions of them."""

    originals: np.ndarray
    rows: tuple[np.ndarray, ...]

    def save(self, out: Path) -> Path:
        path = out / IMAGES_FILE
        arrays = {"originals": self.originals} | {f"row{i}": r for i, r in enumerate(self.rows)}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, out: Path, rows: int) -> Reconstructions:
        """Read ``privacy_images.npz`` (no pickle); ``rows``: how many the result has.

        Anything wrong (missing, truncated, a row short or of another shape) is
        a one-line :class:`ConfigError`.
        """
        path = out / IMAGES_FILE
        try:
            with np.load(path, allow_pickle=False) as f:
                originals = f["originals"]
                got = tuple(f[f"row{i}"] for i in range(rows))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ConfigError(
                f"{path}: not a complete picture file for {rows} rows ({exc})"
            ) from exc
        for i, r in enumerate(got):
            if r.dtype != np.uint8 or r.shape != originals.shape:
                raise ConfigError(
                    f"{path}: row{i} is {r.dtype} {r.shape}, expected uint8 {originals.shape}"
                )
        return cls(originals, got)
