"""The privacy report from a hand-built ``PrivacyResult`` (no model, no attack, no dataset)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.privacy_schema import (
    AssessmentRow,
    PrivacyConditions,
    PrivacyResult,
    Reconstructions,
    VariationalRun,
)
from collabinfer.report import render_report
from collabinfer.report.privacy import markdown, render_privacy, strongest_per_sent, write_privacy

FILES = [
    "privacy.json",
    "privacy_images.npz",
    "privacy.md",
    "privacy_tradeoff.png",
    "privacy_grid.png",
]


def _row(attack: str, cut: int, codec: str, ssim: float, **kw: object) -> AssessmentRow:
    fields: dict[str, object] = {
        "adaptive": False,
        "defence": "none",
        "setting": "",
        "psnr_db": 10.0 + 10 * ssim,
        "recognisability": ssim,
        "task_accuracy": 0.93,
        "images": 16,
        "attack_seconds": 1.5,
        "bytes_per_input": 100.0 * cut,
        "ssim_p90": min(1.0, ssim + 0.05),
    }
    fields.update(kw)
    return AssessmentRow(attack=attack, cut=cut, codec=codec, ssim=ssim, **fields)  # type: ignore[arg-type]


def _result() -> PrivacyResult:
    var = {"defence": "variational", "setting": "kl=0.3", "task_accuracy": 0.90}
    rows = (
        _row("identity", 0, "u8", 1.0),
        _row("rmle", 1, "fp32", 0.80),
        _row("inverse", 1, "fp32", 0.90),  # the stronger of the two on cut 1
        _row("rmle", 4, "int8", 0.50),
        _row("inverse", 4, "int8", 0.40),
        _row("inverse", 4, "ent-abcd1234", 0.45, task_accuracy=0.92),
        _row("inverse", 4, "int8", 0.35, defence="noise", setting="sigma=0.5", task_accuracy=0.88),
        _row("inverse", 4, "ent-efgh5678", 0.20, **var),
        _row("rmle", 4, "ent-efgh5678", 0.28, adaptive=True, recognisability=0.25, **var),
        _row("prior", 8, "none", 0.10, bytes_per_input=0.0),
    )
    conditions = PrivacyConditions(
        config={"quick": True},
        model="fmnist-resnet",
        scored_images=16,
        accuracy_images=1000,
        classifier="fmnist-small (trained on the training split)",
        classifier_accuracy=0.91,
        deterministic_val_acc=0.925,
        selection="largest KL weight with validation accuracy >= 0.925 - 0.03",
        variational=(
            VariationalRun(0.3, 0.905, "ckpt/a.pt", "ent-efgh5678", chosen=True),
            VariationalRun(1.0, 0.85, "ckpt/b.pt", "ent-ijkl9012"),
        ),
    )
    return PrivacyResult(rows, conditions)


def _pictures(rows: int) -> Reconstructions:
    rng = np.random.default_rng(0)
    shape = (4, 1, 28, 28)
    return Reconstructions(
        rng.integers(0, 256, shape, dtype=np.uint8),
        tuple(rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(rows)),
    )


def _write(out: Path) -> list[Path]:
    res = _result()
    return write_privacy(res, _pictures(len(res.assessment)), out)


def test_write_saves_both_files_and_renders_three(tmp_path: Path) -> None:
    paths = _write(tmp_path / "privacy")
    assert [p.name for p in paths] == FILES
    assert all(p.is_file() and p.parent == tmp_path / "privacy" for p in paths)
    for name in ("privacy_tradeoff.png", "privacy_grid.png"):
        assert (tmp_path / "privacy" / name).read_bytes()[:4] == b"\x89PNG"


def test_render_report_re_renders_from_the_files_alone(tmp_path: Path) -> None:
    _write(tmp_path)
    md = (tmp_path / "privacy.md").read_text()
    for name in FILES[2:]:
        (tmp_path / name).unlink()
    assert [p.name for p in render_report(tmp_path)] == FILES[2:]
    assert (tmp_path / "privacy.md").read_text() == md


def _strongest_lines(md: str) -> list[str]:
    section = md.split("## Strongest attack per thing sent")[1].split("## Every attack")[0]
    return [line for line in section.splitlines() if line.startswith("| ")][1:]


def test_the_strongest_table_names_the_attack_with_the_highest_ssim() -> None:
    res = _result()
    lines = _strongest_lines(markdown(res))
    assert len(lines) == len({r.sent for r in res.assessment}) == 7
    cut1 = next(line for line in lines if line.startswith("| cut 1 | fp32 | none | — |"))
    assert "| inverse | 0.900 | 19.0 |" in cut1  # not rmle's 0.800
    cut4 = next(line for line in lines if line.startswith("| cut 4 | int8 | none | — |"))
    assert "| rmle | 0.500 |" in cut4  # not inverse's 0.400
    var = next(line for line in lines if "| variational | kl=0.3 |" in line)
    assert "| rmle (adaptive) | 0.280 |" in var
    assert lines[0].startswith("| image | u8 |") and lines[-1].startswith("| nothing (LC) |")
    # the grid's rows are these, indexed into the assessment (and so the picture file)
    assert [i for i, _ in strongest_per_sent(res)] == [0, 2, 3, 5, 6, 8, 9]


def test_the_headline_judges_the_chosen_setting_against_both_lines() -> None:
    md = markdown(_result())
    assert md.startswith("# Privacy: inversion attacks on what leaves the device\n")
    assert "**kl=0.3** (chosen on validation), **reaches** the unrecognisable line" in md
    assert "the strongest attack, rmle (adaptive), gets SSIM 0.280 (line 0.3)" in md
    assert "2.0 points below the deterministic bottleneck's 92.00%" in md
    assert "* noise: sigma=0.5 SSIM 0.350 at 88.00% task accuracy" in md
    assert "kl=0.3: val 90.50% (chosen); kl=1: val 85.00%" in md
    assert (
        "fmnist-small (trained on the training split), which scores 91.00% on the originals" in md
    )
    assert md.count("\n| ") == 2 + 7 + len(_result().assessment)  # a header line each


def test_a_recognisable_chosen_setting_does_not_reach_the_line() -> None:
    res = _result()
    rows = tuple(
        dataclasses.replace(r, recognisability=0.6) if r.defence == "variational" else r
        for r in res.assessment
    )
    md = markdown(PrivacyResult(rows, res.conditions))
    assert "**does not reach** the unrecognisable line" in md
    assert "at most 60.0% recognisable" in md


@pytest.mark.parametrize("damage", ["truncate", "garbage", "short"])
def test_a_broken_picture_file_is_a_one_line_config_error(tmp_path: Path, damage: str) -> None:
    _write(tmp_path)
    npz = tmp_path / "privacy_images.npz"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "garbage":
        npz.write_bytes(b"not a zip file\n" * 10)
    else:  # a valid file with one row too few
        _pictures(len(_result().assessment) - 1).save(tmp_path)
    with pytest.raises(ConfigError) as err:
        render_privacy(tmp_path)
    assert "privacy_images.npz" in str(err.value) and "\n" not in str(err.value)


def test_without_the_picture_file_the_grid_is_skipped(tmp_path: Path) -> None:
    _write(tmp_path)
    for name in ("privacy_images.npz", "privacy_grid.png", "privacy.md", "privacy_tradeoff.png"):
        (tmp_path / name).unlink()
    assert [p.name for p in render_privacy(tmp_path)] == ["privacy.md", "privacy_tradeoff.png"]
    assert (tmp_path / "privacy.md").is_file() and (tmp_path / "privacy_tradeoff.png").is_file()
    assert not (tmp_path / "privacy_grid.png").exists()
