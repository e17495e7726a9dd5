"""The privacy assessment as files: ``privacy.json`` (+ ``privacy_images.npz``) ->
``privacy.md``, a trade-off plot and a picture grid.

Why one number per thing sent: a defence is only as good as the best attack
on it, so every table, the plot and the grid show the *strongest* attacker
(highest SSIM over every attack, adaptive ones included; see
:func:`~collabinfer.experiments.privacy_schema.strongest`), and the full table
keeps every row for whoever wants the rest. The grid shows that attacker's
reconstructions, so a reader can check by eye what an SSIM of 0.3 looks like.

Reads result files only, through
:class:`~collabinfer.experiments.privacy_schema.PrivacyResult` and
:class:`~collabinfer.experiments.privacy_schema.Reconstructions`; without the
picture file the grid is skipped and the rest still renders
(``collabinfer report DIR`` re-renders).

    >>> render_privacy(Path("results/privacy"))  # doctest: +SKIP
    [PosixPath('results/privacy/privacy.md'), PosixPath('.../privacy_tradeoff.png'),
     PosixPath('.../privacy_grid.png')]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from collabinfer.experiments.privacy_schema import (
    IMAGES_FILE,
    AssessmentRow,
    PrivacyResult,
    Reconstructions,
    VariationalRun,
    strongest,
)
from collabinfer.privacy.names import UNRECOGNISABLE_SSIM
from collabinfer.report.common import DASH, fixed, markdown_table, pct, pyplot, save_figure

__all__ = [
    "DEFENCE_STYLE",
    "UNRECOGNISABLE_ACCURACY",
    "grid",
    "markdown",
    "plot",
    "render_privacy",
    "strongest_per_sent",
    "write_privacy",
]

# The recognisability a defence must stay under: 3x chance (10 % on Fashion-MNIST),
# the same line the assessment's acceptance uses for "a classifier cannot tell".
UNRECOGNISABLE_ACCURACY = 0.3
DEFENCE_STYLE = {  # defence -> (marker, colour, legend)
    "noise": ("v", "tab:orange", "Gaussian noise"),
    "dropout": ("P", "tab:green", "feature dropout"),
    "variational": ("D", "tab:purple", "variational bottleneck"),
}


# ---------------------------------------------------------------- what was sent


def _lc_cut(res: PrivacyResult) -> int | None:
    """The cut that stands for "nothing sent" (LC): the prior's, if the result has one."""
    cuts = [r.cut for r in res.assessment if r.attack == "prior"]
    return max(cuts) if cuts else None


def _sent(row: AssessmentRow, lc_cut: int | None) -> str:
    if row.cut == 0:
        return "image"
    return "nothing (LC)" if row.cut == lc_cut else f"cut {row.cut}"


def _is_bottleneck(row: AssessmentRow) -> bool:
    """The deterministic bottleneck: undefended, its entropy codec named ``ent-<key>``."""
    return row.defence == "none" and row.codec.startswith("ent-")


def _label(row: AssessmentRow, lc_cut: int | None) -> str:
    """``cut 4 ent-ab12 variational kl=0.3 / rmle (adaptive)``: the thing sent, then the attack."""
    what = _sent(row, lc_cut) if row.cut == lc_cut else f"{_sent(row, lc_cut)} {row.codec}"
    if row.defence != "none":
        what += f" {row.defence} {row.setting}"
    return f"{what} / {_attack(row)}"


def _attack(row: AssessmentRow) -> str:
    return row.attack + (" (adaptive)" if row.adaptive else "")


def strongest_per_sent(res: PrivacyResult) -> list[tuple[int, AssessmentRow]]:
    """For each distinct thing sent (first-appearance order), the strongest attack's
    row and its index in ``res.assessment`` (and so in the picture file's rows)."""
    out: list[tuple[int, AssessmentRow]] = []
    seen: set[tuple[int, str, str, str]] = set()
    for r in res.assessment:
        if r.sent in seen:
            continue
        seen.add(r.sent)
        best = strongest(res, *r.sent)
        if best is not None:  # always: r itself is one of its rows
            out.append((next(i for i, s in enumerate(res.assessment) if s is best), best))
    return out


def _setting_key(setting: str) -> tuple[float, str]:
    """``sigma=0.5`` by its number, so ``kl=3`` comes before ``kl=10``."""
    m = re.search(r"=\s*([-+0-9.eE]+)$", setting)
    try:
        return (float(m.group(1)) if m else float("inf"), setting)
    except ValueError:
        return (float("inf"), setting)


# ---------------------------------------------------------------- markdown


def _point(row: AssessmentRow) -> str:
    return f"SSIM {row.ssim:.3f} at {pct(row.task_accuracy)} task accuracy"


def _families(res: PrivacyResult, best: list[AssessmentRow], lc_cut: int | None) -> list[str]:
    """One bullet per defence family: its strongest attacker's SSIM and the accuracy kept."""
    lines = []
    image = [r for r in best if r.cut == 0]
    if image:
        lines.append(f"* the image (EC, CC): {_point(image[0])}")
    plain = [r for r in best if r.defence == "none" and 0 < r.cut != lc_cut]
    feats = [r for r in plain if not _is_bottleneck(r)]
    if feats:
        lo, hi = min(feats, key=lambda r: r.ssim), max(feats, key=lambda r: r.ssim)
        lines.append(
            f"* undefended features: SSIM {lo.ssim:.3f} (cut {lo.cut} {lo.codec}) to "
            f"{hi.ssim:.3f} (cut {hi.cut} {hi.codec})"
        )
    for r in plain:
        if _is_bottleneck(r):
            lines.append(f"* deterministic bottleneck (cut {r.cut}, {r.codec}): {_point(r)}")
    for defence in DEFENCE_STYLE:
        rows = sorted(
            (r for r in best if r.defence == defence), key=lambda r: _setting_key(r.setting)
        )
        if rows:
            lines.append(f"* {defence}: " + "; ".join(f"{r.setting} {_point(r)}" for r in rows))
    lc = [r for r in best if r.cut == lc_cut]
    if lc:
        lines.append(f"* nothing sent (LC): {_point(lc[0])} (the attacker's prior)")
    return lines


def _chosen(res: PrivacyResult, best: list[AssessmentRow]) -> str:
    """Whether the deployed variational setting is past both lines, and what it costs."""
    runs = res.conditions.variational
    chosen = next((v for v in runs if v.chosen), None)
    if chosen is None:
        return "No variational setting was chosen on validation." if runs else ""
    setting = f"kl={chosen.kl_weight:g}"
    rows = [r for r in res.assessment if r.defence == "variational" and r.setting == setting]
    if not rows:
        return f"The chosen variational setting, **{setting}**, has no assessment rows."
    top = max(rows, key=lambda r: r.ssim)
    rec = max(r.recognisability for r in rows)
    ok = top.ssim <= UNRECOGNISABLE_SSIM and rec <= UNRECOGNISABLE_ACCURACY
    text = (
        f"The deployed variational setting, **{setting}** (chosen on validation), "
        f"**{'reaches' if ok else 'does not reach'}** the unrecognisable line: the "
        f"strongest attack, {_attack(top)}, gets SSIM {top.ssim:.3f} "
        f"(line {UNRECOGNISABLE_SSIM:g}), and at most "
        f"{pct(rec, 1)} recognisable over every attack (line {pct(UNRECOGNISABLE_ACCURACY, 0)}), "
        f"at {pct(top.task_accuracy)} task accuracy"
    )
    det = next((r for r in best if _is_bottleneck(r)), None)
    if det is not None:
        gap = 100 * (det.task_accuracy - top.task_accuracy)
        text += (
            f", {abs(gap):.1f} points {'below' if gap >= 0 else 'above'} the "
            f"deterministic bottleneck's {pct(det.task_accuracy)}"
        )
    return text + "."


def _sweep(runs: tuple[VariationalRun, ...]) -> str:
    return "; ".join(
        f"kl={v.kl_weight:g}: val {pct(v.val_acc)}" + (" (chosen)" if v.chosen else "")
        for v in runs
    )


STRONGEST_HEADER = (
    "sent",
    "codec",
    "defence",
    "setting",
    "bytes/input",
    "task accuracy",
    "strongest attack",
    "SSIM",
    "PSNR dB",
    "recognisability",
)
EVERY_HEADER = (
    "attack",
    "adaptive",
    "aux",
    "cut",
    "codec",
    "defence",
    "setting",
    "SSIM",
    "SSIM p90",
    "PSNR dB",
    "recognisability",
    "task accuracy",
    "seconds",
)


def _strongest_cells(r: AssessmentRow, lc_cut: int | None) -> list[object]:
    return [
        _sent(r, lc_cut),
        r.codec,
        r.defence,
        r.setting or DASH,
        fixed(r.bytes_per_input, ",.1f"),
        pct(r.task_accuracy),
        _attack(r),
        f"{r.ssim:.3f}",
        f"{r.psnr_db:.1f}",
        pct(r.recognisability),
    ]


def _every_cells(r: AssessmentRow) -> list[object]:
    return [
        r.attack,
        "yes" if r.adaptive else "no",
        r.aux,
        r.cut,
        r.codec,
        r.defence,
        r.setting or DASH,
        f"{r.ssim:.3f}",
        f"{r.ssim_p90:.3f}",
        f"{r.psnr_db:.1f}",
        pct(r.recognisability),
        pct(r.task_accuracy),
        f"{r.attack_seconds:.1f}",
    ]


def markdown(res: PrivacyResult) -> str:
    lc_cut = _lc_cut(res)
    best = [r for _, r in strongest_per_sent(res)]
    c = res.conditions
    lines = [
        "# Privacy: inversion attacks on what leaves the device",
        "",
        f"{c.model}, {c.scored_images} scored test images ({c.accuracy_images} for task "
        "accuracy). Per thing sent, the strongest attacker (highest SSIM over every attack, "
        "adaptive ones included):",
        "",
        *_families(res, best, lc_cut),
    ]
    chosen = _chosen(res, best)
    if chosen:
        lines += ["", chosen]
    lines += [
        "",
        "## Strongest attack per thing sent",
        "",
        *markdown_table(STRONGEST_HEADER, (_strongest_cells(r, lc_cut) for r in best)),
        "",
        "## Every attack",
        "",
        *markdown_table(EVERY_HEADER, (_every_cells(r) for r in res.assessment)),
        "",
        "## How to read",
        "",
        f"SSIM below {UNRECOGNISABLE_SSIM:g} counts as unrecognisable (He, Zhang & Lee 2019). "
        f"Recognisability is the accuracy on the reconstructions of a fixed classifier, "
        f"{c.classifier}, which scores {pct(c.classifier_accuracy)} on the originals; "
        "chance is 10%. "
        f"The deployed variational setting: {c.selection}; deterministic bottleneck "
        f"validation accuracy {pct(c.deterministic_val_acc)}."
        + (f" The sweep: {_sweep(c.variational)}." if c.variational else ""),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def plot(res: PrivacyResult, out: Path) -> Path:
    """Task accuracy against the strongest attacker's SSIM, one marker per defence."""
    lc_cut = _lc_cut(res)
    best = [r for _, r in strongest_per_sent(res)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))

    def scatter(rows: list[AssessmentRow], **kw: Any) -> None:
        if rows:
            ax.scatter([r.ssim for r in rows], [100 * r.task_accuracy for r in rows], **kw)

    plain = [r for r in best if r.defence == "none" and 0 < r.cut != lc_cut]
    feats = [r for r in plain if not _is_bottleneck(r)]
    scatter(feats, marker="o", color="grey", s=14, alpha=0.7, label="undefended features")
    for r in feats:
        ax.annotate(
            f"cut {r.cut} {r.codec}",
            (r.ssim, 100 * r.task_accuracy),
            fontsize=6,
            color="grey",
            xytext=(3, 2),
            textcoords="offset points",
        )
    scatter([r for r in best if r.cut == 0], marker="s", color="k", s=30, label="image (EC/CC)")
    scatter(
        [r for r in best if r.cut == lc_cut], marker="*", color="k", s=90, label="nothing sent (LC)"
    )
    scatter(
        [r for r in plain if _is_bottleneck(r)],
        marker="X",
        color="tab:blue",
        s=60,
        label="deterministic bottleneck",
    )
    for defence, (marker, colour, label) in DEFENCE_STYLE.items():
        rows = sorted(
            (r for r in best if r.defence == defence), key=lambda r: _setting_key(r.setting)
        )
        if not rows:
            continue
        xs, ys = [r.ssim for r in rows], [100 * r.task_accuracy for r in rows]
        ax.plot(xs, ys, marker=marker, color=colour, lw=1, ms=6, label=label)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(
                r.setting,
                (x, y),
                fontsize=7,
                color=colour,
                xytext=(4, -9),
                textcoords="offset points",
            )
    ax.axvline(
        UNRECOGNISABLE_SSIM,
        color="k",
        lw=0.8,
        ls="--",
        label=f"unrecognisable (SSIM {UNRECOGNISABLE_SSIM:g})",
    )
    ax.set_xlim(min(0.0, *(r.ssim for r in best)) - 0.02, 1.05)
    ax.set_xlabel("strongest attacker's SSIM (lower: less recovered)")
    ax.set_ylabel("task accuracy (%)")
    ax.set_title("accuracy vs the strongest attacker (top-left is best)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "privacy_tradeoff.png")


def _show(ax: Any, image: np.ndarray) -> None:
    """One (C, H, W) uint8 image: grey for one channel, colour for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.moveaxis(image, 0, -1))
    ax.set_xticks([])
    ax.set_yticks([])


def grid(res: PrivacyResult, pictures: Reconstructions, out: Path) -> Path:
    """The originals, then per thing sent its strongest attacker's reconstructions."""
    lc_cut = _lc_cut(res)
    best = strongest_per_sent(res)
    labelled = [("originals", pictures.originals)] + [
        (f"{_label(r, lc_cut)}\nSSIM {r.ssim:.3f}", pictures.rows[i]) for i, r in best
    ]
    nrows, ncols = len(labelled), max(1, pictures.originals.shape[0])
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.0 * ncols + 3, 0.9 * nrows), squeeze=False)
    for row_axes, (label, images) in zip(axes, labelled, strict=True):
        for ax, image in zip(row_axes, images, strict=False):
            _show(ax, image)
        for ax in row_axes[len(images) :]:
            ax.axis("off")
        row_axes[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    return save_figure(fig, out / "privacy_grid.png")


# ---------------------------------------------------------------- files


def write_privacy(result: PrivacyResult, pictures: Reconstructions, out: Path) -> list[Path]:
    """Save ``result`` (``privacy.json``) and ``pictures`` (``privacy_images.npz``), then
    render them."""
    out.mkdir(parents=True, exist_ok=True)
    return [*result.save(out), pictures.save(out), *render_privacy(out)]


def render_privacy(out: Path) -> list[Path]:
    """``privacy.md``, the trade-off plot and (with ``privacy_images.npz``) the picture
    grid, from the files in ``out`` alone; a broken picture file is a ConfigError."""
    res = PrivacyResult.load(out)
    md = out / "privacy.md"
    md.write_text(markdown(res))
    paths = [md, plot(res, out)]
    if (out / IMAGES_FILE).is_file():
        paths.append(grid(res, Reconstructions.load(out, len(res.assessment)), out))
    return paths
