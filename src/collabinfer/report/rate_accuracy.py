"""Rate-accuracy as files: ``rate_accuracy.json`` -> ``rate_accuracy.md`` + a plot.

Reads result files only (``collabinfer report rate-accuracy DIR`` re-renders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collabinfer.errors import ConfigError
from collabinfer.experiments.rate_accuracy import Point, RateAccuracyResult, summary

FAMILY_STYLE = {
    "input": ("o", "input offloading (image codecs)"),
    "features": ("s", "features at a cut (fp32/fp16/int8)"),
    "bottleneck-hd": ("^", "learned bottleneck, head distillation"),
    "bottleneck-sc": ("D", "learned bottleneck, supervised compression"),
}


def _result(data: dict[str, Any]) -> RateAccuracyResult:
    points = tuple(Point(**p) for p in data["points"])
    return RateAccuracyResult(points, data["reference_accuracy"], data.get("conditions", {}))


def markdown(data: dict[str, Any]) -> str:
    res = _result(data)
    s = summary(res)
    lines = [
        "# Rate vs accuracy",
        "",
        f"Reference (full model, uncompressed input): **{res.reference_accuracy:.2%}** on "
        f"{data['conditions'].get('num_inputs', '?')} test images. Rate = payload bytes per input.",
        "",
    ]
    if s["best_bottleneck"] and s["best_input"]:
        b, i = s["best_bottleneck"], s["best_input"]
        lines.append(
            f"Within 0.5 points of the reference: cheapest input codec **{i['setting']}** "
            f"({i['bytes_per_input']:.0f} B, {i['accuracy']:.2%}); cheapest bottleneck "
            f"**{b['method']} {b['setting']}** "
            f"({b['bytes_per_input']:.0f} B, {b['accuracy']:.2%}): "
            f"**{s['bytes_ratio']:.1%}** of the bytes."
        )
    else:
        bns = [p for p in res.points if p.method.startswith("bottleneck")]
        best = max(bns, key=lambda p: (p.accuracy, -p.bytes_per_input)) if bns else None
        text = "No bottleneck point is within 0.5 points of the reference."
        if best is not None:
            text += (
                f" The most accurate, {best.method} {best.setting}, sends "
                f"{best.bytes_per_input:.0f} B at {best.accuracy:.2%} "
                f"({100 * (res.reference_accuracy - best.accuracy):.1f} points below)"
            )
            inp = s["best_input"]
            if inp:
                text += (
                    f"; the cheapest input codec within 0.5 points, {inp['setting']}, sends "
                    f"{inp['bytes_per_input']:.0f} B; the bottleneck sends "
                    f"{best.bytes_per_input / inp['bytes_per_input']:.0%} of that"
                )
            text += "."
        lines.append(text)
    enc = data["conditions"].get("encoder")
    if enc:
        lines += [
            "",
            f"Encoder (device): {enc['encoder_params']:,} params, "
            f"{enc['encoder_mflops']:.3f} MFLOPs, "
            f"{enc['encoder_ms']:.3f} ms; decoder (server): {enc['decoder_params']:,} params, "
            f"{enc['decoder_mflops']:.3f} MFLOPs, {enc['decoder_ms']:.3f} ms (batch 1, this CPU).",
        ]
    lines += [
        "",
        "| method | cut | setting | bytes/input | header B | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(res.points, key=lambda p: (p.method, p.cut, p.bytes_per_input)):
        lines.append(
            f"| {p.method} | {p.cut} | {p.setting} | {p.bytes_per_input:,.1f} | "
            f"{p.header_bytes_per_input:.0f} | {p.accuracy:.2%} |"
        )
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = _result(data)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for method, (marker, label) in FAMILY_STYLE.items():
        pts = [p for p in res.points if p.method == method]
        if pts:
            ax.scatter(
                [p.bytes_per_input for p in pts],
                [100 * p.accuracy for p in pts],
                marker=marker,
                label=label,
                s=28,
                alpha=0.85,
            )
    ax.axhline(100 * res.reference_accuracy, color="k", lw=0.8, ls="--", label="reference")
    ax.axhline(
        100 * (res.reference_accuracy - 0.005), color="k", lw=0.6, ls=":", label="reference - 0.5"
    )
    ax.set_xscale("log")
    lo = min(100 * p.accuracy for p in res.points)
    ax.set_ylim(lo - 1, 100 * res.reference_accuracy + 1)  # every point stays visible
    ax.set_xlabel("bytes per input on the wire (payload, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Rate vs accuracy, fmnist-resnet")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = out / "rate_accuracy.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def write_rate_accuracy(result: RateAccuracyResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json_dict()
    data["summary"] = summary(result)
    (out / "rate_accuracy.json").write_text(json.dumps(data, indent=2))
    return [out / "rate_accuracy.json", *render_rate_accuracy(out)]


def render_rate_accuracy(out: Path) -> list[Path]:
    try:
        data = json.loads((out / "rate_accuracy.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read rate-accuracy results in {out}: {exc}") from exc
    md = out / "rate_accuracy.md"
    md.write_text(markdown(data))
    return [md, plot(data, out)]
