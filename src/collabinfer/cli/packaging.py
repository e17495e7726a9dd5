"""``collabinfer pack``, and how every command turns ``--model`` into blocks.

``--model`` is a zoo name (``fmnist-resnet``, ``fmnist-resnet+gates``, ...) or a
package directory written by ``collabinfer pack``. A trained zoo model is packaged
from its checkpoints the first time a command needs it (tier servers load
packages only: :func:`collabinfer.serve.server.load_served`).

Examples::

    collabinfer pack --model mynets:resnet18 --weights resnet18.safetensors \\
        --input-shape 3,32,32 --out pkgs/resnet18
    collabinfer pack --zoo fmnist-resnet+gates --out pkgs/gated
    collabinfer serve --tier edge --model pkgs/resnet18 --port 8001
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from collabinfer.cli.console import CacheOpt, console, fail, progress_bars
from collabinfer.codec.entropy import FactorizedTables
from collabinfer.errors import CheckpointError, CollabInferError, ConfigError
from collabinfer.model.package import (
    as_blocknet,
    call_factory,
    factory,
    names_a_package,
    read_package,
    write_package,
)
from collabinfer.plan.profile import one_thread, profile_model
from collabinfer.serve.server import Served, load_served
from collabinfer.train.packages import zoo_package

__all__ = ["load_user_weights", "pack", "parse_shape", "resolve_models"]


def resolve_models(
    specs: Sequence[str], untrained: bool = False, cache: Path | None = None
) -> list[Served]:
    """The models ``--model`` names, trained zoo models packaged on first use."""
    out: list[Served] = []
    for spec in specs:
        if names_a_package(spec) or untrained:
            out.append(load_served(spec, untrained))
        else:
            out.append(load_served(zoo_package(spec, cache), cache=cache))
    return out


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` -> ``(3, 32, 32)``; None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be sizes like 3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input-shape sizes must be >= 1, got {text!r}")
    return shape


def load_user_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or a torch file read with ``weights_only``
    (a dict of tensors, or one under ``"state_dict"``/``"model"``); never unpickled code."""
    if not path.is_file():
        raise ConfigError(f"--weights {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            msg = f"--weights {path} is not a readable safetensors file: {e}"
            raise CheckpointError(msg) from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or unsafe file
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(
            f"--weights {path} is not a state dict torch can load with weights_only: {msg}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"--weights {path} does not hold a state dict of tensors")
    return dict(obj)


def pack(
    out: Annotated[Path, typer.Option("--out", help="package directory to write")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="module:factory returning the nn.Module"),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="safetensors file, or a state dict (loaded with weights_only)"),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="C,H,W of one input (the factory's BlockNet may know it)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="model name on the wire (default: the factory's name)")
    ] = None,
    zoo_name: Annotated[
        str | None, typer.Option("--zoo", help="package a trained zoo model instead")
    ] = None,
    repeats: Annotated[int, typer.Option(help="timed passes per block of the profile")] = 10,
    cache: CacheOpt = None,
) -> None:
    """Write a model package: manifest, safetensors weights, cut shapes and profile."""
    try:
        if (model is None) == (zoo_name is None):
            raise ConfigError("give --model module:factory (with --weights) or --zoo NAME")
        if zoo_name is not None:
            with progress_bars() as progress:
                src = zoo_package(zoo_name, cache, progress=progress)
            path = _copy_package(src, out)
        else:
            assert model is not None
            path = _pack_factory(model, weights, parse_shape(input_shape), name, out, repeats)
        package = read_package(path)
    except CollabInferError as exc:
        raise fail(exc) from exc
    m = package.manifest
    cuts = ", ".join("x".join(map(str, c["shape"])) for c in m["cuts"][1:-1])
    console.print(f"packed {package.name} -> {path}")
    console.print(f"{len(m['blocks'])} blocks; cut shapes: {cuts}; weights {package.weights}")


def _pack_factory(
    target: str,
    weights: Path | None,
    shape: tuple[int, ...] | None,
    name: str | None,
    out: Path,
    repeats: int,
) -> Path:
    if str(Path.cwd()) not in sys.path:  # like `python -m`: the user's folder is importable
        sys.path.insert(0, str(Path.cwd()))
    module = call_factory(target)
    if weights is not None:
        state = load_user_weights(weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = str(e).splitlines()[0][:300]
            raise CheckpointError(f"--weights {weights} do not fit {target}: {msg}") from None
    else:
        console.print("[yellow]warning:[/yellow] no --weights: packing the factory's own init")
    net = as_blocknet(module.eval(), shape or getattr(module, "input_shape", None))
    shape = net.input_shape
    assert shape is not None
    pkg_name = name or target.partition(":")[2].replace(".", "-")
    with one_thread():
        prof = profile_model(net, pkg_name, repeats=repeats)
    source: dict[str, Any] = {"factory": target}
    if weights is not None:
        source["weights_file"] = weights.name
    return write_package(
        out,
        net,
        pkg_name,
        factory(target, shape),
        profile_json=prof.to_json(),
        source=source,
    )


def _copy_package(src: Path, out: Path) -> Path:
    """A zoo package re-written at ``out`` (read back and verified)."""
    package = read_package(src)
    codecs = {}
    for cut, entry in package.manifest.get("codecs", {}).items():
        tables = FactorizedTables.from_json((src / entry["tables"]).read_text())
        codecs[int(cut)] = (tables, str(entry["tag"]))
    return write_package(
        out,
        package.net,
        package.name,
        package.manifest["architecture"],
        exits=package.exits,
        exit_rule=package.exit_rule,
        codec_tables=codecs,
        profile_json=package.profile_json,
        description=package.manifest.get("description", ""),
        source=package.manifest.get("source"),
    )
