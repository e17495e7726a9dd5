"""Table 1's privacy column: the strongest inversion attack on what each row sent.

A row records what left the device (``Row.sends``, "cut:codec" pairs). Each
distinct pair of each model is attacked once (rMLE, the inverse network, the
shadow head; the image itself is read as is) on test images the attacker's
training data is checked not to contain (:func:`~collabinfer.privacy.aux.require_disjoint`),
and the row gets the highest SSIM among its sends: the privacy of a row is
that of its most revealing send. A row that sent nothing (LC, or a run whose
every input exited on the device) gets what an attacker on the link can do
with no bytes: guess the mean image (the "prior" attack).

This is measured, at the quick attack budget of ``collabinfer experiment
privacy --quick``; the full assessment is the experiment's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from collabinfer.data.fashion_mnist import Dataset
from collabinfer.errors import ConfigError
from collabinfer.experiments.privacy import PrivacyConfig, strongest_ssim
from collabinfer.experiments.table1.schema import Row
from collabinfer.model.blocks import BlockNet
from collabinfer.privacy.target import feature_target, nothing_sent
from collabinfer.progress import ProgressFn, report

__all__ = ["parse_sends", "privacy_column"]


def parse_sends(sends: str) -> list[tuple[int, str]]:
    """``"1:int8,0:u8"`` -> ``[(1, "int8"), (0, "u8")]``; a malformed entry is a ConfigError."""
    out = []
    for item in filter(None, sends.split(",")):
        cut, sep, codec = item.partition(":")
        if not sep or not cut.isdigit() or not codec:
            raise ConfigError(f"sends entry {item!r} is not 'cut:codec'")
        out.append((int(cut), codec))
    return out


def privacy_column(
    rows: Sequence[Row],
    models: dict[str, BlockNet],
    aux: Dataset,
    scored: Dataset,
    progress: ProgressFn | None = None,
) -> tuple[Row, ...]:
    """``rows`` with ``privacy_ssim`` filled in. ``models``: paradigm -> the model whose
    features that row sends (rows whose paradigm is missing keep ``None``)."""
    cfg = PrivacyConfig.make(quick=True).attack
    memo: dict[tuple[int, int, str], float] = {}
    out = []
    for i, row in enumerate(rows):
        net = models.get(row.paradigm)
        if net is None:
            out.append(row)
            continue
        scores = []
        for cut, codec in parse_sends(row.sends) or [(-1, "none")]:
            key = (id(net), cut, codec)
            if key not in memo:
                target = nothing_sent(net) if cut < 0 else feature_target(net, cut, codec)
                memo[key] = strongest_ssim(target, scored, aux, cfg)[0]
            scores.append(memo[key])
        out.append(dataclasses.replace(row, privacy_ssim=max(scores)))
        report(progress, "privacy column", i + 1, len(rows))
    return tuple(out)
