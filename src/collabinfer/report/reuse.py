"""The reuse experiment as files: ``reuse.json`` -> ``reuse.md`` and three plots.

Why "hit rate at equal precision": a cache's hit rate alone means nothing, since
a looser rule hits more and answers wrongly more often. Every cache here,
ours and the baselines, had its rule fitted on validation streams for the
same precision target, so the report compares hit rates at that precision and
prints the test precision beside each, for whoever doubts the fit carried over.

What the plots show: hit precision against hit rate (one point per workload x
key, and the baselines; top-right is best, the dashed line is the target);
the latency CDF with and without the cache on the video workload (the cache
only saves the edge's tail, so expect the curves to move by milliseconds, not
by the link's tens); the miss overhead (lookup + insert) against the cache's
size, exact and IVF, beside the tail time a hit saves.

Reads result files only, through :class:`~collabinfer.experiments.reuse_schema.ReuseResult`
(``collabinfer report DIR`` re-renders).

    >>> render_reuse(Path("results/reuse"))  # doctest: +SKIP
    [PosixPath('results/reuse/reuse.md'), PosixPath('results/reuse/reuse_precision.png'), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collabinfer.experiments.reuse_schema import (
    FILE,
    BaselinePoint,
    ReusePoint,
    ReuseResult,
)
from collabinfer.report.common import (
    DASH,
    fixed,
    log_axis,
    markdown_table,
    pct,
    pyplot,
    save_figure,
)

__all__ = [
    "KEY_STYLE",
    "WORKLOAD_COLOUR",
    "equal_precision",
    "markdown",
    "plot_latency_cdf",
    "plot_miss_overhead",
    "plot_precision",
    "render_reuse",
    "write_reuse",
]

KEY_STYLE = {"features": "o", "projection": "s", "latent": "^"}  # marker per key
BASELINE_STYLE = {  # (method, fitted) -> marker, label
    ("pixel-lsh", True): ("X", "pixel LSH + SSIM (fitted)"),
    ("pixel-lsh", False): ("P", "pixel LSH + SSIM 0.6 (Reservoir)"),
    ("decoupled", True): ("D", "decoupled extractor"),
}
WORKLOAD_COLOUR = {"video": "tab:blue", "multi-client": "tab:orange", "iid": "tab:grey"}


def _workloads(res: ReuseResult) -> list[str]:
    """The workloads in the order the run wrote them."""
    return list(dict.fromkeys(p.workload for p in res.points))


def _rule(p: ReusePoint) -> str:
    if p.rule_tau <= 0:
        return "off"
    floor = f", conf>={p.rule_min_confidence:g}" if p.rule_min_confidence > 0 else ""
    return f"k={p.rule_k}, tau={p.rule_tau:.4g}{floor}"


def _arrow(before: float, after: float, spec: str = ".2f") -> str:
    return f"{before:{spec}} → {after:{spec}}"


def _baseline_name(b: BaselinePoint) -> str:
    return BASELINE_STYLE.get((b.method, b.fitted), ("", b.method))[1]


# ---------------------------------------------------------------- markdown


def equal_precision(res: ReuseResult, workload: str) -> str | None:
    """One sentence: our best key's hit rate on ``workload`` beside each fitted baseline's,
    all at the validation precision target (test precision in brackets)."""
    ours = [p for p in res.points if p.workload == workload]
    if not ours:
        return None
    best = max(ours, key=lambda p: p.hit_rate)
    target = res.conditions.precision_target
    parts = [
        f"{b.method} {pct(b.hit_rate, 1)} ({pct(b.hit_precision_model, 1)})"
        if b.val_hit_rate
        else f"{b.method}: no rule reached the target on validation"
        for b in res.baselines
        if b.workload == workload and b.fitted
    ]
    text = (
        f"**{workload}**: at the {pct(target, 0)} precision target, our best key "
        f"({best.key}) hits {pct(best.hit_rate, 1)} of requests (test precision "
        f"{pct(best.hit_precision_model, 1)} against the model, "
        f"{pct(best.hit_precision_label, 1)} against the label)"
    )
    if parts:
        text += "; " + "; ".join(parts)
    saved = best.edge_cpu_ms_per_input_no_cache - best.edge_cpu_ms_per_input
    text += (
        f". With it the edge's CPU per input goes "
        f"{_arrow(best.edge_cpu_ms_per_input_no_cache, best.edge_cpu_ms_per_input)} ms "
        f"(the cache {'saves' if saved >= 0 else 'costs'} {abs(saved):.2f} ms), mean latency "
        f"{_arrow(best.latency_mean_ms_no_cache, best.latency_mean_ms, '.1f')} ms."
    )
    return text


def _edge_summary(points: Sequence[ReusePoint]) -> str:
    """How often the cache paid for itself in edge CPU, and the hit rate it took."""
    paid = [p for p in points if p.edge_cpu_ms_per_input < p.edge_cpu_ms_per_input_no_cache]
    text = (
        f"The cache lowered the edge's CPU per input in {len(paid)} of {len(points)} "
        "workload x key runs"
    )
    if paid:
        text += f" (hit rates {pct(min(p.hit_rate for p in paid), 1)} and up)"
    return (
        text + "; a miss pays the key, the lookup and the insert, a hit saves only the edge's tail."
    )


POINT_HEADER = (
    "workload",
    "key",
    "hit rate",
    "precision (model)",
    "precision (label)",
    "accuracy (no cache → cache)",
    "mean latency ms",
    "p95 latency ms",
    "edge CPU ms/input",
    "opportunities harnessed",
    "key bytes",
    "lookup ms",
    "rule (validation hit rate)",
)
BASELINE_HEADER = (
    "baseline",
    "setting",
    "workload",
    "hit rate",
    "precision (model)",
    "precision (label)",
    "accuracy",
    "opportunities harnessed",
    "key bytes",
    "key ms",
    "lookup ms",
    "needs the image",
)
OVERHEAD_HEADER = (
    "index",
    "IVF from (keys)",
    "entries",
    "lookup + insert ms (median)",
    "p95",
    "lookup ms",
    "insert ms",
    "tail ms (a hit saves)",
    "overhead / tail",
    "fill s",
)


def _point_cells(p: ReusePoint) -> list[object]:
    return [
        p.workload,
        p.key,
        pct(p.hit_rate, 1),
        pct(p.hit_precision_model, 1),
        pct(p.hit_precision_label, 1),
        f"{pct(p.accuracy_no_cache)} → {pct(p.accuracy)}",
        _arrow(p.latency_mean_ms_no_cache, p.latency_mean_ms, ".1f"),
        _arrow(p.latency_p95_ms_no_cache, p.latency_p95_ms, ".1f"),
        _arrow(p.edge_cpu_ms_per_input_no_cache, p.edge_cpu_ms_per_input),
        pct(p.opportunities_harnessed, 1),
        f"{p.key_bytes:,}",
        fixed(p.lookup_ms, ".3f"),
        f"{_rule(p)} ({pct(p.val_hit_rate, 1)})",
    ]


def _baseline_cells(b: BaselinePoint) -> list[object]:
    return [
        _baseline_name(b),
        b.setting,
        b.workload,
        pct(b.hit_rate, 1),
        pct(b.hit_precision_model, 1),
        pct(b.hit_precision_label, 1),
        pct(b.accuracy),
        pct(b.opportunities_harnessed, 1),
        f"{b.key_bytes:,}",
        fixed(b.key_ms, ".3f"),
        fixed(b.lookup_ms, ".3f"),
        "yes" if b.raw_pixels_at_cache else "no",
    ]


def markdown(res: ReuseResult) -> str:
    c = res.conditions
    lines = [
        "# Computational reuse: the edge's semantic cache",
        "",
        f"{c.model} split at the edge (keys `features`, `projection`), and {c.latent_model} "
        f"(key `latent`). Tiers: {c.tiers}. Link: {c.link}. Every rule was fitted for "
        f"{pct(c.precision_target, 0)} hit precision against the model's own answer on "
        "validation streams." + (" **Quick run** (not the full protocol)." if c.quick else ""),
        "",
        "## Hit rate at equal precision",
        "",
    ]
    for w in _workloads(res):
        sentence = equal_precision(res, w)
        if sentence:
            lines += [f"* {sentence}"]
    lines += ["", _edge_summary(res.points)]
    lines += [
        "",
        "## Per workload and key (same test stream, with and without the cache)",
        "",
        *markdown_table(POINT_HEADER, (_point_cells(p) for p in res.points)),
    ]
    if res.baselines:
        lines += [
            "",
            "## Baselines (replayed offline on the same test streams)",
            "",
            *markdown_table(BASELINE_HEADER, (_baseline_cells(b) for b in res.baselines)),
        ]
    if res.miss_overhead:
        rows = [
            [
                m.index,
                DASH if m.ann_above is None else f"{m.ann_above:,}",
                f"{m.entries:,}",
                f"{m.lookup_insert_ms:.3f}",
                f"{m.lookup_insert_p95_ms:.3f}",
                f"{m.lookup_ms:.3f}",
                f"{m.insert_ms:.3f}",
                f"{m.tail_ms:.3f}",
                f"{m.lookup_insert_ms / m.tail_ms:.2f}" if m.tail_ms > 0 else DASH,
                f"{m.fill_s:.1f}",
            ]
            for m in res.miss_overhead
        ]
        dim = res.miss_overhead[0].key_dim
        lines += [
            "",
            "## Miss overhead vs cache size",
            "",
            f"{res.miss_overhead[0].pairs} lookup + insert pairs of fresh test keys "
            f"({dim}-dim features keys) per size; entries is the mean size over them. An IVF "
            "cache starts exact and moves to IVF (trained on the keys it holds then) once it "
            "holds more than the keys shown.",
            "",
            *markdown_table(OVERHEAD_HEADER, rows),
        ]
    lines += [
        "",
        "## How to read",
        "",
        f"Validation: {c.validation}. Test streams: {c.test_streams}. "
        f"Baselines' extractor: {c.extractor}. Measured on {c.measured_on}; "
        f"the run took {c.seconds:.0f} s.",
        "",
        *(f"* {n}" for n in c.notes),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def plot_precision(res: ReuseResult, out: Path) -> Path:
    """Hit precision (against the model) vs hit rate: ours per workload x key, baselines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for p in res.points:
        if p.hit_precision_model is None:
            continue
        ax.scatter(
            100 * p.hit_rate,
            100 * p.hit_precision_model,
            marker=KEY_STYLE.get(p.key, "o"),
            color=WORKLOAD_COLOUR.get(p.workload, "k"),
            s=50,
            zorder=3,
        )
    for b in res.baselines:
        if b.hit_precision_model is None:
            continue
        marker = BASELINE_STYLE.get((b.method, b.fitted), ("x", ""))[0]
        ax.scatter(
            100 * b.hit_rate,
            100 * b.hit_precision_model,
            marker=marker,
            color=WORKLOAD_COLOUR.get(b.workload, "k"),
            edgecolors="k",
            linewidths=0.6,
            s=45,
            alpha=0.75,
        )
    target = 100 * res.conditions.precision_target
    ax.axhline(target, color="k", lw=0.8, ls="--")
    # legends: colour = workload, marker = key or baseline
    handles = [
        ax.scatter([], [], marker="s", color=col, label=w)
        for w, col in WORKLOAD_COLOUR.items()
        if any(p.workload == w for p in res.points)
    ]
    handles += [
        ax.scatter([], [], marker=m, color="k", label=f"ours: {k}")
        for k, m in KEY_STYLE.items()
        if any(p.key == k for p in res.points)
    ]
    handles += [
        ax.scatter([], [], marker=m, color="k", label=label)
        for (method, fitted), (m, label) in BASELINE_STYLE.items()
        if any((b.method, b.fitted) == (method, fitted) for b in res.baselines)
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.set_xlabel("hit rate (% of requests)")
    ax.set_ylabel("hit precision vs the model's answer (%)")
    ax.set_title(f"precision vs hit rate (dashed: the {target:g}% target; top-right is best)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, out / "reuse_precision.png")


def _cdf(ax: Any, values: Sequence[float], **kw: Any) -> None:
    v = np.sort(np.asarray(values))
    ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", **kw)


def plot_latency_cdf(res: ReuseResult, out: Path) -> Path | None:
    """Per-request latency CDF with and without the cache (the latency workload)."""
    if not res.latencies:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for s in res.latencies:
        label = f"{s.model}, no cache" if s.key is None else f"{s.model}, cache ({s.key})"
        ls = "--" if s.key is None else "-"
        _cdf(ax, s.latency_ms, ls=ls, lw=1.2, label=label)
    ax.set_xlabel("latency (ms, virtual clock)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"latency CDF, {res.latencies[0].workload} workload")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "reuse_latency_cdf.png")


def plot_miss_overhead(res: ReuseResult, out: Path) -> Path | None:
    """Median lookup + insert vs entries (log-log), exact and IVF, beside the tail."""
    if not res.miss_overhead:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, marker in (("exact", "o"), ("ivf", "s")):
        rows = sorted((m for m in res.miss_overhead if m.index == index), key=lambda m: m.entries)
        if rows:
            ax.plot(
                [m.entries for m in rows],
                [m.lookup_insert_ms for m in rows],
                marker=marker,
                label=f"{index}: lookup + insert (median)",
            )
    tail = float(np.median([m.tail_ms for m in res.miss_overhead]))
    ax.axhline(tail, color="k", ls="--", lw=0.8, label=f"edge tail at batch 1 ({tail:.2f} ms)")
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("entries in the cache")
    ax.set_ylabel("ms per miss")
    ax.set_title("what a miss costs vs what a hit saves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out / "reuse_miss_overhead.png")


# ---------------------------------------------------------------- files


def write_reuse(result: ReuseResult, out: Path) -> list[Path]:
    """Save ``result`` (``reuse.json``, checked before it is written) and render it."""
    out.mkdir(parents=True, exist_ok=True)
    return [*result.save(out), *render_reuse(out)]


def render_reuse(out: Path) -> list[Path]:
    """``reuse.md`` and the plots from ``out/reuse.json`` alone."""
    res = ReuseResult.load(out)
    md = out / FILE.replace(".json", ".md")
    md.write_text(markdown(res))
    plots = [plot_precision(res, out), plot_latency_cdf(res, out), plot_miss_overhead(res, out)]
    return [md, *(p for p in plots if p is not None)]
