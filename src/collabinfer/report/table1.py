"""Table 1 as files: ``table1.json``, ``table1_latencies.json``, ``table1.md`` and plots.

Reports read result files only; they never run a model. :func:`write_table1`
writes what an experiment produced; :func:`render_table1` rebuilds the markdown
and the plots from the files alone (``collabinfer report table1 DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collabinfer.errors import ConfigError
from collabinfer.experiments.table1 import Table1Result

COLUMNS = (
    ("paradigm", "paradigm", "{}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("latency_p50_ms", "p50 ms", "{:.1f}"),
    ("latency_p95_ms", "p95 ms", "{:.1f}"),
    ("bytes_per_input", "bytes/input", "{:,.0f}"),
    ("raw_input_leaves_device", "raw input leaves device", "{}"),
    ("edge_cpu_ms_per_input", "edge CPU ms/input", "{:.2f}"),
    ("exited_on_device", "exit on device", "{:.0%}"),
    ("measured_on", "measured on", "{}"),
    ("num_inputs", "inputs", "{:,}"),
)


def fmt(col: str, value: Any) -> str:
    for key, _, spec in COLUMNS:
        if key == col:
            if isinstance(value, bool):
                return "yes" if value else "no"
            return spec.format(value)
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    cond = data["conditions"]
    link, wan = cond["link_profile"], cond["wan_profile"]
    lines = [
        "# Table 1, measured",
        "",
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in data["rows"]:
        lines.append(
            "| " + " | ".join(fmt(k, row[k]) if k in row else "—" for k, _, _ in COLUMNS) + " |"
        )
    lines += [
        "",
        "## Conditions",
        "",
        f"- Inputs: {cond['num_inputs']} Fashion-MNIST test images "
        f"(subset seed {cond['subset_seed']}), batch 1, "
        f"one every {cond['arrival_interval_s'] * 1e3:.0f} ms.",
        f"- Models: full `{cond['full_model']}`, local `{cond['local_model']}`.",
        f"- Tiers: {cond['tier_labels']}. Compute: {cond['compute']}. "
        f"The full model would take {cond['full_model_device_ms']:.0f} ms on the device.",
        f"- Access link `{link['name']}`: {link['bandwidth_mbps']} Mbit/s nominal, "
        f"RTT {link['rtt_ms']} ms ({link['note']}); "
        + (
            f"fluctuating trace (seed {cond['trace_seed']}, volatility {cond['trace_volatility']}, "
            f"mean {cond['trace_mean_mbps']:.2f} Mbit/s)."
            if cond["fluctuating_trace"]
            else "constant bandwidth."
        ),
        f"- WAN (edge to cloud) `{wan['name']}`: {wan['bandwidth_mbps']} Mbit/s, "
        f"RTT {wan['rtt_ms']} ms ({wan['note']}).",
        f"- Links: {cond['links']}.",
        "- Measured how: "
        + "; ".join(
            f"{r['paradigm']} on {r['measured_on']} ({r.get('num_inputs', 0):,} inputs)"
            for r in data["rows"]
        )
        + ". `virtual-clock`: compute measured here x tier factor, links simulated; "
        "`real-sockets`: tier servers in separate processes, userspace shaping relays, "
        "wall-clock latency (device slow-down emulated by sleeping; cloud at this CPU's speed).",
        "- Split rows keep the raw input on the device: "
        + ("yes (privacy constraint)." if cond["private_splits"] else "no."),
        "",
    ]
    bn = cond.get("collabinfer_bottleneck")
    if bn:
        verdict = "uses" if bn["used"] else "does not use"
        lines.append(
            f"- The collabinfer row {verdict} the learned bottleneck `{bn['model']}`: {bn['why']}."
        )
    lines += [
        "",
        "## Plans",
        "",
    ]
    for row in data["rows"]:
        lines.append(
            f"- **{row['paradigm']}**: {row.get('plan', '')}"
            + (f"; {row['fallbacks']} inputs finished locally" if row.get("fallbacks") else "")
        )
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], latencies: dict[str, list[float]], out: Path) -> list[Path]:
    """Latency CDF per row and bytes vs p95 latency. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ConfigError("plots need matplotlib: pip install matplotlib") from exc
    import numpy as np

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, lat in latencies.items():
        xs = np.sort(np.asarray(lat))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency per input (ms, virtual clock, log)")
    ax.set_ylabel("fraction of inputs")
    ax.set_title(f"Latency CDF, link {data['conditions']['link_profile']['name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = out / "table1_latency_cdf.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in data["rows"]:
        b = max(row["bytes_per_input"], 1.0)
        ax.scatter(b, row["latency_p95_ms"], s=60)
        ax.annotate(
            f"{row['paradigm']} ({row['accuracy']:.1%})",
            (b, row["latency_p95_ms"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent by the device per input (log; 1 = nothing)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("Bytes on the wire vs tail latency")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    p = out / "table1_bytes_vs_p95.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def write_table1(result: Table1Result, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json_dict()
    (out / "table1.json").write_text(json.dumps(data, indent=2))
    (out / "table1_latencies.json").write_text(json.dumps(result.latencies_ms))
    return [out / "table1.json", out / "table1_latencies.json", *render_table1(out)]


def render_table1(out: Path) -> list[Path]:
    """Markdown and plots from the files in ``out`` alone."""
    try:
        data = json.loads((out / "table1.json").read_text())
        latencies = json.loads((out / "table1_latencies.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Table 1 results in {out}: {exc}") from exc
    md = out / "table1.md"
    md.write_text(markdown(data))
    return [md, *plot(data, latencies, out)]
