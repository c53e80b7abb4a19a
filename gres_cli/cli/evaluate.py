"""`gres eval`: score a model or saved predictions on a GRD dataset split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gres_cli.cli.common import err_console, fail, user_errors


def evaluate(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder.")],
    model: Annotated[str | None, typer.Option(help="Hub repo id or model folder to run.")] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(help="`gres segment` JSONL file, or a folder of masks <group>/<stem>.png."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to score (default: test if present, else all).")
    ] = None,
    margin: Annotated[
        float | None, typer.Option(help="m for --model (default: the model's).")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write every number as JSON here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per model batch.")] = 16,
    margins: Annotated[
        str | None,
        typer.Option(help="With --model: also score these margins, e.g. -0.2,0,0.2 (one pass)."),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(help="With --margins: print the m that maximises this metric (e.g. acc)."),
    ] = None,
) -> None:
    """Score GRES predictions: IoU metrics with negatives counted, and the present/absent decision.

    Protocol `gres`: original resolution; an empty prediction on an absent target has IoU 1, any
    pixel on it IoU 0; oIoU = cIoU (cumulative), mIoU = gIoU (mean per pair), prec@0.5-0.9,
    N-acc/T-acc (gRefCOCO's names), acc/precision/recall/f1 of the decision.

    Example: `gres eval data/synth --model examples/demo-model --split test --report r.json`
    """
    from grd_tools.format import load
    from gres_cli.evaluation.run import (
        FolderPredictions,
        JsonlPredictions,
        dataset_hash,
        score_model,
        score_predictions,
    )

    if (model is None) == (predictions is None):
        fail("pass exactly one of --model or --predictions")
    sweep: list[float] = []
    if margins is not None:
        if model is None:
            fail("--margins needs --model (saved predictions hold decisions, not masks for all m)")
        try:
            sweep = sorted({float(x) for x in margins.split(",") if x.strip()})
        except ValueError:
            fail(f"--margins {margins!r}: expected numbers like -0.2,0,0.2")
    if calibrate is not None and not sweep:
        fail("--calibrate needs --margins")
    with user_errors():
        ds = load(dataset)
        if split is None:
            split = "test" if any(g.split == "test" for g in ds.groups) else None
        settings = {"protocol": "gres", "resolution": "original", "split": split}
        settings["dataset"] = str(dataset)
        settings["dataset_sha256"] = dataset_hash(dataset)
        missing: list[str] = []
        if predictions is not None:
            if not predictions.exists():
                fail(f"--predictions {predictions}: no such file or folder")
            source = (
                FolderPredictions(predictions)
                if predictions.is_dir()
                else JsonlPredictions(predictions)
            )
            meter, missing = score_predictions(ds, source, split)
            settings["predictions"] = str(predictions)
        else:
            meter, used, sweeps = score_model(
                ds, model, split, margin, sweep, device=device, batch_size=batch_size
            )
            settings.update({"model": model, "margin": used})
    metrics = meter.compute()
    result = {
        "metrics": metrics,
        "settings": settings,
        "pairs": meter.pairs,
        "missing": missing,
        "groups": meter.per_group(),
    }
    if sweep:
        curve = {str(m): sweeps[m].compute() for m in sweep}
        result["margin_sweep"] = curve
        if calibrate is not None:
            if calibrate not in metrics:
                fail(f"--calibrate {calibrate!r}: not a metric ({', '.join(metrics)})")
            best = max(sweep, key=lambda m: (curve[str(m)][calibrate], -abs(m)))
            result["calibrated"] = {"metric": calibrate, "margin": best, **curve[str(best)]}
    if report is not None:
        from grd_tools.fsutil import atomic_write_text

        atomic_write_text(report, json.dumps(result, indent=2) + "\n")
    from rich.table import Table

    table = Table(title=f"gres eval ({meter.pairs} pairs, protocol gres, original resolution)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    err_console.print(table)
    if missing:
        err_console.print(f"{len(missing)} pairs had no prediction (counted as empty)")
    if sweep:
        table = Table(title="margin sweep (one forward pass)")
        for col in ("m", "acc", "f1", "mIoU", "oIoU", "N-acc", "T-acc"):
            table.add_column(col, justify="right")
        for m in sweep:
            row = result["margin_sweep"][str(m)]
            table.add_row(
                f"{m:g}",
                *(f"{row[k]:.4f}" for k in ("acc", "f1", "mIoU", "oIoU", "N-acc", "T-acc")),
            )
        err_console.print(table)
        if "calibrated" in result:
            c = result["calibrated"]
            err_console.print(
                f"calibrated: --margin {c['margin']:g} maximises {calibrate} ({c[calibrate]:.4f})"
            )
    if report is None and not err_console.is_terminal:
        typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    """Add `gres eval` to the top-level app."""
    app.command("eval")(evaluate)
