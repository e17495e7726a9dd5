"""The reuse report: a small valid ``reuse.json`` in, markdown and plots out; a broken
file anywhere is a one-line ConfigError naming the file (no model is run)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.reuse_schema import ReuseResult
from collabinfer.report import RENDERERS, render_report
from collabinfer.report.reuse import equal_precision, markdown, render_reuse, write_reuse


def _point(workload: str, key: str, hit_rate: float) -> dict[str, Any]:
    return {
        "workload": workload,
        "key": key,
        "model": "fmnist-resnet+bn" if key == "latent" else "fmnist-resnet",
        "cut": 1,
        "codec": "ent-ab12cd34" if key == "latent" else "int8",
        "requests": 600,
        "hits": round(600 * hit_rate),
        "hit_rate": hit_rate,
        "hit_precision_model": 0.99 if hit_rate else None,
        "hit_precision_label": 0.93 if hit_rate else None,
        "accuracy": 0.92,
        "accuracy_no_cache": 0.925,
        "latency_mean_ms": 101.2,
        "latency_mean_ms_no_cache": 102.9,
        "latency_p95_ms": 104.0,
        "latency_p95_ms_no_cache": 105.5,
        "edge_cpu_ms_per_input": 2.1,
        "edge_cpu_ms_per_input_no_cache": 3.4,
        "opportunities": 570 if workload != "iid" else 0,
        "opportunities_harnessed": hit_rate if workload != "iid" else None,
        "hits_without_opportunity": 0,
        "key_bytes": 256,
        "lookup_ms": 0.05,
        "insert_ms": 0.02,
        "rule_k": 2,
        "rule_tau": 0.012,
        "rule_min_confidence": 0.9,
        "val_hit_rate": hit_rate,
        "val_precision": 0.991,
        "bytes_per_input": 12_600.0,
    }


def _baseline(method: str, fitted: bool, workload: str) -> dict[str, Any]:
    return {
        "method": method,
        "setting": "SSIM >= 0.8" if method == "pixel-lsh" else "k=1, tau=0.02",
        "fitted": fitted,
        "workload": workload,
        "requests": 600,
        "hits": 120,
        "hit_rate": 0.2,
        "hit_precision_model": 0.97,
        "hit_precision_label": 0.9,
        "accuracy": 0.91,
        "opportunities": 570,
        "opportunities_harnessed": 0.21,
        "hits_without_opportunity": 0,
        "key_bytes": 784,
        "key_ms": 0.03,
        "lookup_ms": 0.04,
        "val_hit_rate": 0.25 if fitted else None,
        "val_precision": 0.99 if fitted else None,
        "raw_pixels_at_cache": method == "pixel-lsh",
    }


def reuse_data() -> dict[str, Any]:
    """A valid ``reuse.json``: two workloads, two keys, both baselines, overhead, CDF."""
    return {
        "points": [
            _point("video", "features", 0.6),
            _point("video", "latent", 0.4),
            _point("iid", "features", 0.0),
            _point("iid", "latent", 0.01),
        ],
        "miss_overhead": [
            {
                "index": index,
                "entries": n,
                "lookup_insert_ms": ms,
                "tail_ms": 1.5,
                "lookup_insert_p95_ms": 2 * ms,
                "lookup_ms": ms / 2,
                "insert_ms": ms / 2,
                "pairs": 200,
                "key_dim": 64,
                "fill_s": 1.0,
            }
            for index, n, ms in (
                ("exact", 1000, 0.03),
                ("exact", 10_000, 0.2),
                ("ivf", 10_000, 0.05),
            )
        ],
        "baselines": [
            _baseline("pixel-lsh", True, "video"),
            _baseline("pixel-lsh", False, "video"),
            _baseline("decoupled", True, "video"),
        ],
        "conditions": {
            "config": {"quick": True, "stream": {"length": 600}},
            "model": "fmnist-resnet",
            "latent_model": "fmnist-resnet+bn",
            "extractor": "fmnist-small (penultimate activations, L2-normalised)",
            "tiers": "device: emulated 100x slower than this CPU; edge: this CPU (x1)",
            "link": "lte: 5.85 Mbit/s, RTT 50 ms",
            "precision_target": 0.99,
            "validation": "validation streams only",
            "test_streams": "test split, seeds 1000+",
            "measured_on": "Test CPU",
            "seconds": 12.0,
            "quick": True,
            "notes": ["a note"],
        },
        "latencies": [
            {
                "workload": "video",
                "model": "fmnist-resnet",
                "key": None,
                "latency_ms": [100.0, 103.0],
            },
            {
                "workload": "video",
                "model": "fmnist-resnet",
                "key": "features",
                "latency_ms": [99.0],
            },
        ],
    }


def _write(out: Path, data: object) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "reuse.json").write_text(json.dumps(data))


def test_the_report_writes_markdown_and_three_plots(tmp_path: Path) -> None:
    res = ReuseResult.from_json(reuse_data())
    names = [p.name for p in write_reuse(res, tmp_path)]
    assert names == [
        "reuse.json",
        "reuse.md",
        "reuse_precision.png",
        "reuse_latency_cdf.png",
        "reuse_miss_overhead.png",
    ]
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    md = (tmp_path / "reuse.md").read_text()
    assert "## Hit rate at equal precision" in md and "**Quick run**" in md
    assert "lowered the edge's CPU per input in 4 of 4" in md
    assert "| video | features | 60.0% |" in md
    assert "decoupled extractor" in md and "pixel LSH + SSIM 0.6 (Reservoir)" in md
    assert ReuseResult.load(tmp_path) == res  # what was written reads back the same


def test_render_report_finds_the_reuse_file(tmp_path: Path) -> None:
    _write(tmp_path, reuse_data())
    assert "reuse.json" in RENDERERS
    assert [p.name for p in render_report(tmp_path) if p.suffix == ".md"] == ["reuse.md"]


def test_without_latencies_or_overhead_only_the_precision_plot(tmp_path: Path) -> None:
    data = reuse_data()
    data["latencies"], data["miss_overhead"], data["baselines"] = [], [], []
    _write(tmp_path, data)
    assert [p.name for p in render_reuse(tmp_path)] == ["reuse.md", "reuse_precision.png"]
    assert "Miss overhead" not in (tmp_path / "reuse.md").read_text()


def test_equal_precision_names_our_best_key_and_the_fitted_baselines() -> None:
    res = ReuseResult.from_json(reuse_data())
    line = equal_precision(res, "video")
    assert line is not None
    assert "our best key (features) hits 60.0%" in line
    assert "pixel-lsh 20.0%" in line and "decoupled 20.0%" in line
    assert "(Reservoir)" not in line  # only the baselines fitted for the same target
    assert equal_precision(res, "multi-client") is None
    data = reuse_data()
    data["baselines"][0]["val_hit_rate"] = 0.0
    line = equal_precision(ReuseResult.from_json(data), "video")
    assert line is not None and "pixel-lsh: no rule reached the target on validation" in line
    assert "the cache saves 1.30 ms" in line


def test_a_point_without_hits_shows_a_dash_not_a_precision() -> None:
    md = markdown(ReuseResult.from_json(reuse_data()))
    row = next(line for line in md.splitlines() if line.startswith("| iid | features |"))
    assert "| 0.0% | — | — |" in row


# ---------------------------------------------------------------- malformed files

Path_ = tuple[str | int, ...]
DELETE = object()
WRONG: tuple[object, ...] = (DELETE, None, "x", True, -1, 1.5, math.nan, [], [1, "a"], {}, {"t": 1})


def _paths(node: object, prefix: Path_ = ()) -> Iterator[Path_]:
    items: Any = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _mutated(data: dict[str, Any], path: Path_, value: object) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    for step in path[:-1]:
        node = node[step]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = copy.deepcopy(value)
    return data


def test_every_wrong_value_anywhere_renders_or_is_a_one_line_error() -> None:
    data = reuse_data()  # one object of each kind is enough (and keeps this at a few seconds)
    for block in ("points", "miss_overhead", "baselines", "latencies"):
        data[block] = data[block][:1]
    tried = refused = 0
    for path in _paths(data):
        for value in WRONG:
            tried += 1
            try:
                markdown(ReuseResult.from_json(_mutated(data, path, value)))
            except ConfigError as exc:
                refused += 1
                message = str(exc)
                assert "\n" not in message and message.startswith("reuse.json"), (path, message)
    assert tried > 700 and refused > tried // 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("points", 0, "hit_rate"), r"points\[0\]: hit_rate is a fraction"),
        (("points", 0, "workload"), r"points\[0\]: unknown workload"),
        (("miss_overhead", 0, "index"), r"miss_overhead\[0\]: unknown index"),
        (("baselines", 0, "method"), r"baselines\[0\]: unknown baseline"),
    ],
)
def test_out_of_range_values_name_their_field(change: Path_, message: str) -> None:
    value = 1.5 if change[-1] == "hit_rate" else "nope"
    with pytest.raises(ConfigError, match=message):
        ReuseResult.from_json(_mutated(reuse_data(), change, value))


def test_two_points_for_one_workload_and_key_are_refused() -> None:
    data = reuse_data()
    data["points"].append(copy.deepcopy(data["points"][0]))
    with pytest.raises(ConfigError, match="workload x key twice"):
        ReuseResult.from_json(data)


@pytest.mark.parametrize("content", ["{not json", "[]", "{}"])
def test_a_file_that_is_no_result_at_all(tmp_path: Path, content: str) -> None:
    (tmp_path / "reuse.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        render_report(tmp_path)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.md")) and not list(tmp_path.glob("*.png"))
