"""The ``collabinfer`` command: train, profile, plan, and run Table 1.

Every command catches :class:`~collabinfer.errors.CollabInferError` and prints
its message (exit code 2) instead of a traceback: a missing dataset or a
corrupt checkpoint is the user's to fix, and the message says how.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from collabinfer.errors import CollabInferError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="zoo model name (see `collabinfer models`)")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="folder with the Fashion-MNIST IDX files")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="checkpoint cache (default ~/.cache/collabinfer)")
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _named_tasks(progress: Progress, every: int = 1) -> Callable[[str, int, int], None]:
    """A ``(name, done, total)`` callback that keeps one progress bar per name."""
    tasks: dict[str, TaskID] = {}

    def cb(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total, info="")
        if done % every == 0 or done == total:
            progress.update(tasks[name], completed=done, total=total)

    return cb


def _training_tasks(
    cb: Callable[[str, int, int], None], label: str | None = None
) -> Callable[[str, int, int, dict[str, float]], None]:
    """Adapt a recipe's ``(phase, step, total, stats)`` callback to one bar per phase
    (or one bar called ``label``)."""

    def tcb(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        cb(label or f"train {phase}", step, total)

    return tcb


def _wrote_experiment(md: Path, paths: list[Path], t0: float) -> None:
    console.print(md.read_text())
    console.print("wrote " + ", ".join(str(p) for p in paths))
    console.print(f"done in {time.perf_counter() - t0:.0f} s")


def _fail(exc: CollabInferError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def train_models(
    names: list[str], data: Path | None, cache: Path | None, force: bool = False
) -> dict:
    """Train (or reuse) each named model with a progress bar; returns name -> (model, result)."""
    from collabinfer.train import DEFAULT_CONFIGS, TrainConfig, train_or_load

    out = {}
    with _progress() as progress:
        for name in names:
            cfg = DEFAULT_CONFIGS.get(name, TrainConfig(model=name))
            task = progress.add_task(f"train {name}", total=None, info="")

            def cb(
                phase: str,
                step: int,
                total: int,
                stats: dict,
                task: TaskID = task,
                model: str = name,
            ) -> None:
                if phase == "train":
                    progress.update(
                        task,
                        total=total,
                        completed=step,
                        info=f"epoch {stats['epoch']:.0f} loss {stats['loss']:.3f}",
                    )
                else:
                    progress.console.print(
                        f"  {model}: epoch {step}/{total} val acc {stats['val_acc']:.2%}"
                    )

            model, res = train_or_load(cfg, cache=cache, data_root=data, progress=cb, force=force)
            verb = "reused" if res.reused else "trained"
            progress.update(
                task,
                total=1,
                completed=1,
                info=f"{verb}: test acc {res.metrics.get('test_acc', float('nan')):.2%}",
            )
            out[name] = (model, res)
    return out


def bottleneck_candidate(
    teacher: Any,
    name: str,
    teacher_metrics: dict[str, float],
    data: Path | None,
    cache: Path | None,
) -> Any:
    """Train (once) and deploy the default learned bottleneck; profile it on validation images."""

    from collabinfer.data import load_split
    from collabinfer.experiments.table1 import BottleneckCandidate
    from collabinfer.model.bottleneck import deploy
    from collabinfer.plan.profile import one_thread, profile_model
    from collabinfer.train.bottleneck import BOTTLENECK_SUFFIX, default_bottleneck

    with _progress() as progress:
        task = progress.add_task(f"train {name}{BOTTLENECK_SUFFIX}", total=None, info="")

        def cb(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
            progress.update(task, total=total, completed=step, info=f"{phase} {stats['loss']:.3f}")

        tb = default_bottleneck(teacher, cache, data, cb)
        progress.update(task, total=1, completed=1, info=f"val acc {tb.metrics['val_acc']:.2%}")
    dep = deploy(tb.net, tb.bottleneck, tb.key[:8])
    with one_thread():
        prof = profile_model(
            dep.net,
            name + BOTTLENECK_SUFFIX,
            repeats=50,
            cut_codecs={1: [dep.codec_name]},
            byte_samples=load_split("val", data).images[:200],
        )
    return BottleneckCandidate(
        name + BOTTLENECK_SUFFIX, dep.net, prof, tb.metrics["val_acc"], teacher_metrics["val_acc"]
    )


def dynamic_candidate(
    full: Any,
    name: str,
    full_metrics: dict[str, float],
    cfg: Any,
    data: Path | None,
    cache: Path | None,
) -> Any:
    """Gates + exits for the collabinfer row (trained once, then cached)."""
    from collabinfer.data import load_split
    from collabinfer.experiments.table1 import make_dynamic_candidate

    train, val = load_split("train", data), load_split("val", data)
    with _progress() as progress:
        tcb = _training_tasks(_named_tasks(progress, every=10))
        return make_dynamic_candidate(
            full, name, full_metrics["val_acc"], train, val, cfg.dynamic_max_drop, cache, tcb
        )


@app.command()
def models() -> None:
    """List the model zoo."""
    from collabinfer.model.zoo import list_models, model_spec

    table = Table("name", "description")
    for name in list_models():
        table.add_row(name, model_spec(name).description)
    console.print(table)


@app.command()
def train(
    model: ModelOpt = "fmnist-resnet",
    data: DataOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option(help="train even if a checkpoint exists")] = False,
) -> None:
    """Train a zoo model on Fashion-MNIST (cached by config + data hash)."""
    try:
        ((_, res),) = train_models([model], data, cache, force).values()
    except CollabInferError as exc:
        raise _fail(exc) from exc
    console.print(f"checkpoint: {res.path}")
    console.print(json.dumps(res.metrics, indent=2))


@app.command()
def profile(
    model: ModelOpt = "fmnist-resnet",
    repeats: Annotated[int, typer.Option(help="timed batch-1 passes per block")] = 50,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the profile here")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads for timing")] = 1,
) -> None:
    """Per block: FLOPs, params, output shape, bytes per codec at the cut, CPU time."""
    import torch

    from collabinfer.model.zoo import create_model
    from collabinfer.plan.profile import profile_model

    try:
        torch.set_num_threads(threads)
        net = create_model(model)  # timing, FLOPs and bytes do not depend on the weights
        prof = profile_model(net, model, repeats=repeats)
    except CollabInferError as exc:
        raise _fail(exc) from exc
    table = Table(
        "#",
        "block",
        "MFLOPs",
        "params",
        "output shape",
        "fp32 B",
        "fp16 B",
        "int8 B",
        "ms (median)",
        title=f"{model} on {prof.measured_on}, batch 1, {repeats} repeats",
    )
    for b in prof.blocks:
        cut = prof.cuts[b.index + 1].codecs
        table.add_row(
            str(b.index),
            b.name,
            f"{b.flops / 1e6:.3f}",
            f"{b.params:,}",
            str(b.out_shape),
            f"{cut['fp32'].payload_bytes:,}",
            f"{cut['fp16'].payload_bytes:,}",
            f"{cut['int8'].payload_bytes:,}",
            f"{b.time_ms:.3f}",
        )
    console.print(table)
    console.print(
        f"input: {prof.cuts[0].codecs['u8'].payload_bytes} bytes as 8-bit pixels; "
        f"total {sum(b.flops for b in prof.blocks) / 1e6:.2f} MFLOPs, {prof.total_ms():.3f} ms"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        prof.save(json_out)
        console.print(f"wrote {json_out}")


@app.command()
def demo(
    quick: Annotated[
        bool, typer.Option(help="a seeded 1,000-image subset of the test set")
    ] = False,
    link: Annotated[str, typer.Option(help="access link profile: 3g, lte or wifi")] = "lte",
    out: Annotated[Path | None, typer.Option(help="write table1.json/.md and plots here")] = None,
    num_inputs: Annotated[
        int | None, typer.Option(help="override the number of test inputs")
    ] = None,
    constant: Annotated[
        bool, typer.Option("--constant", help="constant bandwidth instead of a trace")
    ] = False,
    trace_seed: Annotated[int, typer.Option(help="seed of the fluctuating bandwidth trace")] = 7,
    device_factor: Annotated[
        float | None, typer.Option(help="device slow-down vs this CPU")
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option("--simulate", help="collabinfer row on the virtual clock too (no sockets)"),
    ] = False,
    real_inputs: Annotated[
        int, typer.Option(help="inputs the real-socket collabinfer row runs (it takes wall time)")
    ] = 1000,
    model: ModelOpt = "fmnist-resnet",
    local_model: Annotated[
        str, typer.Option("--local-model", help="the model LC runs on the device")
    ] = "fmnist-small",
    dynamic: Annotated[
        bool,
        typer.Option(help="collabinfer row: gated backbone + calibrated exits on the device"),
    ] = True,
    dynamic_max_drop: Annotated[
        float, typer.Option(help="validation accuracy the exit rule may give up")
    ] = 0.005,
    bottleneck: Annotated[
        bool, typer.Option(help="offer the learned bottleneck to the collabinfer row")
    ] = True,
    bottleneck_max_drop: Annotated[
        float, typer.Option(help="validation accuracy the bottleneck may lose to be used")
    ] = 0.01,
    private: Annotated[
        bool, typer.Option(help="split rows keep the raw input on the device")
    ] = True,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Table 1, measured: LC, EC, CC, best static split and collabinfer on Fashion-MNIST."""
    import torch

    from collabinfer.data import load_split
    from collabinfer.experiments.table1 import Table1Config, run_table1
    from collabinfer.plan.profile import profile_model

    t0 = time.perf_counter()
    try:
        base = Table1Config()
        cfg = Table1Config(
            link=link,
            fluctuating=not constant,
            trace_seed=trace_seed,
            private_splits=private,
            full_model=model,
            local_model=local_model,
            real_sockets=not simulate,
            dynamic=dynamic,
            dynamic_max_drop=dynamic_max_drop,
            bottleneck=bottleneck and not dynamic,
            bottleneck_max_drop=bottleneck_max_drop,
            real_inputs=real_inputs,
            num_inputs=num_inputs or (1000 if quick else 10_000),
            device_factor=device_factor if device_factor is not None else base.device_factor,
        )
        trained = train_models([cfg.full_model, cfg.local_model], data, cache)
        full, local = trained[cfg.full_model][0], trained[cfg.local_model][0]
        candidate = None
        if cfg.bottleneck:
            candidate = bottleneck_candidate(
                full, cfg.full_model, trained[cfg.full_model][1].metrics, data, cache
            )
        dyn = None
        if cfg.dynamic:
            dyn = dynamic_candidate(
                full, cfg.full_model, trained[cfg.full_model][1].metrics, cfg, data, cache
            )
        torch.set_num_threads(1)  # batch-1 timing on one core: stable, and fair to a device
        console.print("profiling both models (batch 1, one thread)...")
        full_prof = profile_model(full, cfg.full_model, repeats=50)
        local_prof = profile_model(local, cfg.local_model, repeats=50)
        test = load_split("test", data)
        with _progress() as progress:
            cb = _named_tasks(progress, every=50)
            result = run_table1(
                cfg,
                full,
                local,
                full_prof,
                local_prof,
                test,
                progress=cb,
                cache=cache,
                log_dir=(out / "logs") if out else None,
                bottleneck=candidate,
                dynamic=dyn,
            )
    except CollabInferError as exc:
        raise _fail(exc) from exc
    from collabinfer.report.table1 import COLUMNS, fmt

    table = Table(
        *(h for _, h, _ in COLUMNS),
        title=f"Table 1, measured ({cfg.num_inputs} inputs, link {link})",
    )
    for row in result.rows:
        d = dataclasses.asdict(row)
        table.add_row(*(fmt(k, d[k]) for k, _, _ in COLUMNS))
    console.print(table)
    console.print(f"[dim]{result.conditions['tier_labels']}[/dim]")
    for row in result.rows:
        console.print(f"[dim]{row.paradigm}: {escape(row.plan)}[/dim]")
    if out is not None:
        from collabinfer.report.table1 import write_table1

        paths = write_table1(result, out)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        console.print("wrote " + ", ".join(str(p) for p in paths))
    console.print(f"done in {time.perf_counter() - t0:.0f} s")


experiment_app = typer.Typer(
    no_args_is_help=True, help="Run one experiment; write JSON, markdown, plots."
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("rate-accuracy")
def rate_accuracy_cmd(
    out: Annotated[Path, typer.Option(help="write rate_accuracy.json/.md/.png here")] = Path(
        "results/rate-accuracy"
    ),
    quick: Annotated[
        bool, typer.Option(help="2,000 test images, smaller training, 2 betas")
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Accuracy vs bytes per input: image codecs, features at every cut, learned bottlenecks."""

    from collabinfer.data import load_split
    from collabinfer.experiments.rate_accuracy import RateAccuracyConfig, run_rate_accuracy
    from collabinfer.report.rate_accuracy import write_rate_accuracy

    t0 = time.perf_counter()
    try:
        cfg = RateAccuracyConfig.make(quick)
        teacher = train_models(["fmnist-resnet"], data, cache)["fmnist-resnet"][0]
        train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
        with _progress() as progress:
            cb = _named_tasks(progress)
            tcb = _training_tasks(cb, "train bottlenecks")
            result = run_rate_accuracy(cfg, teacher, train, val, test, cache, cb, tcb)
        paths = write_rate_accuracy(result, out)
    except CollabInferError as exc:
        raise _fail(exc) from exc
    _wrote_experiment(out / "rate_accuracy.md", paths, t0)


@experiment_app.command("dynamic")
def dynamic_cmd(
    out: Annotated[Path, typer.Option(help="write dynamic.json/.md and plots here")] = Path(
        "results/dynamic"
    ),
    quick: Annotated[
        bool, typer.Option(help="2,000 test images, training on a 16k subset, fewer settings")
    ] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Early exits (entropy vs calibrated), gates, path-aware exits vs the static backbone."""
    from collabinfer.data import load_split
    from collabinfer.experiments.dynamic import DynamicConfig, run_dynamic
    from collabinfer.report.dynamic import write_dynamic

    t0 = time.perf_counter()
    try:
        cfg = DynamicConfig.make(quick)
        backbone = train_models([cfg.backbone], data, cache)[cfg.backbone][0]
        train, val, test = (load_split(s, data) for s in ("train", "val", "test"))
        with _progress() as progress:
            cb = _named_tasks(progress)
            result = run_dynamic(cfg, backbone, train, val, test, cache, cb, _training_tasks(cb))
        paths = write_dynamic(result.to_json_dict(), out)
    except CollabInferError as exc:
        raise _fail(exc) from exc
    _wrote_experiment(out / "dynamic.md", paths, t0)


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Argument(help="a folder written by `demo` or `experiment`")],
) -> None:
    """Re-render markdown and plots from result files (no model is run)."""
    from collabinfer.report.dynamic import render_dynamic
    from collabinfer.report.rate_accuracy import render_rate_accuracy
    from collabinfer.report.table1 import render_table1

    try:
        has_dynamic = (out / "dynamic.json").exists()
        paths = render_dynamic(out) if has_dynamic else []
        if (out / "rate_accuracy.json").exists() and not (out / "table1.json").exists():
            paths += render_rate_accuracy(out)
        elif (out / "table1.json").exists() or not has_dynamic:
            paths += render_table1(out)  # also the error when no result file is there
        for p in paths:
            console.print(f"wrote {p}")
    except CollabInferError as exc:
        raise _fail(exc) from exc


def _register_serving_commands() -> None:
    """The tier server, the device client and the shaping relay live in ``serve/``."""
    from collabinfer.serve.client_cli import run
    from collabinfer.serve.relay_cli import relay
    from collabinfer.serve.server_cli import serve

    app.command(help=serve.__doc__)(serve)
    app.command(help=run.__doc__)(run)
    app.command(help=relay.__doc__)(relay)


_register_serving_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
