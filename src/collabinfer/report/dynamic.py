"""Dynamic inference as files: ``dynamic.json`` -> ``dynamic.md`` + plots.

Renders what ``collabinfer experiment dynamic`` measured (early exits and gated
blocks on a ResNet). Reads result files only; ``collabinfer report DIR`` re-renders.

    >>> from pathlib import Path
    >>> render_dynamic(Path("results/dynamic"))  # doctest: +SKIP
    [PosixPath('results/dynamic/dynamic.md'), PosixPath('results/dynamic/dynamic_flops.png'), ...]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collabinfer.errors import ConfigError

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
DASH = "—"


@dataclass(frozen=True)
class Point:
    """One (method, setting) measurement; optional fields are None when not written."""

    method: str
    setting: str
    accuracy: float
    mflops_per_input: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_mean_ms: float | None = None
    throughput_b32: float | None = None
    val_accuracy: float | None = None
    exit_fractions: tuple[float, ...] | None = None
    exit_accuracy: tuple[float | None, ...] | None = None  # accuracy of those leaving there
    exit_names: tuple[str, ...] | None = None
    speedup_flops: float | None = None
    speedup_measured: float | None = None
    wasted_mflops_per_input: float | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.setting}".strip()

    def names(self) -> tuple[str, ...]:
        """Exit names, invented as ``exit 1..n-1, final`` when the file has none."""
        n = len(self.exit_fractions or ())
        if self.exit_names and len(self.exit_names) == n:
            return self.exit_names
        return (*(f"exit {i + 1}" for i in range(n - 1)), "final") if n else ()


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    count: int
    confidence: float
    accuracy: float


@dataclass(frozen=True)
class ExitCalibration:
    method: str
    name: str
    cut: int | None
    temperature: float
    head_accuracy: float
    ece_before: float
    ece_after: float
    reliability_before: tuple[Bin, ...] = ()
    reliability_after: tuple[Bin, ...] = ()


@dataclass(frozen=True)
class GateRate:
    method: str
    setting: str
    block: str
    exec_rate: float


@dataclass(frozen=True)
class Target:
    name: str
    met: bool
    target: str = ""
    reached: str = ""


@dataclass(frozen=True)
class DynamicResult:
    conditions: dict[str, Any]
    points: tuple[Point, ...]
    exits: tuple[ExitCalibration, ...] = ()
    gates: tuple[GateRate, ...] = ()
    targets: tuple[Target, ...] = ()


# ---------------------------------------------------------------- reading the file


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"dynamic results: {where} must be an object, got {type(d).__name__}")
    if key not in d:
        raise ConfigError(f"dynamic results: {where} has no key {key!r}")
    return d[key]


def _req(d: Any, key: str, where: str) -> float:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"dynamic results: {where}.{key} must be a number, got {v!r}")
    return float(v)


def _opt(d: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if d.get(key) is None else _req(d, key, where)


def _list(d: Any, key: str, where: str, optional: bool = True) -> list[Any]:
    if optional and (not isinstance(d, Mapping) or d.get(key) is None):
        return []
    v = _get(d, key, where)
    if not isinstance(v, list):
        raise ConfigError(f"dynamic results: {where}.{key} must be a list, got {v!r}")
    return v


def _point(d: Any, where: str) -> Point:
    fr = _list(d, "exit_fractions", where)
    names = _list(d, "exit_names", where)
    accs = _list(d, "exit_accuracy", where)
    if accs and len(accs) != len(fr):
        raise ConfigError(f"dynamic results: {where}.exit_accuracy must match exit_fractions")
    for i, a in enumerate(accs):
        if a is not None and (isinstance(a, bool) or not isinstance(a, int | float)):
            raise ConfigError(f"dynamic results: {where}.exit_accuracy[{i}] is not a number")
    for i, f in enumerate(fr):
        if isinstance(f, bool) or not isinstance(f, int | float):
            raise ConfigError(f"dynamic results: {where}.exit_fractions[{i}] is not a number")
    return Point(
        method=str(_get(d, "method", where)),
        setting=str(_get(d, "setting", where)),
        accuracy=_req(d, "accuracy", where),
        mflops_per_input=_req(d, "mflops_per_input", where),
        latency_p50_ms=_req(d, "latency_p50_ms", where),
        latency_p95_ms=_req(d, "latency_p95_ms", where),
        latency_mean_ms=_opt(d, "latency_mean_ms", where),
        throughput_b32=_opt(d, "throughput_b32", where),
        val_accuracy=_opt(d, "val_accuracy", where),
        exit_fractions=tuple(float(f) for f in fr) or None,
        exit_accuracy=tuple(None if a is None else float(a) for a in accs) or None,
        exit_names=tuple(str(n) for n in names) or None,
        speedup_flops=_opt(d, "speedup_flops", where),
        speedup_measured=_opt(d, "speedup_measured", where),
        wasted_mflops_per_input=_opt(d, "wasted_mflops_per_input", where),
    )


def _bins(d: Any, key: str, where: str) -> tuple[Bin, ...]:
    out = []
    for i, b in enumerate(_list(d, key, where)):
        w = f"{where}.{key}[{i}]"
        out.append(
            Bin(
                _req(b, "lo", w),
                _req(b, "hi", w),
                int(_req(b, "count", w)),
                _req(b, "confidence", w),
                _req(b, "accuracy", w),
            )
        )
    return tuple(out)


def _exit(d: Any, where: str) -> ExitCalibration:
    method = str(_get(d, "method", where))  # also checks that d is an object
    cut = _opt(d, "cut", where)
    return ExitCalibration(
        method=method,
        name=str(_get(d, "name", where)),
        cut=None if cut is None else int(cut),
        temperature=_req(d, "temperature", where),
        head_accuracy=_req(d, "head_accuracy", where),
        ece_before=_req(d, "ece_before", where),
        ece_after=_req(d, "ece_after", where),
        reliability_before=_bins(d, "reliability_before", where),
        reliability_after=_bins(d, "reliability_after", where),
    )


def _gate(d: Any, where: str) -> GateRate:
    return GateRate(
        method=str(_get(d, "method", where)),
        setting=str(_get(d, "setting", where)),
        block=str(_get(d, "block", where)),
        exec_rate=_req(d, "exec_rate", where),
    )


def _target(d: Any, where: str) -> Target:
    return Target(
        name=str(_get(d, "name", where)),
        met=bool(_get(d, "met", where)),
        target=str(d.get("target", "")),
        reached=str(d.get("reached", "")),
    )


def parse(data: Any) -> DynamicResult:
    """Check ``data`` against the schema; a missing or mistyped key is a ConfigError."""
    conditions = _get(data, "conditions", "the file")
    if not isinstance(conditions, Mapping):
        raise ConfigError("dynamic results: 'conditions' must be an object")
    points = _list(data, "points", "the file", optional=False)
    if not points:
        raise ConfigError("dynamic results: 'points' is empty")
    exits = _list(data, "exits", "the file")
    gates = _list(data, "gates", "the file")
    summary = data.get("summary") or {}
    return DynamicResult(
        conditions=dict(conditions),
        points=tuple(_point(p, f"points[{i}]") for i, p in enumerate(points)),
        exits=tuple(_exit(e, f"exits[{i}]") for i, e in enumerate(exits)),
        gates=tuple(_gate(g, f"gates[{i}]") for i, g in enumerate(gates)),
        targets=tuple(
            _target(t, f"summary.targets[{i}]")
            for i, t in enumerate(_list(summary, "targets", "summary"))
        ),
    )


# ---------------------------------------------------------------- markdown


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{v:.2%}"


def _fixed(v: float | None, fmt: str = ".2f", unit: str = "") -> str:
    return DASH if v is None else f"{v:{fmt}}{unit}"


def _conditions(c: dict[str, Any]) -> list[str]:
    known = ("num_inputs", "backbone", "threads", "measured_on", "quick")
    parts = [f"{c.get('num_inputs', '?')} test inputs", f"backbone {c.get('backbone', '?')}"]
    if "threads" in c:
        parts.append(f"{c['threads']} thread(s)")
    if "measured_on" in c:
        parts.append(f"measured on {c['measured_on']}")
    if c.get("quick"):
        parts.append("**quick run** (not the full protocol)")
    lines = ["Conditions: " + ", ".join(str(p) for p in parts) + "."]
    rest = []
    for k, v in c.items():
        if k in known or k in ("config", "train_metrics"):  # in dynamic.json; too long here
            continue
        if k in ("latency", "tuned_on") and isinstance(v, str):
            lines.append(f"{k.replace('_', ' ').capitalize()}: {v}.")
            continue
        text = v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)
        text = str(text)
        rest.append(f"{k}={text if len(text) <= 60 else text[:57] + '...'}")
    if rest:
        lines += ["", "Other conditions: " + ", ".join(f"`{r}`" for r in rest) + "."]
    return lines


def _points_table(res: DynamicResult) -> list[str]:
    with_val = any(p.val_accuracy is not None for p in res.points)
    head = ["method", "setting", "accuracy"] + (["val accuracy"] if with_val else [])
    with_mean = any(p.latency_mean_ms is not None for p in res.points)
    head += ["MFLOPs/input", "p50 ms", "p95 ms"] + (["mean ms"] if with_mean else [])
    head += ["throughput@32 (/s)", "speed-up measured", "speed-up FLOPs", "measured / FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in res.points:
        ratio = (
            p.speedup_measured / p.speedup_flops
            if p.speedup_measured is not None and p.speedup_flops
            else None
        )
        row = [_cell(p.method), _cell(p.setting), _pct(p.accuracy)]
        row += [_pct(p.val_accuracy)] if with_val else []
        row += [
            _fixed(p.mflops_per_input),
            _fixed(p.latency_p50_ms),
            _fixed(p.latency_p95_ms),
            *([_fixed(p.latency_mean_ms)] if with_mean else []),
            _fixed(p.throughput_b32, ",.0f"),
            _fixed(p.speedup_measured, ".2f", "×"),
            _fixed(p.speedup_flops, ".2f", "×"),
            _fixed(ratio),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _targets_table(res: DynamicResult) -> list[str]:
    lines = ["| target | wanted | reached | met |", "|---|---|---|---|"]
    for t in res.targets:
        mark = "✔" if t.met else "✘"
        lines.append(f"| {_cell(t.name)} | {_cell(t.target)} | {_cell(t.reached)} | {mark} |")
    return lines


def _exits_table(res: DynamicResult) -> list[str]:
    lines = [
        "| method | exit | cut | temperature | head accuracy | ECE before | ECE after |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in res.exits:
        cut = DASH if e.cut is None else str(e.cut)
        lines.append(
            f"| {_cell(e.method)} | {_cell(e.name)} | {cut} | {e.temperature:.2f} | "
            f"{_pct(e.head_accuracy)} | {_pct(e.ece_before)} | {_pct(e.ece_after)} |"
        )
    return lines


def _distribution_table(pts: list[Point]) -> list[str]:
    lines = [
        "| method | setting | leaves at (fraction of inputs; accuracy of those) "
        "| wasted MFLOPs/input |",
        "|---|---|---|---|",
    ]
    for p in pts:
        accs = p.exit_accuracy or (None,) * len(p.exit_fractions or ())
        dist = " · ".join(
            f"{n} {f:.1%}" + (f" ({a:.1%})" if a is not None else "")
            for n, f, a in zip(p.names(), p.exit_fractions or (), accs, strict=True)
        )
        lines.append(
            f"| {_cell(p.method)} | {_cell(p.setting)} | {_cell(dist)} | "
            f"{_fixed(p.wasted_mflops_per_input)} |"
        )
    return lines


def _gates_table(res: DynamicResult) -> list[str]:
    blocks = list(dict.fromkeys(g.block for g in res.gates))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for g in res.gates:
        rows.setdefault((g.method, g.setting), {})[g.block] = g.exec_rate
    lines = [
        "| method | setting | " + " | ".join(_cell(b) for b in blocks) + " |",
        "|---|---|" + "---|" * len(blocks),
    ]
    for (method, setting), rates in rows.items():
        cells = [_pct(rates.get(b)) for b in blocks]
        lines.append(f"| {_cell(method)} | {_cell(setting)} | " + " | ".join(cells) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The report as markdown; raises ConfigError when ``data`` breaks the schema."""
    return _markdown(parse(data))


def _markdown(res: DynamicResult) -> str:
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
    if res.targets:
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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ConfigError("plots need matplotlib: pip install matplotlib") from exc
    return plt


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


def _by_method(res: DynamicResult, x: str) -> dict[str, list[Point]]:
    groups: dict[str, list[Point]] = {}
    for p in res.points:
        groups.setdefault(p.method, []).append(p)
    return {m: sorted(ps, key=lambda p: getattr(p, x)) for m, ps in groups.items()}


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _static_line(ax: Any, res: DynamicResult) -> None:
    static = [p for p in res.points if p.method == "static backbone"]
    if static:
        acc = 100 * max(p.accuracy for p in static)
        ax.axhline(acc, color="k", lw=0.6, ls=":", label="static backbone accuracy")


def plot_flops(res: DynamicResult, out: Path) -> Path:
    plt = _pyplot()
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
    ax.set_title(f"Accuracy vs compute, {res.conditions.get('backbone', '')}".rstrip(", "))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, out / "dynamic_flops.png")


def plot_latency(res: DynamicResult, out: Path) -> Path:
    plt = _pyplot()
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
    return _save(plt, fig, out / "dynamic_latency.png")


def plot_exits(res: DynamicResult, out: Path) -> Path | None:
    pts = [p for p in res.points if p.exit_fractions]
    if not pts:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(n for p in pts for n in p.names()))
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(names) - 1)) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(pts) + 2), 4.6))
    seen: set[str] = set()
    for i, p in enumerate(pts):
        bottom = 0.0
        for n, f in zip(p.names(), p.exit_fractions or (), strict=True):
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
    return _save(plt, fig, out / "dynamic_exits.png")


def plot_reliability(res: DynamicResult, out: Path) -> Path | None:
    exits = [e for e in res.exits if e.reliability_before or e.reliability_after]
    if not exits:
        return None
    plt = _pyplot()
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
    return _save(plt, fig, out / "dynamic_reliability.png")


# ---------------------------------------------------------------- files


def _render(data: dict[str, Any], out: Path) -> list[Path]:
    res = parse(data)
    md = out / "dynamic.md"
    md.write_text(_markdown(res))
    plots = [plot_flops(res, out), plot_latency(res, out)]
    plots += [p for p in (plot_exits(res, out), plot_reliability(res, out)) if p is not None]
    return [md, *plots]


def write_dynamic(result_dict: dict[str, Any], out: Path) -> list[Path]:
    """Write ``dynamic.json`` (checked first), ``dynamic.md`` and the plots into ``out``."""
    parse(result_dict)  # a broken dict never reaches the disk
    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamic.json").write_text(json.dumps(result_dict, indent=2))
    return [out / "dynamic.json", *_render(result_dict, out)]


def render_dynamic(out: Path) -> list[Path]:
    """Rewrite ``dynamic.md`` and the plots from ``out/dynamic.json`` alone."""
    try:
        data = json.loads((out / "dynamic.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read dynamic results in {out}: {exc}") from exc
    return _render(data, out)
