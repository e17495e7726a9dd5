"""Checkpoints: a state dict plus the key of the config and data that made it.

Files are written with ``torch.save`` and read with ``weights_only=True`` (no
arbitrary code runs on load), atomically (write to ``.part``, then rename), and
carry a format version, the model name and a *key*: a hash of the training
config and the data digest. Loading checks all three, so a corrupt file, a
file for another model, or a file trained under another config is a
:class:`CheckpointError` that says which.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from collabinfer.errors import CheckpointError

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$COLLABINFER_CACHE`` or ``~/.cache/collabinfer``: where checkpoints live."""
    env = os.environ.get("COLLABINFER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "collabinfer"


def config_key(config: dict[str, Any], data_digest: str) -> str:
    """A stable hash of a JSON-able config and the training data's digest."""
    blob = json.dumps(config, sort_keys=True) + "|" + data_digest
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter and buffer bytes, in order: identifies the weights on the wire."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    model_name: str
    key: str
    config: dict[str, Any]
    metrics: dict[str, float]
    state_dict: dict[str, torch.Tensor]


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": ckpt.model_name,
        "key": ckpt.key,
        "config_json": json.dumps(ckpt.config, sort_keys=True),
        "metrics_json": json.dumps(ckpt.metrics, sort_keys=True),
        "state_dict": ckpt.state_dict,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def load_checkpoint(
    path: Path, model_name: str | None = None, key: str | None = None
) -> Checkpoint:
    """Read and verify a checkpoint; every failure is a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a collabinfer checkpoint: {exc}. "
            "Delete it and train again (`collabinfer train`)."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version "
            f"{payload.get('format_version') if isinstance(payload, dict) else None!r}, "
            f"expected {FORMAT_VERSION}"
        )
    try:
        ckpt = Checkpoint(
            model_name=str(payload["model_name"]),
            key=str(payload["key"]),
            config=json.loads(payload["config_json"]),
            metrics=json.loads(payload["metrics_json"]),
            state_dict=dict(payload["state_dict"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is missing a field: {exc}") from exc
    if model_name is not None and ckpt.model_name != model_name:
        raise CheckpointError(
            f"checkpoint {path} holds model {ckpt.model_name!r}, expected {model_name!r}"
        )
    if key is not None and ckpt.key != key:
        raise CheckpointError(
            f"checkpoint {path} was trained under config key {ckpt.key}, expected {key}"
        )
    return ckpt


def load_weights(
    model: torch.nn.Module, ckpt: Checkpoint, path: Path | str = "<checkpoint>", prefix: str = ""
) -> None:
    """Load a checkpoint's weights (only the keys under ``prefix``, with it stripped);
    a shape or name mismatch is a :class:`CheckpointError`."""
    state = {k[len(prefix) :]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {ckpt.model_name!r}: {str(exc)[:300]}"
        ) from exc
