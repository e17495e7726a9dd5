"""Both sides of a link derive the entropy tables from the weights: prove they agree.

The sender and the receiver of a learned bottleneck each rebuild the integer
frequency tables from the same weights (``model.bottleneck.deploy``). Two
separate Python processes, with different thread counts and hash seeds, derive
them from one saved prior; the tables' bytes must be identical, and a stream
encoded in one must decode in the other to the very symbols sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from collabinfer.model.bottleneck import FactorizedLogistic

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import torch
from collabinfer.codec.entropy import FactorizedTables, decode_symbols, encode_symbols
from collabinfer.model.bottleneck import FactorizedLogistic

torch.set_num_threads(int(sys.argv[3]))
prior = FactorizedLogistic(8)
prior.load_state_dict(torch.load(sys.argv[1], weights_only=True))
offsets, probs = prior.probabilities()
tables = FactorizedTables.from_probabilities(probs, offsets, 16)
out = {"tables_sha256": hashlib.sha256(tables.to_json().encode()).hexdigest()}
symbols = np.load(sys.argv[2])
if sys.argv[4] == "encode":
    out["stream"] = encode_symbols(symbols, tables).hex()
else:
    stream = bytes.fromhex(sys.argv[5])
    out["equal"] = bool((decode_symbols(stream, symbols.shape, tables) == symbols).all())
print(json.dumps(out))
"""


def _run(tmp: Path, threads: int, seed: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS=str(threads))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", SCRIPT, str(tmp / "prior.pt"), str(tmp / "y.npy"), str(threads)]
    res = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_two_processes_derive_the_same_tables_and_decode_each_others_bytes(tmp_path) -> None:
    import numpy as np

    torch.manual_seed(0)
    prior = FactorizedLogistic(8)
    with torch.no_grad():  # a trained-looking prior: off-centre, different widths
        prior.loc.copy_(torch.randn(8) * 0.7)
        prior.log_scale.copy_(torch.randn(8) * 0.8)
    torch.save(prior.state_dict(), tmp_path / "prior.pt")
    g = torch.Generator().manual_seed(1)
    y = torch.round(prior.loc.detach()[:, None, None] + torch.randn(8, 7, 7, generator=g) * 2)
    np.save(tmp_path / "y.npy", y.numpy().astype(np.int64)[None])
    sender = _run(tmp_path, 1, "1", "encode")
    receiver = _run(tmp_path, 2, "2", "decode", sender["stream"])
    assert sender["tables_sha256"] == receiver["tables_sha256"]
    assert receiver["equal"], "the receiver decoded the very symbols the sender coded"
