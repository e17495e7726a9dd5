"""Small, valid result files for each experiment, as the JSON each writes (no model is run).

Each ``*_data()`` returns a fresh dict, so a test may break it in place.
"""

from __future__ import annotations

import itertools
from typing import Any


def _bins(shift: float) -> list[dict[str, float]]:
    edges = [i / 5 for i in range(6)]
    return [
        {
            "lo": lo,
            "hi": hi,
            "count": 0 if lo < 0.2 else 100,
            "confidence": (lo + hi) / 2,
            "accuracy": max(0.0, (lo + hi) / 2 - shift),
        }
        for lo, hi in itertools.pairwise(edges)
    ]


def dynamic_data() -> dict[str, Any]:
    return {
        "conditions": {
            "num_inputs": 10000,
            "backbone": "fmnist-resnet",
            "backbone_mflops": 48.25,
            "threads": 1,
            "latency": "batch 1, one thread",
            "measured_on": "Test CPU 3000",
            "tuned_on": "the validation split only",
            "quick": False,
            "seconds": 12.5,
            "config": {"max_drops": [0.005, 0.01], "seed": 7},
            "train_metrics": {"exits": {"val_acc": 0.9}},
        },
        "points": [
            {
                "method": "static backbone",
                "setting": "full",
                "accuracy": 0.9331,
                "mflops_per_input": 48.25,
                "latency_p50_ms": 1.234,
                "latency_p95_ms": 1.5,
                "throughput_b32": 2100.0,
            },
            {
                "method": "calibrated exits",
                "setting": "max_drop=0.5pt",
                "accuracy": 0.9287,
                "mflops_per_input": 30.125,
                "exit_fractions": [0.4, 0.2, 0.4],
                "exit_names": ["after_stem", "after_res1b", "final"],
                "wasted_mflops_per_input": 0.3,
                "val_accuracy": 0.935,
                "rule": {
                    "thresholds": [0.9, None],
                    "score": "maxprob",
                    "allowed_paths": [None, [0, 3]],
                },
                "latency_p50_ms": 0.876,
                "latency_p95_ms": 1.42,
                "throughput_b32": 3050.0,
                "speedup_flops": 1.6,
                "speedup_measured": 1.4,
            },
            {
                "method": "calibrated exits",
                "setting": "max_drop=1pt",
                "accuracy": 0.9201,
                "mflops_per_input": 22.5,
                "exit_fractions": [0.6, 0.1, 0.3],
                "latency_p50_ms": 0.7,
                "latency_p95_ms": 1.3,
            },
            {
                "method": "gates",
                "setting": "rate=0.6",
                "accuracy": 0.9102,
                "mflops_per_input": 33.0,
                "gate_exec_rates": [0.55, 0.7],
                "latency_p50_ms": 1.1,
                "latency_p95_ms": 1.3,
            },
        ],
        "exits": [
            {
                "method": "calibrated exits",
                "name": "after_stem",
                "cut": 1,
                "temperature": 1.4,
                "head_accuracy": 0.81,
                "ece_before": 0.05,
                "ece_after": 0.012,
                "reliability_before": _bins(0.1),
                "reliability_after": _bins(0.01),
            },
            {
                "method": "calibrated exits",
                "name": "after_res1b",
                "cut": 3,
                "temperature": 1.25,
                "head_accuracy": 0.89,
                "ece_before": 0.031,
                "ece_after": 0.008,
                "val_ece_after": 0.01,
                "reliability_before": _bins(0.05),
                "reliability_after": _bins(0.0),
            },
        ],
        "gates": [
            {"method": "gates", "setting": "rate=0.6", "block": "res1a", "exec_rate": 0.55},
            {"method": "gates", "setting": "rate=0.6", "block": "res2a", "exec_rate": 0.7},
        ],
        "summary": {
            "targets": [
                {
                    "name": "calibrated exits within 0.5 pt",
                    "target": ">= 92.81%",
                    "reached": "92.87%",
                    "met": True,
                },
                {"name": "gates 1.5x", "target": ">= 1.5x", "reached": "1.2x", "met": False},
            ],
            "path_aware_vs_always": None,
        },
    }


def _ra_point(
    method: str, cut: int, setting: str, nbytes: float, acc: float, header: float = 8.0
) -> dict[str, Any]:
    return {
        "method": method,
        "cut": cut,
        "setting": setting,
        "bytes_per_input": nbytes,
        "accuracy": acc,
        "header_bytes_per_input": header,
    }


def rate_accuracy_data() -> dict[str, Any]:
    return {
        "points": [
            _ra_point("input", 0, "u8", 784.0, 0.93),
            _ra_point("input", 0, "webp-q90", 394.0, 0.927),
            _ra_point("input", 0, "jpeg-q10", 250.5, 0.85),
            _ra_point("features", 1, "fp32", 50176.0, 0.93, 16.0),
            _ra_point("features", 1, "int8", 12544.0, 0.929, 24.0),
            _ra_point("bottleneck-hd", 4, "beta=0", 120.25, 0.928, 10.0),
            _ra_point("bottleneck-sc", 4, "beta=0.1", 61.5, 0.921, 10.0),
        ],
        "reference_accuracy": 0.93,
        "conditions": {
            "config": {"quick": True, "betas": [0.1]},
            "num_inputs": 2000,
            "rate": "payload bytes per input, mean",
            "bottlenecks": [
                {
                    "method": "bottleneck-hd",
                    "beta": 0.0,
                    "val_acc": 0.93,
                    "checkpoint": "/cache/bn-hd.pt",
                    "codec": "entropy-abc",
                },
                {
                    "method": "bottleneck-sc",
                    "beta": 0.1,
                    "val_acc": None,
                    "checkpoint": "/cache/bn-sc.pt",
                    "codec": "entropy-def",
                },
            ],
            "encoder": {
                "encoder_params": 1234,
                "encoder_mflops": 0.5,
                "encoder_ms": 0.25,
                "decoder_params": 5678,
                "decoder_mflops": 1.5,
                "decoder_ms": 0.75,
            },
        },
    }


def _link(name: str, mbps: float, rtt: float) -> dict[str, Any]:
    return {
        "name": name,
        "bandwidth_mbps": mbps,
        "rtt_ms": rtt,
        "jitter_ms": 0.0,  # not read by the report: ignored
        "note": f"{name} is OUR ASSUMPTION",
    }


def _row(paradigm: str, acc: float, p50: float, nbytes: float, **extra: Any) -> dict[str, Any]:
    return {
        "paradigm": paradigm,
        "accuracy": acc,
        "latency_p50_ms": p50,
        "latency_p95_ms": 1.5 * p50,
        "bytes_per_input": nbytes,
        "raw_input_leaves_device": paradigm in ("EC", "CC"),
        "edge_cpu_ms_per_input": 0.0 if paradigm in ("LC", "CC") else 1.25,
        "measured_on": "virtual-clock",
        "plan": f"plan of {paradigm}",
        "num_inputs": 300,
        **extra,
    }


def table1_data() -> dict[str, Any]:
    return {
        "conditions": {
            "link_profile": _link("lte", 5.85, 50.0),
            "wan_profile": _link("wan", 100.0, 40.0),
            "fluctuating_trace": True,
            "trace_seed": 7,
            "trace_mean_mbps": 5.8,
            "trace_volatility": 0.6,
            "arrival_interval_s": 0.1,
            "tier_labels": "device: emulated 100x slower than this CPU",
            "num_inputs": 300,
            "subset_seed": 0,
            "full_model": "fmnist-resnet",
            "local_model": "fmnist-small",
            "private_splits": True,
            "full_model_device_ms": 136.2,
            "compute": "profiled time x factor",
            "links": "SimulatedLink on a virtual clock",
            "config": {"link": "lte"},  # not read by the report: ignored
        },
        "rows": [
            _row("LC", 0.897, 14.0, 0.0),
            _row("EC", 0.933, 60.0, 850.0, sends="0:u8", privacy_ssim=1.0),
            _row("CC", 0.933, 95.0, 850.0),
            _row("static-split", 0.933, 120.0, 12544.0),
            _row("collabinfer", 0.921, 28.0, 4600.0, fallbacks=3, exited_on_device=0.6),
        ],
    }


def table1_latencies() -> dict[str, list[float]]:
    base = {"LC": 14.0, "EC": 60.0, "CC": 95.0, "static-split": 120.0, "collabinfer": 28.0}
    return {name: [ms * (1 + i / 50) for i in range(50)] for name, ms in base.items()}
