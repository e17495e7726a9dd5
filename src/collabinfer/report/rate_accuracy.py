"""Rate-accuracy as files: ``rate_accuracy.json`` -> ``rate_accuracy.md`` + a plot.

Reads result files only, through
:class:`~collabinfer.experiments.rate_accuracy_schema.RateAccuracyResult`
(``collabinfer report DIR`` re-renders).

    >>> render_rate_accuracy(Path("results/rate-accuracy"))  # doctest: +SKIP
    [PosixPath('results/rate-accuracy/rate_accuracy.md'), PosixPath('.../rate_accuracy.png')]
"""

from __future__ import annotations

from pathlib import Path

from collabinfer.experiments.rate_accuracy_schema import RateAccuracyResult, summary
from collabinfer.report.common import (
    fixed,
    log_axis,
    markdown_table,
    pct,
    pyplot,
    save_figure,
)

__all__ = ["FAMILY_STYLE", "markdown", "plot", "render_rate_accuracy", "write_rate_accuracy"]

FAMILY_STYLE = {
    "input": ("o", "input offloading (image codecs)"),
    "features": ("s", "features at a cut (fp32/fp16/int8)"),
    "bottleneck-hd": ("^", "learned bottleneck, head distillation"),
    "bottleneck-sc": ("D", "learned bottleneck, supervised compression"),
}
TOLERANCE = 0.005  # accuracy a point may lose against the reference and still count


def _headline(res: RateAccuracyResult) -> str:
    s = summary(res, TOLERANCE)
    b, i = s.best_bottleneck, s.best_input
    if b is not None and i is not None and s.bytes_ratio is not None:
        return (
            f"Within 0.5 points of the reference: cheapest input codec **{i.setting}** "
            f"({i.bytes_per_input:.0f} B, {i.accuracy:.2%}); cheapest bottleneck "
            f"**{b.method} {b.setting}** "
            f"({b.bytes_per_input:.0f} B, {b.accuracy:.2%}): "
            f"**{s.bytes_ratio:.1%}** of the bytes."
        )
    bns = [p for p in res.points if p.method.startswith("bottleneck")]
    best = max(bns, key=lambda p: (p.accuracy, -p.bytes_per_input)) if bns else None
    text = "No bottleneck point is within 0.5 points of the reference."
    if best is not None:
        text += (
            f" The most accurate, {best.method} {best.setting}, sends "
            f"{best.bytes_per_input:.0f} B at {best.accuracy:.2%} "
            f"({100 * (res.reference_accuracy - best.accuracy):.1f} points below)"
        )
        if i is not None and i.bytes_per_input > 0:
            text += (
                f"; the cheapest input codec within 0.5 points, {i.setting}, sends "
                f"{i.bytes_per_input:.0f} B; the bottleneck sends "
                f"{best.bytes_per_input / i.bytes_per_input:.0%} of that"
            )
        text += "."
    return text


def markdown(res: RateAccuracyResult) -> str:
    lines = [
        "# Rate vs accuracy",
        "",
        f"Reference (full model, uncompressed input): **{res.reference_accuracy:.2%}** on "
        f"{res.conditions.num_inputs} test images. Rate = payload bytes per input.",
        "",
        _headline(res),
    ]
    enc = res.conditions.encoder
    if enc is not None:
        lines += [
            "",
            f"Encoder (device): {enc.encoder_params:,} params, "
            f"{enc.encoder_mflops:.3f} MFLOPs, "
            f"{enc.encoder_ms:.3f} ms; decoder (server): {enc.decoder_params:,} params, "
            f"{enc.decoder_mflops:.3f} MFLOPs, {enc.decoder_ms:.3f} ms (batch 1, this CPU).",
        ]
    points = sorted(res.points, key=lambda p: (p.method, p.cut, p.bytes_per_input))
    lines += [
        "",
        *markdown_table(
            ["method", "cut", "setting", "bytes/input", "header B", "accuracy"],
            (
                [
                    p.method,
                    p.cut,
                    p.setting,
                    fixed(p.bytes_per_input, ",.1f"),
                    fixed(p.header_bytes_per_input, ".0f"),
                    pct(p.accuracy),
                ]
                for p in points
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(res: RateAccuracyResult, out: Path) -> Path:
    """Accuracy against payload bytes per input (log x), one marker per family."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for method, (marker, label) in FAMILY_STYLE.items():
        pts = [p for p in res.points if p.method == method]
        if pts:
            ax.scatter(
                [max(p.bytes_per_input, 1.0) for p in pts],  # a log axis has no 0
                [100 * p.accuracy for p in pts],
                marker=marker,
                label=label,
                s=28,
                alpha=0.85,
            )
    ref = 100 * res.reference_accuracy
    ax.axhline(ref, color="k", lw=0.8, ls="--", label="reference")
    ax.axhline(ref - 100 * TOLERANCE, color="k", lw=0.6, ls=":", label="reference - 0.5")
    log_axis(ax, "x")
    lo = min(100 * p.accuracy for p in res.points)
    ax.set_ylim(lo - 1, ref + 1)  # every point stays visible
    ax.set_xlabel("bytes per input on the wire (payload, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Rate vs accuracy, {res.conditions.num_inputs:,} test images")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "rate_accuracy.png")


def write_rate_accuracy(result: RateAccuracyResult, out: Path) -> list[Path]:
    """Save ``result`` (``rate_accuracy.json``, with its summary) and render it."""
    return [*result.save(out), *render_rate_accuracy(out)]


def render_rate_accuracy(out: Path) -> list[Path]:
    """``rate_accuracy.md`` and the plot from ``out/rate_accuracy.json`` alone."""
    res = RateAccuracyResult.load(out)
    md = out / "rate_accuracy.md"
    md.write_text(markdown(res))
    return [md, plot(res, out)]
