"""Rate vs accuracy: what each way of crossing the link costs in bytes and accuracy.

Three families, all measured on the same Fashion-MNIST test images, one input
at a time through a real codec (rate = payload bytes on the wire; the header
is reported separately):

* **input offloading**: the image as 8-bit pixels, PNG, lossless WebP, and
  JPEG / WebP at a sweep of qualities; the full model runs on the decoded image;
* **features at every cut**: fp32 / fp16 / int8 (per tensor) of the full
  model's activations, decoded and fed to the tail;
* **learned bottleneck**: head distillation (beta = 0) and supervised
  compression at a sweep of beta, latents entropy-coded under the learned
  prior (:mod:`collabinfer.codec.entropy`).

Bottlenecks are trained on the training split and checked on validation;
the test images are only encoded and classified. The result and its file
are typed in :mod:`~collabinfer.experiments.rate_accuracy_schema` (re-exported
here), so the report reads them without this module's training code::

    result = run_rate_accuracy(RateAccuracyConfig.make(quick=True), teacher,
                               train, val, test, cache, progress)
    result.save(Path("results/rate-accuracy"))  # rate_accuracy.json
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from collabinfer.codec import Codec, get_codec
from collabinfer.data.fashion_mnist import Dataset
from collabinfer.experiments.rate_accuracy_schema import (
    BottleneckRun,
    EncoderCost,
    Point,
    RateAccuracyConditions,
    RateAccuracyResult,
    best_under,
    summary,
)
from collabinfer.experiments.records import to_json
from collabinfer.model.blocks import BlockNet
from collabinfer.model.bottleneck import deploy
from collabinfer.plan.profile import one_thread, profile_model
from collabinfer.progress import ProgressFn, report
from collabinfer.train.bottleneck import BottleneckConfig, train_or_load_bottleneck

__all__ = [
    "FEATURE_CODECS",
    "INPUT_CODECS",
    "Point",
    "RateAccuracyConfig",
    "RateAccuracyResult",
    "accuracy",
    "best_under",
    "codec_point",
    "feature_points",
    "input_points",
    "run_rate_accuracy",
    "summary",
]

QUALITIES = (10, 25, 50, 75, 90, 95)
INPUT_CODECS = (
    "u8",
    "png",
    "webp-lossless",
    *(f"{fmt}-q{q}" for fmt in ("jpeg", "webp") for q in QUALITIES),
)
FEATURE_CODECS = ("fp32", "fp16", "int8")


@torch.inference_mode()
def codec_point(
    method: str,
    cut: int,
    setting: str,
    codec: Codec,
    head: Callable[[torch.Tensor], torch.Tensor],
    tail: Callable[[torch.Tensor], torch.Tensor],
    data: Dataset,
    batch_size: int = 250,
) -> Point:
    """Encode each input's tensor at the cut on its own (batch 1), decode, classify."""
    correct, payload, header = 0, 0, 0
    for i in range(0, len(data), batch_size):
        z = head(data.images[i : i + batch_size])
        decoded = []
        for j in range(z.shape[0]):
            enc = codec.encode(z[j : j + 1])
            payload += enc.payload_bytes
            header += enc.header_bytes
            decoded.append(codec.decode(enc))
        logits = tail(torch.cat(decoded))
        correct += int((logits.argmax(1) == data.labels[i : i + batch_size]).sum())
    n = len(data)
    return Point(method, cut, setting, payload / n, correct / n, header / n)


def input_points(
    model: BlockNet,
    data: Dataset,
    codecs: Sequence[str] = INPUT_CODECS,
    progress: ProgressFn | None = None,
) -> list[Point]:
    out = []
    for i, name in enumerate(codecs):
        out.append(codec_point("input", 0, name, get_codec(name), lambda x: x, model, data))
        report(progress, "input codecs", i + 1, len(codecs))
    return out


def feature_points(
    model: BlockNet,
    data: Dataset,
    codecs: Sequence[str] = FEATURE_CODECS,
    cuts: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> list[Point]:
    cuts = list(cuts) if cuts is not None else list(range(1, model.num_blocks))
    out = []
    total = len(cuts) * len(codecs)
    for a, k in enumerate(cuts):
        for b, name in enumerate(codecs):
            head, tail = _split(model, k)
            out.append(codec_point("features", k, name, get_codec(name), head, tail, data))
            report(progress, "feature cuts", a * len(codecs) + b + 1, total)
    return out


def _split(
    model: BlockNet, k: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    def head(x: torch.Tensor) -> torch.Tensor:
        return model.run_until(x, k)

    def tail(z: torch.Tensor) -> torch.Tensor:
        return model.run_from(z, k)

    return head, tail


@torch.inference_mode()
def accuracy(model: BlockNet, data: Dataset, batch_size: int = 500) -> float:
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += int(
            (
                model(data.images[i : i + batch_size]).argmax(1) == data.labels[i : i + batch_size]
            ).sum()
        )
    return correct / len(data)


@dataclass(frozen=True)
class RateAccuracyConfig:
    """The full run trains the bottleneck the demo deploys (same config, so the
    cache is shared) and two more betas; ``quick``: a 2,000-image test subset,
    bottlenecks trained on 20k images for fewer epochs."""

    quick: bool = False
    num_inputs: int = 10_000
    subset_seed: int = 0
    betas: tuple[float, ...] = (0.03, 0.1, 0.3)
    target_cut: int = 4
    channels: int = 8
    hidden: int = 64
    train_subset: int = 0
    distill_epochs: int = 2
    rate_epochs: int = 2
    tail_epochs: int = 2

    @classmethod
    def make(cls, quick: bool) -> RateAccuracyConfig:
        if quick:
            return cls(
                quick=True,
                num_inputs=2000,
                betas=(0.1, 0.3),
                train_subset=20_000,
                rate_epochs=1,
                tail_epochs=1,
            )
        return cls()


def run_rate_accuracy(
    cfg: RateAccuracyConfig,
    teacher: BlockNet,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
) -> RateAccuracyResult:
    """Every family on the same test inputs; bottlenecks trained (or reused) first.

    ``progress`` hears the bottleneck training (the recipe's phases) and then
    each measured family ("input codecs", "feature cuts", "bottlenecks").
    """
    data = test.subset(cfg.num_inputs, cfg.subset_seed)
    base = BottleneckConfig(
        target_cut=cfg.target_cut,
        channels=cfg.channels,
        hidden=cfg.hidden,
        train_subset=cfg.train_subset,
        distill_epochs=cfg.distill_epochs,
        rate_epochs=0,
        tail_epochs=0,
    )
    hd = train_or_load_bottleneck(base, teacher, train, val, cache, progress)
    trained = [("bottleneck-hd", 0.0, hd)]
    for beta in cfg.betas:
        sc_cfg = dataclasses.replace(
            base, beta=beta, rate_epochs=cfg.rate_epochs, tail_epochs=cfg.tail_epochs
        )
        trained.append(
            (
                "bottleneck-sc",
                beta,
                train_or_load_bottleneck(sc_cfg, teacher, train, val, cache, progress, init=hd),
            )
        )
    points: list[Point] = []
    points += input_points(teacher, data, progress=progress)
    points += feature_points(teacher, data, progress=progress)
    bn_meta: list[BottleneckRun] = []
    for i, (method, beta, tb) in enumerate(trained):
        dep = deploy(tb.net, tb.bottleneck, tb.key[:8])
        head, tail = _split(tb.net, 1)
        p = codec_point(method, cfg.target_cut, f"beta={beta:g}", dep.codec, head, tail, data)
        points.append(p)
        val_acc = tb.metrics.get("val_acc")
        bn_meta.append(
            BottleneckRun(
                method,
                beta,
                None if val_acc is None else float(val_acc),
                str(tb.path),
                dep.codec_name,
            )
        )
        report(progress, "bottlenecks", i + 1, len(trained))
    conditions = RateAccuracyConditions(
        num_inputs=len(data),
        config=to_json(dataclasses.asdict(cfg)),  # as the file has it: lists, not tuples
        rate="payload bytes per input, mean; headers in header_bytes_per_input",
        bottlenecks=tuple(bn_meta),
        encoder=_encoder_cost(trained[-1][2].net),
    )
    return RateAccuracyResult(tuple(points), accuracy(teacher, data), conditions)


def _encoder_cost(net: BlockNet) -> EncoderCost:
    """Device-side encoder and server-side decoder: params, FLOPs, batch-1 ms (this CPU)."""
    with one_thread():
        prof = profile_model(
            net, "bottleneck", repeats=30, input_codecs=("u8",), feature_codecs=("fp32",)
        )
    enc, dec = prof.blocks[0], prof.blocks[1]
    return EncoderCost(
        encoder_params=enc.params,
        encoder_mflops=enc.flops / 1e6,
        encoder_ms=enc.time_ms,
        decoder_params=dec.params,
        decoder_mflops=dec.flops / 1e6,
        decoder_ms=dec.time_ms,
    )
