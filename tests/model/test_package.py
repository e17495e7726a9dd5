"""Model packages: what is written reads back into the same blocks, and every way a
package can be broken (truncated, tampered, too new, foreign) is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from collabinfer.codec import get_codec
from collabinfer.errors import ModelError, PackageError
from collabinfer.model.bottleneck import Bottleneck, bottleneck_net, prior_tables
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.dynamic import NEVER, ExitRule
from collabinfer.model.exits import ExitBranches
from collabinfer.model.gates import gate_net
from collabinfer.model.package import (
    PACKAGE_VERSION,
    as_blocknet,
    bottleneck,
    build_architecture,
    factory,
    gated,
    is_package,
    read_package,
    write_package,
    zoo,
)
from collabinfer.model.zoo import create_model

X = torch.randn(3, 1, 28, 28)


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor = X) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_zoo_package_reads_back_the_same_weights(tmp_path: Path) -> None:
    net = create_model("fmnist-small")
    path = write_package(tmp_path / "p", net, "small", zoo("fmnist-small"), description="d")
    pkg = read_package(path)
    assert pkg.name == "small" and pkg.weights == weights_hash(net)
    assert pkg.input_shape == (1, 28, 28)
    assert _same(pkg.net, net)
    m = pkg.manifest
    assert m["format_version"] == PACKAGE_VERSION and m["blocks"] == list(net.block_names)
    assert [c["shape"] for c in m["cuts"]] == [list(c.shape) for c in net.cut_points()]
    assert (path / "weights.safetensors").is_file() and is_package(path)


def test_a_gated_package_keeps_its_gates(tmp_path: Path) -> None:
    net = gate_net(create_model("fmnist-resnet"))
    for p in net.parameters():  # gates that are not at their init
        p.data.add_(0.01 * torch.randn_like(p))
    pkg = read_package(write_package(tmp_path / "g", net, "g", gated(zoo("fmnist-resnet"))))
    assert pkg.weights == weights_hash(net) and _same(pkg.net, net)


def test_a_bottleneck_package_registers_its_codec(tmp_path: Path) -> None:
    teacher = create_model("fmnist-resnet")
    shape = teacher.cut_points()[4].shape
    bn = Bottleneck(4, shape[0], shape[1], 16)
    net = bottleneck_net(bn, teacher, 4)
    arch = bottleneck(zoo("fmnist-resnet"), 4, 4, 16)
    tables = prior_tables(bn)
    pkg = read_package(
        write_package(tmp_path / "b", net, "b", arch, codec_tables={1: (tables, "pkgtest")})
    )
    assert pkg.codecs == {1: "ent-pkgtest"}
    assert get_codec("ent-pkgtest").tables == tables  # type: ignore[attr-defined]
    assert _same(pkg.net, net)


def test_exits_and_their_rule_travel_with_the_package(tmp_path: Path) -> None:
    net = create_model("fmnist-resnet")
    exits = ExitBranches.for_model(net, cuts=(1, 5))
    exits.set_temperatures([1.5, 0.7])
    rule = ExitRule((0.9, NEVER), "maxprob", (frozenset({0, 1}), None))
    path = write_package(
        tmp_path / "e", net, "e", zoo("fmnist-resnet"), exits=exits, exit_rule=rule
    )
    pkg = read_package(path)
    assert pkg.exits is not None and pkg.exit_rule == rule
    z = net.run_until(X, 1)
    with torch.no_grad():
        assert torch.equal(pkg.exits.calibrated(0, z), exits.eval().calibrated(0, z))


def test_a_factory_package_imports_the_users_module(tmp_path: Path) -> None:
    import byo_models

    seq = byo_models.colour_seq()
    net = as_blocknet(seq, (3, 32, 32))
    spec = factory("byo_models:colour_seq", (3, 32, 32))
    pkg = read_package(write_package(tmp_path / "f", net, "colour", spec))
    x = torch.randn(2, 3, 32, 32)
    assert _same(pkg.net, seq, x) and pkg.input_shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("no_such_module_xyz:f", "cannot import"),
        ("byo_models:missing", "has no"),
        ("byo_models:not_a_module", "must return an nn.Module"),
        ("byo_models", "module:callable"),
    ],
)
def test_a_bad_factory_is_one_clear_line(target: str, needle: str) -> None:
    with pytest.raises(ModelError, match=needle):
        build_architecture({"kind": "factory", "factory": target, "input_shape": [3, 32, 32]})


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return write_package(tmp_path / "pkg", create_model("tiny-cnn"), "tiny", zoo("tiny-cnn"))


def test_a_truncated_weights_file_is_refused(package: Path) -> None:
    w = package / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(PackageError, match="truncated"):
        read_package(package)


def test_tampered_weights_are_refused(package: Path) -> None:
    w = package / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-7] ^= 0x40  # same size, other bytes
    w.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        read_package(package)


def test_a_manifest_that_lies_about_the_weights_is_refused(package: Path) -> None:
    m = json.loads((package / "manifest.json").read_text())
    m["weights_hash"] = "0" * 16
    (package / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="weights hash"):
        read_package(package)


def test_a_newer_format_version_says_upgrade(package: Path) -> None:
    m = json.loads((package / "manifest.json").read_text())
    m["format_version"] = PACKAGE_VERSION + 1
    (package / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="upgrade collabinfer"):
        read_package(package)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text('{"format": "x"}'), "not a collabinfer"),
        (lambda p: (p / "weights.safetensors").unlink(), "missing"),
    ],
)
def test_a_broken_package_is_one_clear_line(package: Path, damage, needle: str) -> None:  # type: ignore[no-untyped-def]
    damage(package)
    with pytest.raises(PackageError, match=needle):
        read_package(package)


def test_a_file_outside_the_package_is_refused(package: Path) -> None:
    m = json.loads((package / "manifest.json").read_text())
    m["files"]["../escape"] = {"sha256": "", "bytes": 0}
    (package / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="outside"):
        read_package(package)


def test_weights_for_another_architecture_are_refused(package: Path) -> None:
    m = json.loads((package / "manifest.json").read_text())
    m["architecture"] = zoo("tiny-mlp")
    (package / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="do not fit"):
        read_package(package)


def test_writing_over_something_that_is_not_a_package_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PackageError, match="not a package"):
        write_package(tmp_path / "mine", create_model("tiny-cnn"), "t", zoo("tiny-cnn"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_rewriting_a_package_replaces_it(package: Path) -> None:
    torch.manual_seed(5)
    other = create_model("tiny-cnn")
    write_package(package, other, "tiny", zoo("tiny-cnn"))
    assert read_package(package).weights == weights_hash(other)
    assert not [p for p in package.parent.iterdir() if p.name.startswith(".")]  # no temp left
