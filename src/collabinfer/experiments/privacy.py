"""The threat assessment: every attack on everything the device may send.

Targets (:mod:`collabinfer.privacy.target`), each scored on the same test
images:

* the two ends: the image itself (cut 0, ``u8``: what EC and CC send; the
  attacker just reads it) and nothing at all (LC; the attacker's best guess is
  the mean image of its data);
* the full model's activations at every cut, fp32 and int8, undefended;
* the learned bottleneck's entropy-coded latent (deterministic, the one
  Table 1 deploys);
* the defences: Gaussian noise and feature dropout on the features at the cut
  the bottleneck replaces, and the variational bottleneck swept over its KL
  weight (trained from the deterministic one on the training split).

Attacks (:mod:`collabinfer.privacy.attacks`): white-box rMLE, the inverse
network (auxiliary data from the training split, and from other classes
only), the query-free shadow head; on stochastic targets also their adaptive
versions. The attacker's data is the training split and is checked disjoint
from the scored images (:func:`~collabinfer.privacy.aux.require_disjoint`).

Which variational setting is *deployed* is chosen on validation only: the
largest KL weight whose validation accuracy is within ``max_val_drop`` of the
deterministic bottleneck's (more KL weight, more noise relative to signal).

    result, pictures = run_privacy(PrivacyConfig.make(quick=True), teacher, classifier,
                                 train, val, test, cache, progress)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collabinfer.codec import Codec, get_codec
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.experiments.privacy_schema import (
    AssessmentRow,
    PrivacyConditions,
    PrivacyResult,
    Reconstructions,
    VariationalRun,
    to_u8,
)
from collabinfer.experiments.records import to_json
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import deploy
from collabinfer.privacy.attacks import AttackConfig, attack
from collabinfer.privacy.aux import class_subset, require_disjoint
from collabinfer.privacy.defences import FeatureDropout, GaussianNoise
from collabinfer.privacy.metrics import psnr, recognisability, ssim
from collabinfer.privacy.target import Target, bottleneck_target, feature_target, nothing_sent
from collabinfer.progress import ProgressFn, report
from collabinfer.train.bottleneck import (
    DEFAULT_BOTTLENECK,
    BottleneckConfig,
    TrainedBottleneck,
    train_or_load_bottleneck,
    variational_config,
)

__all__ = [
    "PrivacyConfig",
    "attacks_for",
    "choose_variational",
    "run_privacy",
    "strongest_ssim",
]


@dataclass(frozen=True)
class PrivacyConfig:
    """The full run: every cut at fp32 and int8, 100 scored test images, the
    KL sweep over four decades of weight, two settings per feature defence.
    ``quick`` (<= 10 minutes with the classifiers cached): cuts 1, 4 and 7 at
    int8, 48 images, one setting per defence, a bottleneck trained on 10k
    images, a smaller attack budget."""

    quick: bool = False
    cuts: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    codecs: tuple[str, ...] = ("fp32", "int8")
    scored_images: int = 100
    accuracy_images: int = 10_000
    aux_images: int = 2500
    ood_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid_images: int = 8
    defence_cut: int = 4
    defence_codec: str = "int8"
    noise_sigmas: tuple[float, ...] = (0.5, 2.0)
    dropout_ps: tuple[float, ...] = (0.5, 0.9)
    bottleneck: BottleneckConfig = DEFAULT_BOTTLENECK
    kl_weights: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
    variational_epochs: int = 1
    variational_tail_epochs: int = 1
    max_val_drop: float = 0.01
    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
    subset_seed: int = 0

    @classmethod
    def make(cls, quick: bool) -> PrivacyConfig:
        if not quick:
            return cls()
        return cls(
            quick=True,
            cuts=(1, 4, 7),
            codecs=("int8",),
            scored_images=48,
            accuracy_images=2000,
            aux_images=1500,
            noise_sigmas=(1.0,),
            dropout_ps=(0.7,),
            bottleneck=dataclasses.replace(
                DEFAULT_BOTTLENECK,
                train_subset=10_000,
                distill_epochs=1,
                rate_epochs=1,
                tail_epochs=0,
            ),
            kl_weights=(0.01,),
            variational_epochs=1,
            variational_tail_epochs=0,
            attack=AttackConfig(rmle_steps=100, tune_images=4, inverse_epochs=3, shadow_epochs=1),
        )


@torch.inference_mode()
def _task_accuracy(target: Target, local: BlockNet, data: Dataset, batch_size: int = 500) -> float:
    """The receiver's accuracy on what ``target`` sends (``local``'s when nothing is sent)."""
    correct = 0
    for i in range(0, len(data), batch_size):
        x = data.images[i : i + batch_size]
        logits = target.tail(target.send(x)) if target.sends else local(x)
        correct += int((logits.argmax(1) == data.labels[i : i + batch_size]).sum())
    return correct / len(data)


def _variational_sweep(
    cfg: PrivacyConfig,
    teacher: BlockNet,
    train: Dataset,
    val: Dataset,
    det: TrainedBottleneck,
    cache: Path | None,
    progress: ProgressFn | None,
) -> list[TrainedBottleneck]:
    out = []
    for w in cfg.kl_weights:
        vcfg = variational_config(
            cfg.bottleneck, w, cfg.variational_epochs, cfg.variational_tail_epochs
        )
        out.append(train_or_load_bottleneck(vcfg, teacher, train, val, cache, progress, init=det))
    return out


def choose_variational(
    det_val_acc: float, runs: Sequence[tuple[float, float]], max_drop: float
) -> float | None:
    """The largest KL weight whose validation accuracy is within ``max_drop`` of the
    deterministic bottleneck's; ``None`` if none is. ``runs``: (kl_weight, val_acc)."""
    ok = [w for w, acc in runs if acc >= det_val_acc - max_drop]
    return max(ok) if ok else None


def attacks_for(target: Target, ood: bool = False) -> list[tuple[str, bool]]:
    """The (attack, adaptive) pairs that apply to ``target``: the prior when nothing is
    sent, reading the image at cut 0, else rMLE, the inverse network (``ood``: also
    trained on other classes) and the shadow head, adaptive too where it is stochastic."""
    if not target.sends:
        return [("prior", False)]
    if target.cut == 0:
        return [("identity", False)]
    out = [(n, False) for n in ("rmle", "inverse", *(("inverse-ood",) if ood else ()), "shadow")]
    if target.stochastic:
        out += [(n, True) for n in ("rmle", "inverse", "shadow")]
    return out


def strongest_ssim(
    target: Target,
    scored: Dataset,
    aux: Dataset,
    cfg: AttackConfig,
    progress: ProgressFn | None = None,
) -> tuple[float, str]:
    """The highest mean SSIM any applicable attack reaches on ``target``, and its name
    (Table 1's privacy column; the attacker's data is checked disjoint first)."""
    require_disjoint(aux, scored)
    best: tuple[float, str] | None = None
    for name, adaptive in attacks_for(target):
        rec = attack(name, target, scored.images, aux, cfg, adaptive, progress)
        score = (float(ssim(scored.images, rec.images).mean()), name + " (adaptive)" * adaptive)
        best = score if best is None or score[0] > best[0] else best
    assert best is not None  # attacks_for never returns an empty list
    return best


def run_privacy(
    cfg: PrivacyConfig,
    teacher: BlockNet,
    classifier: BlockNet,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    model: str = "fmnist-resnet",
) -> tuple[PrivacyResult, Reconstructions]:
    """Train the bottlenecks (or reuse them), then attack every target (module docstring)."""
    scored = test.subset(cfg.scored_images, cfg.subset_seed)
    acc_data = test.subset(cfg.accuracy_images, cfg.subset_seed)
    aux = train.subset(cfg.aux_images, cfg.subset_seed + 1)
    aux_ood = class_subset(train, cfg.ood_classes, cfg.aux_images)
    ood_name = "train classes " + ",".join(str(c) for c in cfg.ood_classes)
    for a in (aux, aux_ood):
        require_disjoint(a, scored)

    det_cfg = dataclasses.replace(cfg.bottleneck, beta=0.0, rate_epochs=0, tail_epochs=0)
    hd = train_or_load_bottleneck(det_cfg, teacher, train, val, cache, progress)
    det = train_or_load_bottleneck(cfg.bottleneck, teacher, train, val, cache, progress, init=hd)
    variational = _variational_sweep(cfg, teacher, train, val, det, cache, progress)
    det_val = float(det.metrics["val_acc"])
    chosen = choose_variational(
        det_val,
        [(v.config.kl_weight, float(v.metrics["val_acc"])) for v in variational],
        cfg.max_val_drop,
    )

    targets: list[tuple[Target, float]] = []  # (target, payload bytes per input)
    targets.append((feature_target(teacher, 0, "u8"), _mean_bytes(teacher, 0, "u8", scored)))
    for k in cfg.cuts:
        for c in cfg.codecs:
            targets.append((feature_target(teacher, k, c), _mean_bytes(teacher, k, c, scored)))
    det_dep = deploy(det.net, det.bottleneck, det.key[:8])
    targets.append(
        (
            bottleneck_target(
                det.net, det.bottleneck, det_dep.codec, cfg.bottleneck.target_cut, ""
            ),
            _latent_bytes(det, det_dep.codec, scored),
        )
    )
    runs: list[VariationalRun] = []
    for v in variational:
        dep = deploy(v.net, v.bottleneck, v.key[:8])
        setting = f"kl={v.config.kl_weight:g}"
        targets.append(
            (
                bottleneck_target(
                    v.net, v.bottleneck, dep.codec, cfg.bottleneck.target_cut, setting
                ),
                _latent_bytes(v, dep.codec, scored),
            )
        )
        runs.append(
            VariationalRun(
                v.config.kl_weight,
                float(v.metrics["val_acc"]),
                str(v.path),
                dep.codec_name,
                chosen == v.config.kl_weight,
            )
        )
    base_bytes = _mean_bytes(teacher, cfg.defence_cut, cfg.defence_codec, scored)
    for sigma in cfg.noise_sigmas:
        t = feature_target(teacher, cfg.defence_cut, cfg.defence_codec, GaussianNoise(sigma))
        targets.append((t, base_bytes))
    for p in cfg.dropout_ps:
        t = feature_target(teacher, cfg.defence_cut, cfg.defence_codec, FeatureDropout(p))
        targets.append((t, base_bytes))
    targets.append((nothing_sent(teacher), 0.0))

    plan = [
        (t, nbytes, name, adaptive)
        for t, nbytes in targets
        for name, adaptive in attacks_for(t, ood=True)
    ]

    rows: list[AssessmentRow] = []
    pictures: list[np.ndarray] = []
    accuracy: dict[str, float] = {}
    originals = scored.images
    for i, (t, nbytes, name, adaptive) in enumerate(plan):
        if t.label not in accuracy:
            accuracy[t.label] = _task_accuracy(t, teacher.eval(), acc_data)
        attacker_data = aux_ood if name == "inverse-ood" else aux
        rec = attack(name, t, originals, attacker_data, cfg.attack, adaptive, progress)
        s = ssim(originals, rec.images)
        rows.append(
            AssessmentRow(
                attack=name,
                adaptive=adaptive,
                cut=t.cut,
                codec=t.codec,
                defence=t.defence,
                setting=t.setting,
                ssim=float(s.mean()),
                psnr_db=float(psnr(originals, rec.images).mean()),
                recognisability=recognisability(classifier, rec.images, scored.labels),
                task_accuracy=accuracy[t.label],
                images=len(scored),
                attack_seconds=rec.seconds,
                aux=ood_name if name == "inverse-ood" else "train",
                bytes_per_input=nbytes,
                ssim_p90=float(s.quantile(0.9)),
            )
        )
        pictures.append(to_u8(rec.images[: cfg.grid_images]))
        report(progress, "privacy attacks", i + 1, len(plan))

    cls_acc = recognisability(classifier, originals, scored.labels)
    conditions = PrivacyConditions(
        config=to_json(dataclasses.asdict(cfg)),
        model=model,
        scored_images=len(scored),
        accuracy_images=len(acc_data),
        classifier="fmnist-small (trained on the training split)",
        classifier_accuracy=cls_acc,
        deterministic_val_acc=det_val,
        selection=(
            f"largest KL weight with validation accuracy >= the deterministic bottleneck's "
            f"({det_val:.4f}) - {cfg.max_val_drop:g}"
        ),
        variational=tuple(runs),
    )
    result = PrivacyResult(tuple(rows), conditions)
    return result, Reconstructions(to_u8(originals[: cfg.grid_images]), tuple(pictures))


def _payload(codec: Codec, z: torch.Tensor) -> float:
    """Mean payload bytes of ``z``'s rows coded one at a time, as the device sends them."""
    return sum(codec.encode(z[i : i + 1]).payload_bytes for i in range(z.shape[0])) / z.shape[0]


@torch.inference_mode()
def _mean_bytes(net: BlockNet, cut: int, codec: str, data: Dataset) -> float:
    return _payload(get_codec(codec), net.eval().run_until(data.images, cut))


@torch.inference_mode()
def _latent_bytes(tb: TrainedBottleneck, codec: Codec, data: Dataset) -> float:
    return _payload(codec, torch.round(tb.bottleneck.encoder.eval()(data.images)))
