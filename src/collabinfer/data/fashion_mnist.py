"""Fashion-MNIST: where to find it, how to verify it, and the fixed splits.

Search order (first hit wins):

1. an explicit ``root`` argument, or the ``COLLABINFER_DATA`` environment variable;
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
3. the user cache (``~/.cache/collabinfer/fashion-mnist``), filled by a
   checksum-verified download when ``download=True`` and a network exists.

Otherwise a :class:`DataError` says how to get the data. Checksums are over the
*decompressed* IDX bytes, because Debian re-gzips the upstream files.

The validation split is carved from the 60k training images with a fixed seed;
the 10k test images are for reported numbers only (:func:`load_split` is the
single door, so a test can watch that tuning code never asks for ``"test"``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collabinfer.data.idx import read_idx_file
from collabinfer.errors import ConfigError, DataError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the decompressed IDX bytes
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
VAL_SIZE = 5000
SPLIT_SEED = 20221021
SPLITS = ("train", "val", "test")

HOW_TO_GET = (
    "Fashion-MNIST was not found. Install it with `apt-get install dataset-fashion-mnist` "
    "(Debian/Ubuntu; `make demo` does this), or put the four IDX files "
    "(train-images-idx3-ubyte[.gz], ...) in a folder and set COLLABINFER_DATA to it."
)


@dataclass(frozen=True)
class Dataset:
    """Images as float32 in [0, 1], shape (N, 1, 28, 28); labels as int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    split: str
    source: str  # the folder the files came from
    digest: str  # sha256 over the indices and files: part of checkpoint keys

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` examples (all of them if ``n >= len``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        digest = hashlib.sha256(f"{self.digest}:{n}:{seed}".encode()).hexdigest()
        return Dataset(self.images[idx], self.labels[idx], self.split, self.source, digest)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "collabinfer" / "fashion-mnist"


def _find_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def _complete(folder: Path) -> bool:
    return all(_find_file(folder, stem) is not None for stem in FILES.values())


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        target = folder / f"{stem}.gz"
        if target.is_file():
            continue
        url = f"{MIRROR}{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                blob = resp.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DataError(f"download of {url} failed ({exc}). {HOW_TO_GET}") from exc
        try:
            raw = gzip.decompress(blob)
        except (OSError, EOFError) as exc:
            raise DataError(f"download of {url} is not a gzip file ({exc})") from exc
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHA256[stem]:
            raise DataError(f"download of {url} fails its checksum ({digest[:12]}...)")
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(blob)
        tmp.rename(target)  # atomic: a half-written file never looks complete


def locate(root: str | Path | None = None, download: bool = False) -> Path:
    """The folder holding the four IDX files, by the documented search order."""
    explicit = root if root is not None else os.environ.get("COLLABINFER_DATA")
    if explicit:
        folder = Path(explicit)
        if not _complete(folder):
            raise DataError(
                f"{folder} does not hold the four Fashion-MNIST IDX files "
                f"({', '.join(FILES.values())}, optionally .gz)"
            )
        return folder
    for folder in (SYSTEM_DIR, cache_dir()):
        if _complete(folder):
            return folder
    if download:
        _download(cache_dir())
        return cache_dir()
    raise DataError(HOW_TO_GET)


_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _load_pair(folder: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    key = (str(folder.resolve()), which)
    if key not in _CACHE:
        arrays = []
        for kind in ("images", "labels"):
            stem = FILES[f"{which}_{kind}"]
            path = _find_file(folder, stem)
            if path is None:
                raise DataError(f"{stem} is missing from {folder}")
            arr, raw = read_idx_file(path)
            digest = hashlib.sha256(raw).hexdigest()
            if digest != SHA256[stem]:
                raise DataError(
                    f"{path} fails its checksum (sha256 of contents {digest[:12]}..., "
                    f"expected {SHA256[stem][:12]}...): the file is corrupt or not Fashion-MNIST"
                )
            arrays.append(arr)
        images, labels = arrays
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise DataError(f"{folder}: {which} images {images.shape} do not match labels")
        _CACHE[key] = (images, labels)
    return _CACHE[key]


def split_indices(
    n_train: int = 60000, val_size: int = VAL_SIZE, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (train, val) index split of the 60k training images."""
    perm = np.random.default_rng(seed).permutation(n_train)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def load_split(split: str, root: str | Path | None = None, download: bool = False) -> Dataset:
    """Load ``"train"`` (55k), ``"val"`` (5k, from the training file) or ``"test"`` (10k)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = locate(root, download=download)
    if split == "test":
        images, labels = _load_pair(folder, "test")
        idx = np.arange(images.shape[0])
    else:
        images, labels = _load_pair(folder, "train")
        train_idx, val_idx = split_indices(images.shape[0])
        idx = train_idx if split == "train" else val_idx
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    source_sha = SHA256[FILES[("test" if split == "test" else "train") + "_images"]]
    digest = hashlib.sha256(
        f"fashion-mnist:{split}:{source_sha}:{VAL_SIZE}:{SPLIT_SEED}".encode()
    ).hexdigest()
    return Dataset(x, y, split, str(folder), digest)
