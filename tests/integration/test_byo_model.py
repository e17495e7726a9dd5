"""Bring your own model, end to end over real sockets: a model that is not in the zoo,
defined in ``tests/byo_models.py`` with its own weights, goes ``collabinfer pack`` ->
``collabinfer serve`` (edge and cloud, separate processes) -> ``collabinfer run
--inputs``, and its answers equal the in-process forward pass."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import byo_models
from collabinfer.experiments.table1.real import tier_process
from collabinfer.serve.server import free_port

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "collabinfer.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_user_model_is_packed_served_and_run_over_real_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the servers import the user's module too
    env = dict(os.environ, OMP_NUM_THREADS="1")
    weights = byo_models.trained_weights()
    save_file(weights, str(tmp_path / "colour.safetensors"))
    pkg = tmp_path / "colour-pkg"
    done = _cli(
        "pack", "--model", "byo_models:colour_net", "--weights", str(tmp_path / "colour.safetensors"),  # noqa: E501
        "--input-shape", "3,32,32", "--name", "colour-net", "--out", str(pkg), "--repeats", "3",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    gen = torch.Generator().manual_seed(11)
    x = torch.rand(24, 3, 32, 32, generator=gen)
    np.save(tmp_path / "inputs.npy", x.numpy())
    ref = byo_models.ColourNet().eval()
    ref.load_state_dict(weights)
    with torch.no_grad():
        expected = ref(x)

    out = tmp_path / "results.json"
    cloud_port, edge_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(
            tier_process("cloud", str(pkg), cloud_port, None, None, tmp_path / "cloud.log")
        )
        edge = stack.enter_context(
            tier_process("edge", str(pkg), edge_port, cloud, None, tmp_path / "e.log")
        )
        done = _cli(
            "run", "--model", str(pkg), "--edge", edge, "--cloud", cloud,
            "--inputs", str(tmp_path / "inputs.npy"), "--out", str(out), "--link", "wifi",
            env=env,
        )  # fmt: skip
    edge_log = (tmp_path / "e.log").read_text()
    assert "POST /v2/models/colour-net/infer" in edge_log
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["index"] for r in results] == list(range(len(x)))
    assert not any(r["fell_back"] for r in results), done.stdout
    logits = torch.tensor([r["logits"] for r in results])
    assert [r["prediction"] for r in results] == expected.argmax(1).tolist()
    # the device sends its cut through the plan's codec: int8 at the worst
    assert torch.allclose(logits, expected, atol=0.05), (logits - expected).abs().max()
    assert "colour-net" in done.stdout
    print(done.stdout, f"max |logit diff| {float((logits - expected).abs().max()):.2e}")
