"""Table 1 as files: ``table1.json``, ``table1_latencies.json``, ``table1.md`` and plots.

Reports read result files only; they never run a model. :func:`write_table1`
saves what an experiment produced and renders it; :func:`render_table1`
rebuilds the markdown and the plots from the files alone (``collabinfer report
DIR``). Both go through :class:`~collabinfer.experiments.table1.schema.Table1Result`.

That schema types the rows but keeps ``conditions`` a free-form object; the
markdown reads a dozen of its fields, so :class:`Conditions` is this report's
checked view of them (read with ``strict=False``: the other conditions are
the experiment's business). A missing or mistyped one is a ConfigError naming
it, e.g. ``table1.json: conditions.link_profile.rtt_ms must be a number``.

    >>> render_table1(Path("results/demo"))  # doctest: +SKIP
    [PosixPath('results/demo/table1.md'), PosixPath('results/demo/table1_latency_cdf.png'), ...]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from collabinfer.errors import ConfigError
from collabinfer.experiments.records import from_json
from collabinfer.experiments.table1.schema import Row, Table1Result
from collabinfer.report.common import DASH, log_axis, markdown_table, pyplot, save_figure

__all__ = ["COLUMNS", "Conditions", "fmt", "markdown", "plot", "render_table1", "write_table1"]

FILE = "table1.json"

COLUMNS = (
    ("paradigm", "paradigm", "{}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("latency_p50_ms", "p50 ms", "{:.1f}"),
    ("latency_p95_ms", "p95 ms", "{:.1f}"),
    ("bytes_per_input", "bytes/input", "{:,.0f}"),
    ("raw_input_leaves_device", "raw input leaves device", "{}"),
    ("privacy_ssim", "attack SSIM", "{:.2f}"),
    ("edge_cpu_ms_per_input", "edge CPU ms/input", "{:.2f}"),
    ("exited_on_device", "exit on device", "{:.0%}"),
    ("cache_hits", "cache hits", "{:.0%}"),
    ("measured_on", "measured on", "{}"),
    ("num_inputs", "inputs", "{:,}"),
)


def fmt(col: str, value: Any) -> str:
    """One cell of :data:`COLUMNS` (the CLI prints the same table)."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    for key, _, spec in COLUMNS:
        if key == col:
            return spec.format(value)
    return str(value)


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_mbps: float
    rtt_ms: float
    note: str = ""


@dataclass(frozen=True)
class Bottleneck:
    used: bool
    model: str
    why: str


@dataclass(frozen=True)
class Conditions:
    """The conditions the markdown states (a view of ``Table1Result.conditions``)."""

    link_profile: Link
    wan_profile: Link
    fluctuating_trace: bool
    num_inputs: int
    subset_seed: int
    arrival_interval_s: float
    full_model: str
    local_model: str
    tier_labels: str
    compute: str
    full_model_device_ms: float
    links: str
    private_splits: bool
    max_attack_ssim: float | None = None
    trace_seed: int | None = None
    trace_volatility: float | None = None
    trace_mean_mbps: float | None = None
    collabinfer_bottleneck: Bottleneck | None = None
    workload: str = "iid"

    def __post_init__(self) -> None:
        trace = (self.trace_seed, self.trace_volatility, self.trace_mean_mbps)
        if self.fluctuating_trace and None in trace:
            raise ConfigError(
                "a fluctuating trace needs trace_seed, trace_volatility and trace_mean_mbps"
            )

    @classmethod
    def of(cls, result: Table1Result) -> Conditions:
        return from_json(cls, result.conditions, f"{FILE}: conditions", strict=False)


def _conditions_lines(c: Conditions, rows: tuple[Row, ...]) -> list[str]:
    link, wan = c.link_profile, c.wan_profile
    trace = (
        f"fluctuating trace (seed {c.trace_seed}, volatility {c.trace_volatility}, "
        f"mean {c.trace_mean_mbps:.2f} Mbit/s)."
        if c.fluctuating_trace
        else "constant bandwidth."
    )
    how = "; ".join(f"{r.paradigm} on {r.measured_on} ({r.num_inputs:,} inputs)" for r in rows)
    lines = [
        (
            f"- Inputs: {c.num_inputs} Fashion-MNIST test images (subset seed {c.subset_seed})"
            if c.workload == "iid"
            else f"- Inputs: a {c.workload} stream of {c.num_inputs} requests over the "
            "Fashion-MNIST test images (docs/reuse.md); the collabinfer rows' edge runs "
            "the semantic cache"
        )
        + f", batch 1, one every {c.arrival_interval_s * 1e3:.0f} ms.",
        f"- Models: full `{c.full_model}`, local `{c.local_model}`.",
        f"- Tiers: {c.tier_labels}. Compute: {c.compute}. "
        f"The full model would take {c.full_model_device_ms:.0f} ms on the device.",
        f"- Access link `{link.name}`: {link.bandwidth_mbps} Mbit/s nominal, "
        f"RTT {link.rtt_ms} ms ({link.note}); " + trace,
        f"- WAN (edge to cloud) `{wan.name}`: {wan.bandwidth_mbps} Mbit/s, "
        f"RTT {wan.rtt_ms} ms ({wan.note}).",
        f"- Links: {c.links}.",
        f"- Measured how: {how}. `virtual-clock`: compute measured here x tier factor, "
        "links simulated; `real-sockets`: tier servers in separate processes, userspace "
        "shaping relays, wall-clock latency (device slow-down emulated by sleeping; cloud "
        "at this CPU's speed).",
        "- Split rows keep the raw input on the device: "
        + ("yes (privacy constraint)." if c.private_splits else "no."),
        *(
            [
                f"- Privacy bound: the split rows send only what the assessment's strongest "
                f"attack recovers at SSIM <= {c.max_attack_ssim:g}."
            ]
            if c.max_attack_ssim is not None
            else []
        ),
        "- Attack SSIM: the strongest inversion attack (rMLE, inverse network, shadow head; "
        "the image itself read as is) on what each row sends, measured on test images the "
        "attacker's training-split data does not contain; a row that sends nothing gets the "
        "attacker's best guess without bytes (the mean image). Below 0.3 counts as "
        "unrecognisable (He et al. 2019); `collabinfer experiment privacy` has the full "
        "assessment.",
        "",
    ]
    bn = c.collabinfer_bottleneck
    if bn is not None:
        verdict = "uses" if bn.used else "does not use"
        lines.append(
            f"- The collabinfer row {verdict} the learned bottleneck `{bn.model}`: {bn.why}."
        )
    return lines


def markdown(result: Table1Result) -> str:
    """The report as markdown; a condition it needs that is missing is a ConfigError."""
    cond = Conditions.of(result)
    table = markdown_table(
        [h for _, h, _ in COLUMNS],
        ([fmt(k, getattr(r, k)) for k, _, _ in COLUMNS] for r in result.rows),
    )
    plans = [
        f"- **{r.paradigm}**: {r.plan}"
        + (f"; {r.fallbacks} inputs finished locally" if r.fallbacks else "")
        for r in result.rows
    ]
    lines = [
        "# Table 1, measured",
        "",
        *table,
        "",
        "## Conditions",
        "",
        *_conditions_lines(cond, result.rows),
        "",
        "## Plans",
        "",
        *plans,
        "",
    ]
    return "\n".join(lines)


def _label(name: str, rows: dict[str, Row]) -> str:
    row = rows.get(name)
    return name if row is None else f"{name} ({row.measured_on})"


def plot(result: Table1Result, out: Path) -> list[Path]:
    """Latency CDF per row and bytes vs p95 latency (both with log x axes)."""
    plt = pyplot()
    cond = Conditions.of(result)
    rows = {r.paradigm: r for r in result.rows}

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, lat in result.latencies_ms.items():
        if not lat:
            continue
        xs = np.sort(np.asarray(lat))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=_label(name, rows))
    log_axis(ax, "x")
    ax.set_xlabel("end-to-end latency per input (ms, log scale)")
    ax.set_ylabel("fraction of inputs")
    ax.set_title(f"Latency CDF, link {cond.link_profile.name}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if result.latencies_ms:
        ax.legend(fontsize=8)
    cdf = save_figure(fig, out / "table1_latency_cdf.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    logs = {r.paradigm: math.log10(max(r.bytes_per_input, 1.0)) for r in result.rows}
    lo, hi = min(logs.values()), max(logs.values())
    for row in result.rows:
        b = max(row.bytes_per_input, 1.0)
        ax.scatter(b, row.latency_p95_ms, s=60)
        right = hi > lo and (logs[row.paradigm] - lo) / (hi - lo) > 0.7  # label to the left
        ax.annotate(
            f"{row.paradigm} ({row.accuracy:.1%})",
            (b, row.latency_p95_ms),
            textcoords="offset points",
            xytext=(-6, 4) if right else (6, 4),
            ha="right" if right else "left",
            fontsize=8,
        )
    log_axis(ax, "x")
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel("bytes sent by the device per input (log scale; 1 = nothing)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("Bytes on the wire vs tail latency")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    scatter = save_figure(fig, out / "table1_bytes_vs_p95.png")
    return [cdf, scatter]


def write_table1(result: Table1Result, out: Path) -> list[Path]:
    """Save ``result`` (``table1.json``, ``table1_latencies.json``) and render it."""
    Conditions.of(result)  # what the report needs is there, before anything is written
    return [*result.save(out), *render_table1(out)]


def render_table1(out: Path) -> list[Path]:
    """``table1.md`` and the plots from the files in ``out`` alone."""
    result = Table1Result.load(out)
    md = out / "table1.md"
    md.write_text(markdown(result))
    return [md, *plot(result, out)]
