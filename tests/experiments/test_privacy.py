"""The privacy assessment end to end on a tiny model and synthetic data, and Table 1's column."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from collabinfer.data.synthetic import synthetic_dataset
from collabinfer.errors import ConfigError
from collabinfer.experiments.privacy import (
    PrivacyConfig,
    attacks_for,
    choose_variational,
    run_privacy,
)
from collabinfer.experiments.privacy_schema import (
    PrivacyResult,
    Reconstructions,
    privacy_bounds,
    strongest,
)
from collabinfer.experiments.table1.privacy import parse_sends, privacy_column
from collabinfer.experiments.table1.schema import Row
from collabinfer.model.zoo import create_model
from collabinfer.privacy.attacks import AttackConfig
from collabinfer.privacy.defences import GaussianNoise
from collabinfer.privacy.target import feature_target, nothing_sent
from collabinfer.train.bottleneck import BottleneckConfig

TINY_ATTACK = AttackConfig(
    rmle_steps=10,
    tv_weights=(1e-2,),
    tune_images=2,
    inverse_epochs=1,
    shadow_epochs=1,
    batch_size=32,
    average_sends=2,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrivacyResult, Reconstructions]:
    torch.manual_seed(0)
    teacher = create_model("tiny-cnn").eval()
    classifier = create_model("tiny-mlp").eval()
    cfg = PrivacyConfig(
        cuts=(1, 2),
        codecs=("int8",),
        scored_images=6,
        accuracy_images=12,
        aux_images=48,
        grid_images=3,
        defence_cut=1,
        noise_sigmas=(1.0,),
        dropout_ps=(0.5,),
        bottleneck=BottleneckConfig(
            target_cut=1,
            channels=2,
            hidden=8,
            distill_epochs=1,
            rate_epochs=1,
            tail_epochs=0,
            beta=0.1,
        ),
        kl_weights=(0.1, 1.0),
        variational_epochs=1,
        max_val_drop=1.0,  # tiny models: the selection rule is what is tested, not its numbers
        attack=TINY_ATTACK,
    )
    train = synthetic_dataset(96, seed=1, split="train")
    val = synthetic_dataset(32, seed=2, split="val")
    test = synthetic_dataset(24, seed=3, split="test")
    cache = tmp_path_factory.mktemp("privacy")
    return run_privacy(cfg, teacher, classifier, train, val, test, cache)


def test_every_target_and_attack_is_scored(run) -> None:
    result, pictures = run
    sent = {r.sent for r in result.assessment}
    assert (0, "u8", "none", "") in sent  # EC's image
    assert {(1, "int8", "none", ""), (2, "int8", "none", "")} <= sent
    assert (1, "int8", "noise", "sigma=1") in sent and (1, "int8", "dropout", "p=0.5") in sent
    variational = {r.setting for r in result.assessment if r.defence == "variational"}
    assert variational == {"kl=0.1", "kl=1"}
    lc = [r for r in result.assessment if r.attack == "prior"]
    assert len(lc) == 1 and lc[0].bytes_per_input == 0.0
    attacks = {(r.attack, r.adaptive) for r in result.assessment if r.defence == "noise"}
    assert attacks == {
        ("rmle", False),
        ("inverse", False),
        ("inverse-ood", False),
        ("shadow", False),
        ("rmle", True),
        ("inverse", True),
        ("shadow", True),
    }
    ident = strongest(result, 0, "u8")
    assert ident is not None and ident.ssim > 0.99 and ident.attack == "identity"
    assert len(pictures.rows) == len(result.assessment)
    assert pictures.originals.shape == (3, 1, 28, 28) and pictures.originals.dtype.name == "uint8"


def test_the_sweep_choice_follows_the_rule(run) -> None:
    result, _ = run
    runs = result.conditions.variational
    assert [r.kl_weight for r in runs] == [0.1, 1.0]
    assert sum(r.chosen for r in runs) == 1 and runs[-1].chosen  # max_val_drop=1 admits both


def test_choose_variational() -> None:
    assert choose_variational(0.9, [(0.1, 0.895), (0.3, 0.89), (1.0, 0.80)], 0.01) == 0.3
    assert choose_variational(0.9, [(1.0, 0.80)], 0.01) is None


def test_result_and_pictures_round_trip(run, tmp_path: Path) -> None:
    result, pictures = run
    result.save(tmp_path)
    pictures.save(tmp_path)
    assert PrivacyResult.load(tmp_path) == result
    back = Reconstructions.load(tmp_path, len(result.assessment))
    assert all((a == b).all() for a, b in zip(back.rows, pictures.rows, strict=True))
    data = json.loads((tmp_path / "privacy.json").read_text())
    keys = {
        "attack",
        "adaptive",
        "cut",
        "codec",
        "defence",
        "setting",
        "ssim",
        "psnr_db",
        "recognisability",
        "task_accuracy",
    }
    assert keys <= set(data["assessment"][0])


def test_a_malformed_privacy_file_is_one_line(run, tmp_path: Path) -> None:
    result, _ = run
    result.save(tmp_path)
    data = json.loads((tmp_path / "privacy.json").read_text())
    data["assessment"][0]["defence"] = "tinfoil"
    (tmp_path / "privacy.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown defence 'tinfoil'") as err:
        PrivacyResult.load(tmp_path)
    assert "\n" not in str(err.value)


def test_privacy_bounds_are_the_strongest_per_undefended_send(run) -> None:
    result, _ = run
    bounds = privacy_bounds(result)
    assert set(bounds) >= {(0, "u8"), (1, "int8"), (2, "int8")}
    best = max(r.ssim for r in result.assessment if r.sent == (1, "int8", "none", ""))
    assert bounds[(1, "int8")] == best


def test_attacks_for_each_kind_of_target() -> None:
    net = create_model("tiny-cnn").eval()
    assert attacks_for(nothing_sent(net)) == [("prior", False)]
    assert attacks_for(feature_target(net, 0, "u8")) == [("identity", False)]
    plain = attacks_for(feature_target(net, 1, "int8"))
    assert ("rmle", False) in plain and not any(a for _, a in plain)
    noisy = attacks_for(feature_target(net, 1, "int8", GaussianNoise(1.0)))
    assert ("inverse", True) in noisy


def test_parse_sends() -> None:
    assert parse_sends("1:int8,0:u8") == [(1, "int8"), (0, "u8")]
    assert parse_sends("") == []
    with pytest.raises(ConfigError, match="cut:codec"):
        parse_sends("int8")


def _row(paradigm: str, sends: str) -> Row:
    return Row(paradigm, 0.9, 1.0, 2.0, 10.0, False, 0.0, "virtual-clock", sends=sends)


def test_privacy_column_scores_what_each_row_sent() -> None:
    net = create_model("tiny-cnn").eval()
    aux = synthetic_dataset(48, seed=1, split="train")
    scored = synthetic_dataset(6, seed=3, split="test")
    rows = [_row("EC", "0:u8"), _row("LC", ""), _row("split", "1:int8"), _row("other", "2:fp32")]
    out = privacy_column(rows, {"EC": net, "LC": net, "split": net}, aux, scored)
    ec, lc, split, other = out
    assert ec.privacy_ssim is not None and ec.privacy_ssim > 0.99  # the image itself
    assert lc.privacy_ssim is not None and split.privacy_ssim is not None
    assert lc.privacy_ssim < ec.privacy_ssim and split.privacy_ssim < ec.privacy_ssim
    assert other.privacy_ssim is None  # no model given for that row: not measured
    assert dataclasses.replace(ec, privacy_ssim=None) == rows[0]
