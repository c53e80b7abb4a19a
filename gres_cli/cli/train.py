"""`gres train`: train GRSer on a GRD dataset. torch is imported inside the command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gres_cli.cli.common import (
    EXIT_FAULTS,
    err_console,
    fail,
    refuse_sources,
    user_errors,
    writable_folder,
)


def train(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder (validated first).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, log, best model.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON training config (may name a `preset`).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Training preset: tiny-synth (default) or grser-base."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue OUT/checkpoint exactly, with the run's own saved config."),
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps in this run.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Override the schedule's total steps.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Train GRSer: mask, triplet, prototype and mirror losses on groups with negatives.

    Writes OUT/checkpoint (every `checkpoint_every` steps, atomic), OUT/log.jsonl and
    OUT/best (a Hub-ready model folder with its validation metrics). Ctrl-C keeps the last
    checkpoint; `--resume` continues it step for step.

    Example: `gres grd synth data/synth --size 64 --groups 300` then
    `gres train data/synth --out runs/demo`
    """
    from grd_tools.validate import validate

    with user_errors():
        report = validate(dataset, check_pixels=False)
    errors = [i for i in report.issues if i.severity == "error"]
    if errors:
        for issue in errors[:10]:
            err_console.print(escape(f"  {issue.where}: {issue.message}"))
        fail(f"{dataset}: fails `gres grd validate` ({len(errors)} errors); fix it first")
    refuse_sources(out, "--out", {"DATASET": dataset})  # before writable_folder creates OUT

    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from gres_cli.training.config import TrainConfig
    from gres_cli.training.loop import check_resume_config, saved_config
    from gres_cli.training.loop import train as run

    with user_errors():
        if config:
            cfg = TrainConfig.load(config)
        elif preset is None and resume and saved_config(out) is not None:
            cfg = saved_config(out)  # the run's own recipe
        else:
            cfg = TrainConfig.preset(preset or "tiny-synth")
        if steps is not None:
            cfg.steps = steps
        if threads is not None:
            cfg.threads = threads
    # OUT/best would replace a starting model kept in the run folder
    refuse_sources(out, "--out", {"init_from": cfg.init_from})
    writable_folder(out, "--out")
    with user_errors():
        if resume:  # before the progress bar: a refusal is one line
            check_resume_config(out, cfg)
        total = cfg.steps
        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[losses]}"),
            TimeRemainingColumn(),
        )
        try:
            quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
            with Progress(*columns, console=err_console, disable=quiet) as bar:
                task = bar.add_task("train", total=total, losses="")

                def on_step(step: int, terms: dict[str, float]) -> None:
                    text = " ".join(f"{k} {v:.3f}" for k, v in terms.items())
                    bar.update(task, completed=step, losses=text)

                result = run(dataset, out, cfg, resume, max_steps, device, on_step)
        except KeyboardInterrupt:
            err_console.print(
                escape(
                    "interrupted; resume from the last checkpoint with: "
                    f"gres train {dataset} --out {out} --resume"
                )
            )
            raise typer.Exit(EXIT_FAULTS) from None
        except torch.OutOfMemoryError:
            fail("out of GPU memory: lower groups_per_step or images_per_group, or use bf16")
    best = result.best
    summary = f"done: {result.steps} steps, last loss {result.last_loss:.4f}"
    if best:
        summary += (
            f"; best val acc {best['acc']:.3f}, mIoU(pos) {best['mIoU_pos']:.3f}"
            f" at m={best['margin']} -> {out / 'best'}"
        )
    if os.environ.get("RANK", "0") == "0":
        err_console.print(escape(summary))


def register(app: typer.Typer) -> None:
    """Add `gres train` to the top-level app."""
    app.command("train")(train)
