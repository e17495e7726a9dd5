"""Model packages: a self-describing directory a tier loads without knowing the zoo.

Why a package and not a checkpoint: every tier of a deployment (the device, each
server, a Ray replica on another node) must build the same blocks with the same
weights and register the same bottleneck codec, and none of them should need the
training recipes to do it. A package is::

    DIR/manifest.json        format and version, name, input spec, architecture,
                             blocks and cut shapes, weights hash, file hashes
    DIR/weights.safetensors  the BlockNet's state dict (never pickle)
    DIR/exits.safetensors    optional: exit heads (+ their rule in the manifest)
    DIR/codecs/cut<k>.json   optional: entropy-codec tables for the tensor at cut k
    DIR/profile.json         optional: the model's profile where it was packed

The architecture is *code*, named, never stored: a zoo model (``zoo``), a zoo
model with gates (``gated``) or a learned bottleneck (``bottleneck``), or a
user's ``module:factory`` (``factory``) cut into blocks by
:func:`~collabinfer.model.adapter.blocknet_from_module`. Loading a ``factory``
package imports the user's module, which must be importable on every tier
(installed, or on ``PYTHONPATH``): a package never carries code to execute.

Reading checks everything a tier relies on and says what is wrong in one line
(:class:`~collabinfer.errors.PackageError`): a missing or truncated file, a hash
that does not match (tampering, or a copy gone wrong), a format version newer
than this collabinfer reads, weights that do not fit the architecture.

Example::

    >>> import tempfile, torch
    >>> from collabinfer.model.zoo import create_model
    >>> d = tempfile.mkdtemp()
    >>> _ = write_package(d + "/pkg", create_model("tiny-mlp"), "my-mlp", zoo("tiny-mlp"))
    >>> read_package(d + "/pkg").name
    'my-mlp'
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collabinfer.codec.entropy import FactorizedTables
from collabinfer.errors import CollabInferError, ConfigError, ModelError, PackageError
from collabinfer.model.adapter import blocknet_from_module
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net, register_tables
from collabinfer.model.checkpoint import default_cache_dir, weights_hash
from collabinfer.model.dynamic import NEVER, ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gate_net
from collabinfer.model.zoo import create_model, model_spec

__all__ = [
    "PACKAGE_FORMAT",
    "PACKAGE_VERSION",
    "ModelPackage",
    "bottleneck",
    "build_architecture",
    "factory",
    "gated",
    "is_package",
    "names_a_package",
    "read_package",
    "write_package",
    "zoo",
    "zoo_package_dir",
]

PACKAGE_FORMAT = "collabinfer-package"
PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
EXITS = "exits.safetensors"
PROFILE = "profile.json"
PACKAGES_DIR = "packages"


def zoo_package_dir(name: str, cache: Path | None = None) -> Path:
    """Where the package of trained zoo model ``name`` lives: ``<cache>/packages/<name>``
    (written by :func:`collabinfer.train.packages.zoo_package`)."""
    return (cache or default_cache_dir()) / PACKAGES_DIR / name


# --- architectures: JSON specs naming the code that builds the blocks --------------


def zoo(name: str) -> dict[str, Any]:
    """A zoo model, e.g. ``zoo("fmnist-resnet")``."""
    model_spec(name)  # unknown: ModelError listing the zoo
    return {"kind": "zoo", "name": name}


def gated(base: dict[str, Any], hidden: int = 16, tau: float = 1.0) -> dict[str, Any]:
    """``base`` with its residual blocks gated (:func:`~collabinfer.model.gates.gate_net`)."""
    return {"kind": "gated", "base": base, "hidden": int(hidden), "tau": float(tau)}


def bottleneck(
    base: dict[str, Any], target_cut: int, channels: int, hidden: int, variational: bool = False
) -> dict[str, Any]:
    """A learned bottleneck replacing ``base``'s blocks before ``target_cut``
    (:func:`~collabinfer.model.bottleneck.bottleneck_net`)."""
    return {
        "kind": "bottleneck",
        "base": base,
        "target_cut": int(target_cut),
        "channels": int(channels),
        "hidden": int(hidden),
        "variational": bool(variational),
    }


def factory(target: str, input_shape: Sequence[int]) -> dict[str, Any]:
    """A user's ``module:callable`` returning an ``nn.Module``, ``nn.Sequential`` or
    ``BlockNet``, cut into blocks for ``input_shape`` (C, H, W without the batch)."""
    _split_target(target)
    return {"kind": "factory", "factory": target, "input_shape": [int(s) for s in input_shape]}


def build_architecture(spec: Mapping[str, Any]) -> BlockNet:
    """The freshly initialised blocks ``spec`` names (weights are loaded by the caller)."""
    if not isinstance(spec, Mapping):
        raise PackageError(f"architecture must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("kind")
    try:
        if kind == "zoo":
            return create_model(str(spec["name"]))
        if kind == "gated":
            return gate_net(build_architecture(spec["base"]), spec["hidden"], spec["tau"])
        if kind == "bottleneck":
            teacher = build_architecture(spec["base"])
            cut = int(spec["target_cut"])
            shape = teacher.cut_points()[cut].shape
            bn = Bottleneck(
                int(spec["channels"]), shape[0], shape[1], int(spec["hidden"]),
                bool(spec["variational"]),
            )  # fmt: skip
            return bottleneck_net(bn, teacher, cut)
        if kind == "factory":
            return _from_factory(str(spec["factory"]), tuple(spec["input_shape"]))
    except KeyError as e:
        raise PackageError(f"architecture {kind!r} lacks the field {e}") from None
    except (TypeError, ValueError, IndexError) as e:
        raise PackageError(f"architecture {kind!r} is malformed: {e}") from None
    known = "zoo, gated, bottleneck, factory"
    raise PackageError(f"unknown architecture kind {kind!r}; known: {known}")


def _split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ModelError(f"a model factory is 'module:callable', got {target!r}")
    return module, attr


def load_factory(target: str) -> Callable[[], Any]:
    """Import ``module:callable``; a missing module or name is one clear line."""
    module_name, attr = _split_target(target)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(
            f"cannot import {module_name!r} for the model factory {target!r} ({e}); "
            "install the module or put its folder on PYTHONPATH"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no {attr!r} (factory {target!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"factory {target!r} is not callable")
    return obj


def as_blocknet(module: nn.Module, input_shape: Sequence[int] | None) -> BlockNet:
    """A BlockNet for what a factory returned: itself, a Sequential's children, or the
    blocks the fx adapter finds in a module whose forward chains its children."""
    if not isinstance(module, nn.Module):
        raise ModelError(f"a model factory must return an nn.Module, got {type(module).__name__}")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    if isinstance(module, BlockNet):
        if module.input_shape is None and shape is not None:
            module.input_shape = shape
        return module
    if shape is None:
        raise ModelError("an nn.Module needs an input shape (C,H,W) to be cut into blocks")
    return blocknet_from_module(module, shape)


def _from_factory(target: str, input_shape: tuple[int, ...]) -> BlockNet:
    return as_blocknet(call_factory(target), input_shape)


# --- the package ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelPackage:
    """A read and verified package: ``net`` in eval mode with its weights loaded, its
    codecs registered (cut -> codec name), and the optional exits and profile."""

    path: Path
    name: str
    net: BlockNet
    manifest: dict[str, Any]
    weights: str  # weights_hash(net): what the wire header carries
    codecs: dict[int, str]
    exits: ExitBranches | None = None
    exit_rule: ExitRule | None = None
    profile_json: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])


def names_a_package(spec: str | Path) -> bool:
    """Whether a ``--model`` value names a package directory rather than a zoo model
    (a path: it has a slash, or it is a directory here)."""
    return isinstance(spec, Path) or "/" in spec or Path(spec).is_dir()


def call_factory(target: str) -> nn.Module:
    """What the user's ``module:callable`` returns; its own errors are one line."""
    try:
        return load_factory(target)()
    except CollabInferError:
        raise
    except Exception as e:  # the user's code: any error, said in one line
        raise ModelError(f"model factory {target!r} failed: {type(e).__name__}: {e}") from None


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a manifest (not whether it is valid)."""
    return (Path(path) / MANIFEST).is_file()


def write_package(
    out: str | Path,
    net: BlockNet,
    name: str,
    architecture: dict[str, Any],
    *,
    exits: ExitBranches | None = None,
    exit_rule: ExitRule | None = None,
    codec_tables: Mapping[int, tuple[FactorizedTables, str]] | None = None,
    profile_json: str | None = None,
    description: str = "",
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` as a package at ``out`` (atomically: a temporary sibling, renamed).

    ``architecture`` must rebuild ``net``'s blocks (checked: the package is read back
    before it replaces anything); ``codec_tables`` maps a cut to (tables, tag) of the
    entropy codec its tensor is coded with; ``source`` records where the weights came
    from (a checkpoint key, a file). An existing package at ``out`` is replaced; any
    other non-empty directory is refused.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if not name or any(c in name for c in "/\\ \t\n"):
        raise ConfigError(f"a package name needs no slashes or spaces, got {name!r}")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_package(out))):
        raise PackageError(f"{out} exists and is not a package; choose another --out")
    if (exits is None) != (exit_rule is None):
        raise PackageError("exits and exit_rule go together")
    shape = net.input_shape
    if shape is None:
        raise PackageError("the model has no input_shape; give --input-shape C,H,W")
    net = net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(_plain(net.state_dict()), str(tmp / WEIGHTS))
        manifest: dict[str, Any] = {
            "format": PACKAGE_FORMAT,
            "format_version": PACKAGE_VERSION,
            "name": name,
            "description": description,
            "input": {"shape": list(shape), "dtype": "float32"},
            "architecture": architecture,
            "blocks": list(net.block_names),
            "cuts": [
                {"index": c.index, "name": c.name, "shape": list(c.shape)} for c in net.cut_points()
            ],
            "weights_hash": weights_hash(net),
            "codecs": {},
            "source": source or {},
        }
        if exits is not None and exit_rule is not None:
            save_file(_plain(exits.state_dict()), str(tmp / EXITS))
            manifest["exits"] = {
                "cuts": list(exits.cuts),
                "names": list(exits.names),
                "width": exits.width,
                "depth": _exit_depth(exits),
                "num_classes": _num_classes(net),
                "rule": exit_rule.to_json(),
            }
        for cut, (tables, tag) in sorted((codec_tables or {}).items()):
            rel = f"codecs/cut{int(cut)}.json"
            (tmp / "codecs").mkdir(exist_ok=True)
            (tmp / rel).write_text(tables.to_json())
            manifest["codecs"][str(int(cut))] = {"tag": tag, "tables": rel}
        if profile_json is not None:
            (tmp / PROFILE).write_text(profile_json)
        manifest["files"] = {
            str(f.relative_to(tmp)): {"sha256": _sha256(f), "bytes": f.stat().st_size}
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        back = read_package(tmp)
        if back.weights != manifest["weights_hash"]:
            raise PackageError("the architecture does not rebuild these weights")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_package(path: str | Path) -> ModelPackage:
    """Read, verify and build the package at ``path``; every failure is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    manifest = _read_manifest(root)
    name = manifest.get("name")
    if not isinstance(name, str) or not name:
        raise PackageError(f"package {root}: the manifest has no model name")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise PackageError(f"package {root}: the manifest lists no {WEIGHTS}")
    for rel, meta in files.items():
        _verify_file(root, rel, meta)
    net = build_architecture(manifest.get("architecture", {}))
    try:
        state = load_file(str(root / WEIGHTS))
        net.load_state_dict(state, strict=True)
    except SafetensorError as e:
        raise PackageError(f"package {root}: {WEIGHTS} is not a safetensors file: {e}") from None
    except RuntimeError as e:
        msg = str(e).splitlines()[0][:300]
        raise PackageError(f"package {root}: weights do not fit the architecture: {msg}") from None
    net.eval()
    shape = manifest.get("input", {}).get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise PackageError(f"package {root}: input shape {shape!r} is not a list of sizes")
    net.input_shape = tuple(shape)
    got = weights_hash(net)
    if got != manifest.get("weights_hash"):
        raise PackageError(
            f"package {root}: weights hash {got} does not match the manifest's "
            f"{manifest.get('weights_hash')!r} (tampered or mixed files)"
        )
    codecs: dict[int, str] = {}
    for cut, entry in (manifest.get("codecs") or {}).items():
        try:
            tables = FactorizedTables.from_json((root / entry["tables"]).read_text())
            codecs[int(cut)] = register_tables(tables, str(entry["tag"])).name
        except (KeyError, TypeError, ValueError, OSError, CollabInferError) as e:
            raise PackageError(f"package {root}: codec tables for cut {cut}: {e}") from None
    exits, rule = _read_exits(root, manifest, net, load_file)
    profile = root / PROFILE
    return ModelPackage(
        path=root,
        name=name,
        net=net,
        manifest=manifest,
        weights=got,
        codecs=codecs,
        exits=exits,
        exit_rule=rule,
        profile_json=profile.read_text() if profile.is_file() else None,
    )


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise PackageError(f"package {root} does not exist or is not a directory")
    f = root / MANIFEST
    if not f.is_file():
        raise PackageError(f"{root} is not a model package: it has no {MANIFEST}")
    try:
        manifest = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PackageError(f"package {root}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"package {root}: {MANIFEST} is not a collabinfer package manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PackageError(f"package {root}: format_version {version!r} is not an integer")
    if version > PACKAGE_VERSION:
        raise PackageError(
            f"package {root} has format version {version}, newer than this collabinfer reads "
            f"({PACKAGE_VERSION}): upgrade collabinfer"
        )
    if version < 1:
        raise PackageError(f"package {root}: format version {version} does not exist")
    return manifest


def _verify_file(root: Path, rel: str, meta: Any) -> None:
    f = (root / rel).resolve()
    if root.resolve() not in f.parents:
        raise PackageError(f"package {root}: file {rel!r} lies outside the package")
    if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int):
        raise PackageError(f"package {root}: the manifest's entry for {rel} is malformed")
    if not f.is_file():
        raise PackageError(f"package {root}: {rel} is missing")
    size = f.stat().st_size
    if size != meta["bytes"]:
        raise PackageError(
            f"package {root}: {rel} is {size} bytes, the manifest says {meta['bytes']} (truncated?)"
        )
    if _sha256(f) != meta.get("sha256"):
        raise PackageError(f"package {root}: {rel} does not match its sha256 (tampered?)")


def _read_exits(
    root: Path, manifest: dict[str, Any], net: BlockNet, load_file: Callable[[str], Any]
) -> tuple[ExitBranches | None, ExitRule | None]:
    meta = manifest.get("exits")
    if meta is None:
        return None, None
    try:
        cuts = [int(c) for c in meta["cuts"]]
        points = net.cut_points()
        exits = ExitBranches(
            cuts,
            [points[c].shape for c in cuts],
            list(meta["names"]),
            int(meta["num_classes"]),
            int(meta["width"]),
            int(meta["depth"]),
        )
        exits.load_state_dict(load_file(str(root / EXITS)), strict=True)
        rule = _rule_from_json(meta["rule"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, CollabInferError) as e:
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise PackageError(f"package {root}: the exits are malformed: {msg}") from None
    return exits.eval(), rule


def _rule_from_json(obj: Mapping[str, Any]) -> ExitRule:
    paths = obj.get("allowed_paths")
    allowed = None
    if paths is not None:
        allowed = tuple(None if p is None else frozenset(int(m) for m in p) for p in paths)
    thresholds = tuple(NEVER if t is None else float(t) for t in obj["thresholds"])
    return ExitRule(thresholds, str(obj["score"]), allowed)


def _exit_depth(exits: ExitBranches) -> int:
    """Heads on feature maps have one or two strided convolutions (exit_head's depth)."""
    convs = [sum(isinstance(m, nn.Conv2d) for m in h.modules()) for h in exits.heads]
    return 2 if any(c >= 2 for c in convs) else 1


def _num_classes(net: BlockNet) -> int:
    return int(net.cut_points()[-1].shape[-1])


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies: safetensors refuses tensors that share memory."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
