"""Dynamic inference as files: ``dynamic.json`` -> ``dynamic.md`` + plots.

Renders what ``collabinfer experiment dynamic`` measured (early exits and gated
blocks on a ResNet). Reads result files only, through
:class:`~collabinfer.experiments.dynamic_schema.DynamicResult`;
``collabinfer report DIR`` re-renders.

    >>> from pathlib import Path
    >>> render_dynamic(Path("results/dynamic"))  # doctest: +SKIP
    [PosixPath('results/dynamic/dynamic.md'), PosixPath('results/dynamic/dynamic_flops.png'), ...]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from collabinfer.experiments.dynamic_schema import DynamicConditions, DynamicPoint, DynamicResult
from collabinfer.report.common import fixed, markdown_table, pct, pyplot, save_figure

__all__ = [
    "METHOD_STYLE",
    "markdown",
    "plot_exits",
    "plot_flops",
    "plot_latency",
    "plot_reliability",
    "render_dynamic",
    "write_dynamic",
]

# marker and colour per method; a method not listed here still renders (grey cycle)
METHOD_STYLE = {
    "static backbone": ("*", "black"),
    "entropy exits": ("o", "tab:blue"),
    "calibrated exits": ("s", "tab:orange"),
    "calibrated exits (joint)": ("D", "tab:red"),
    "gates": ("^", "tab:green"),
    "gates + exits": ("v", "tab:purple"),
    "gates + path-aware exits": ("P", "tab:brown"),
}
_FALLBACK_MARKERS = ("X", "h", "<", ">", "p")


# ---------------------------------------------------------------- markdown


def _conditions(c: DynamicConditions) -> list[str]:
    parts = [
        f"{c.num_inputs} test inputs",
        f"backbone {c.backbone} ({c.backbone_mflops:.2f} MFLOPs per input)",
        f"{c.threads} thread(s)",
        f"measured on {c.measured_on}",
    ]
    if c.quick:
        parts.append("**quick run** (not the full protocol)")
    return [
        "Conditions: " + ", ".join(parts) + f"; the run took {c.seconds:.0f} s.",
        f"Latency: {c.latency}.",
        f"Tuned on: {c.tuned_on}.",
    ]


def _points_table(res: DynamicResult) -> list[str]:
    with_val = any(p.val_accuracy is not None for p in res.points)
    with_mean = any(p.latency_mean_ms is not None for p in res.points)
    head = ["method", "setting", "accuracy"] + (["val accuracy"] if with_val else [])
    head += ["MFLOPs/input", "p50 ms", "p95 ms"] + (["mean ms"] if with_mean else [])
    head += ["throughput@32 (/s)", "speed-up measured", "speed-up FLOPs", "measured / FLOPs"]
    rows = []
    for p in res.points:
        ratio = (
            p.speedup_measured / p.speedup_flops
            if p.speedup_measured is not None and p.speedup_flops
            else None
        )
        row = [p.method, p.setting, pct(p.accuracy)]
        row += [pct(p.val_accuracy)] if with_val else []
        row += [fixed(p.mflops_per_input), fixed(p.latency_p50_ms), fixed(p.latency_p95_ms)]
        row += [fixed(p.latency_mean_ms)] if with_mean else []
        row += [
            fixed(p.throughput_b32, ",.0f"),
            fixed(p.speedup_measured, ".2f", "×"),
            fixed(p.speedup_flops, ".2f", "×"),
            fixed(ratio),
        ]
        rows.append(row)
    return markdown_table(head, rows)


def _targets_table(res: DynamicResult) -> list[str]:
    return markdown_table(
        ["target", "wanted", "reached", "met"],
        ([t.name, t.target, t.reached, "✔" if t.met else "✘"] for t in res.summary.targets),
    )


def _exits_table(res: DynamicResult) -> list[str]:
    return markdown_table(
        ["method", "exit", "cut", "temperature", "head accuracy", "ECE before", "ECE after"],
        (
            [
                e.method,
                e.name,
                e.cut,
                f"{e.temperature:.2f}",
                pct(e.head_accuracy),
                pct(e.ece_before),
                pct(e.ece_after),
            ]
            for e in res.exits
        ),
    )


def _distribution_table(pts: list[DynamicPoint]) -> list[str]:
    rows = []
    for p in pts:
        fractions = p.exit_fractions or ()
        accs = p.exit_accuracy or (None,) * len(fractions)
        dist = " · ".join(
            f"{n} {f:.1%}" + (f" ({a:.1%})" if a is not None else "")
            for n, f, a in zip(p.exit_labels(), fractions, accs, strict=True)
        )
        rows.append([p.method, p.setting, dist, fixed(p.wasted_mflops_per_input)])
    return markdown_table(
        [
            "method",
            "setting",
            "leaves at (fraction of inputs; accuracy of those)",
            "wasted MFLOPs/input",
        ],
        rows,
    )


def _gates_table(res: DynamicResult) -> list[str]:
    blocks = list(dict.fromkeys(g.block for g in res.gates))
    rates: dict[tuple[str, str], dict[str, float]] = {}
    for g in res.gates:
        rates.setdefault((g.method, g.setting), {})[g.block] = g.exec_rate
    return markdown_table(
        ["method", "setting", *blocks],
        ([m, s, *(pct(r.get(b)) for b in blocks)] for (m, s), r in rates.items()),
    )


def markdown(res: DynamicResult) -> str:
    """The report as markdown."""
    lines = [
        "# Dynamic inference: early exits and gated blocks",
        "",
        *_conditions(res.conditions),
        "",
        "Accuracy on the test inputs; MFLOPs counted on the path each input really took; "
        "latency per input at batch 1; speed-ups against the static backbone (measured: mean "
        "batch-1 latency; FLOPs: mean FLOPs per input).",
        "",
        "## Accuracy vs compute",
        "",
        *_points_table(res),
    ]
    if res.summary.targets:
        lines += ["", "## Targets", "", *_targets_table(res)]
    if res.exits:
        lines += ["", "## Exit calibration", "", *_exits_table(res)]
    with_exits = [p for p in res.points if p.exit_fractions]
    if with_exits:
        lines += ["", "## Where inputs leave", "", *_distribution_table(with_exits)]
    if res.gates:
        lines += ["", "## Gate execution rate per block", "", *_gates_table(res)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def _styles(res: DynamicResult) -> dict[str, tuple[str, str]]:
    styles: dict[str, tuple[str, str]] = {}
    extra = 0
    for p in res.points:
        if p.method not in styles:
            if p.method in METHOD_STYLE:
                styles[p.method] = METHOD_STYLE[p.method]
            else:
                styles[p.method] = (_FALLBACK_MARKERS[extra % len(_FALLBACK_MARKERS)], "grey")
                extra += 1
    return styles


def _by_method(res: DynamicResult, x: str) -> dict[str, list[DynamicPoint]]:
    groups: dict[str, list[DynamicPoint]] = {}
    for p in res.points:
        groups.setdefault(p.method, []).append(p)
    return {m: sorted(ps, key=lambda p: getattr(p, x)) for m, ps in groups.items()}


def _static_line(ax: Any, res: DynamicResult) -> None:
    static = [p for p in res.points if p.method == "static backbone"]
    if static:
        acc = 100 * max(p.accuracy for p in static)
        ax.axhline(acc, color="k", lw=0.6, ls=":", label="static backbone accuracy")


def plot_flops(res: DynamicResult, out: Path) -> Path:
    plt = pyplot()
    styles = _styles(res)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for method, pts in _by_method(res, "mflops_per_input").items():
        marker, colour = styles[method]
        ax.plot(
            [p.mflops_per_input for p in pts],
            [100 * p.accuracy for p in pts],
            marker=marker,
            color=colour,
            label=method,
            lw=1,
            ms=6,
        )
    _static_line(ax, res)
    ax.set_xlabel("MFLOPs per input (path actually run)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs compute, {res.conditions.backbone}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "dynamic_flops.png")


def plot_latency(res: DynamicResult, out: Path) -> Path:
    plt = pyplot()
    styles = _styles(res)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for method, pts in _by_method(res, "latency_p50_ms").items():
        marker, colour = styles[method]
        ax.errorbar(
            [p.latency_p50_ms for p in pts],
            [100 * p.accuracy for p in pts],
            xerr=[[0.0] * len(pts), [max(0.0, p.latency_p95_ms - p.latency_p50_ms) for p in pts]],
            marker=marker,
            color=colour,
            label=method,
            lw=1,
            ms=6,
            capsize=3,
        )
    _static_line(ax, res)
    ax.set_xlabel("latency per input, batch 1 (ms): marker p50, bar to p95")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs measured latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "dynamic_latency.png")


def plot_exits(res: DynamicResult, out: Path) -> Path | None:
    pts = [p for p in res.points if p.exit_fractions]
    if not pts:
        return None
    plt = pyplot()
    names = list(dict.fromkeys(n for p in pts for n in p.exit_labels()))
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(names) - 1)) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(pts) + 2), 4.6))
    seen: set[str] = set()
    for i, p in enumerate(pts):
        bottom = 0.0
        for n, f in zip(p.exit_labels(), p.exit_fractions or (), strict=True):
            ax.bar(
                i,
                100 * f,
                bottom=bottom,
                color=colour[n],
                edgecolor="white",
                label=None if n in seen else n,
            )
            seen.add(n)
            bottom += 100 * f
    ax.set_xticks(range(len(pts)))
    ax.set_xticklabels([f"{p.method}\n{p.setting}" for p in pts], fontsize=7, rotation=30)
    ax.set_ylabel("inputs leaving at each exit (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Where inputs leave")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, out / "dynamic_exits.png")


def plot_reliability(res: DynamicResult, out: Path) -> Path | None:
    exits = [e for e in res.exits if e.reliability_before or e.reliability_after]
    if not exits:
        return None
    plt = pyplot()
    cols = min(4, len(exits))
    rows = math.ceil(len(exits) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, e in zip(axes.flat, exits, strict=False):
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect")
        for bins, label, style in (
            (e.reliability_before, f"before (ECE {e.ece_before:.1%})", "o-"),
            (e.reliability_after, f"after T={e.temperature:.2f} (ECE {e.ece_after:.1%})", "s-"),
        ):
            used = [b for b in bins if b.count > 0]
            if used:
                ax.plot(
                    [b.confidence for b in used],
                    [b.accuracy for b in used],
                    style,
                    ms=4,
                    lw=1,
                    label=label,
                )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{e.method}: {e.name}", fontsize=8)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(exits) :]:
        ax.set_visible(False)
    return save_figure(fig, out / "dynamic_reliability.png")


# ---------------------------------------------------------------- files


def write_dynamic(result: DynamicResult, out: Path) -> list[Path]:
    """Save ``result`` (``dynamic.json``, checked before it is written) and render it."""
    return [*result.save(out), *render_dynamic(out)]


def render_dynamic(out: Path) -> list[Path]:
    """``dynamic.md`` and the plots from ``out/dynamic.json`` alone."""
    res = DynamicResult.load(out)
    md = out / "dynamic.md"
    md.write_text(markdown(res))
    plots = [plot_flops(res, out), plot_latency(res, out)]
    plots += [p for p in (plot_exits(res, out), plot_reliability(res, out)) if p is not None]
    return [md, *plots]
