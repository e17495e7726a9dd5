"""Data: IDX parsing, the search order, checksums, fixed splits, synthetic data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from collabinfer.data import fashion_mnist as fm
from collabinfer.data.idx import read_idx_bytes, read_idx_file
from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.errors import ConfigError, DataError


def idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_idx_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    np.testing.assert_array_equal(read_idx_bytes(raw), arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    got, blob = read_idx_file(tmp_path / "a.gz")
    np.testing.assert_array_equal(got, arr)
    assert blob == raw


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:3], "too short"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:-1], "payload is"),
        (lambda b: b + b"\x00", "payload is"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_damaged_idx_is_a_data_error(mutate, match) -> None:
    raw = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=match):
        read_idx_bytes(mutate(raw))


def test_bad_gzip_is_a_data_error(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx_file(p)


def test_explicit_folder_without_files_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="IDX files"):
        fm.locate(tmp_path)


def test_nothing_found_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLLABINFER_DATA", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fm.locate(None)


def test_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for stem in fm.FILES.values():
        (tmp_path / stem).write_bytes(idx_bytes(np.zeros((1,), dtype=np.uint8)))
    monkeypatch.setenv("COLLABINFER_DATA", str(tmp_path))
    assert fm.locate() == tmp_path


def test_wrong_content_fails_the_checksum(tmp_path: Path) -> None:
    imgs = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.zeros((3,), dtype=np.uint8)
    for which in ("train", "test"):
        (tmp_path / fm.FILES[f"{which}_images"]).write_bytes(idx_bytes(imgs))
        (tmp_path / fm.FILES[f"{which}_labels"]).write_bytes(idx_bytes(labels))
    fm._CACHE.clear()
    with pytest.raises(DataError, match="checksum"):
        fm.load_split("test", tmp_path)


def test_unknown_split() -> None:
    with pytest.raises(ConfigError, match="unknown split"):
        fm.load_split("validation")


def test_train_and_val_are_disjoint_fixed_and_cover_the_training_file() -> None:
    train, val = fm.split_indices()
    assert len(val) == fm.VAL_SIZE and len(train) == 60000 - fm.VAL_SIZE
    assert not set(train.tolist()) & set(val.tolist())
    t2, v2 = fm.split_indices()
    np.testing.assert_array_equal(val, v2)
    np.testing.assert_array_equal(train, t2)


def test_synthetic_dataset_is_seeded_and_learnable_shape() -> None:
    a, b = synthetic_dataset(64, seed=1), synthetic_dataset(64, seed=1)
    assert a.images.shape == (64, 1, 28, 28) and a.labels.shape == (64,)
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert (a.images == b.images).all() and a.digest == b.digest
    assert synthetic_dataset(64, seed=2).digest != a.digest


def test_subset_is_seeded_and_sorted() -> None:
    d = synthetic_dataset(100)
    s1, s2 = d.subset(10, seed=3), d.subset(10, seed=3)
    assert len(s1) == 10 and (s1.labels == s2.labels).all()
    assert d.subset(1000) is d
