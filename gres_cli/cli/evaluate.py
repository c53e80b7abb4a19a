"""`gres eval`: score a model or saved predictions on a GRD dataset split."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from grd_tools.paths import is_within
from gres_cli.cli.common import err_console, fail, refuse_sources, user_errors, writable_folder


def evaluate(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="GRD dataset folder, or a folder `gres grd convert` reads (coco, hf, cosod, "
            "d3, refcoco), converted on the fly."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Hub repo id or model folder to run: a GRSer, an open-vocabulary backend "
            "(CLIPSeg, ...) or a gres-backend settings folder."
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="With a Hub --model: branch, tag or commit to load.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="`gres segment` JSONL file, or a folder of (grey-level) masks "
            "`<group>/<stem>.png`."
        ),
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
    workers: Annotated[
        int, typer.Option(help="With --model: image-decoding worker processes (see gres segment).")
    ] = 0,
    margins: Annotated[
        str | None,
        typer.Option(help="With --model: also score these margins, e.g. -0.2,0,0.2 (one pass)."),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(help="With --margins: print the m that maximises this metric (e.g. acc)."),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="Scoring convention: gres (default), lisa, lavt, rela or cris "
            "(resolution, empty-target IoU, precision rule; see docs/evaluation.md)."
        ),
    ] = "gres",
    cosod_reference: Annotated[
        str,
        typer.Option(
            help="Co-SOD metric conventions: pysodmetrics (default) or eval-co-sod "
            "(the CoCA authors' toolbox; differs on empty ground truth and constant maps)."
        ),
    ] = "pysodmetrics",
    plots: Annotated[
        Path | None,
        typer.Option(help="Write PNG plots here (IoU histogram, precision curve, confusion, ...)."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Refuse predictions whose size differs from the image (default: resize)."
        ),
    ] = False,
    group_weights: Annotated[
        str | None,
        typer.Option(
            help="With --margins and a backend --model: also score these group weights gamma "
            "(e.g. 0,0.5,1,2; one pass), and let --calibrate choose gamma and m together."
        ),
    ] = None,
    save_calibrated: Annotated[
        Path | None,
        typer.Option(
            help="With --calibrate and a backend --model: write a gres-backend settings folder "
            "here (the checkpoint + the calibrated m); `--model DIR` then uses it, no flags."
        ),
    ] = None,
    no_group: Annotated[
        bool,
        typer.Option(
            "--no-group",
            help="With --model: score it without the group-wise step (each image alone), "
            "the single-image baseline.",
        ),
    ] = False,
    save_predictions: Annotated[
        Path | None,
        typer.Option(
            help="With --model: also save its answers here as gres segment writes them "
            "(records.jsonl, masks GROUP/EXPRESSION_ID/STEM.png); the report points at "
            "them, so gres view shows galleries. New, empty, or saved before with the same "
            "settings."
        ),
    ] = None,
    view: Annotated[
        bool,
        typer.Option(
            help="Also write a report site (gres view): REPORT-view beside --report, else "
            "./gres-eval-view. With --model, the predictions are saved for its galleries "
            "(default --save-predictions: REPORT-predictions, else ./gres-eval-predictions)."
        ),
    ] = False,
) -> None:
    """Score GRES predictions: IoU metrics with negatives counted, the present/absent decision,
    and (protocol gres) the co-salient metrics Sm, Em, Fm, MAE.

    Protocol `gres`: original resolution; an empty prediction on an absent target has IoU 1, any
    pixel on it IoU 0; oIoU = cIoU (cumulative), mIoU = gIoU (mean per pair), prec@0.5-0.9,
    N-acc/T-acc (gRefCOCO's names), acc/precision/recall/f1 of the decision. Other protocols
    reproduce LAVT, ReLA, CRIS and LISA's conventions. All values in [0, 1].

    Example: `gres eval data/synth --model examples/demo-model --split test --report r.json`
    """
    from gres_cli.evaluation.run import (
        FolderPredictions,
        JsonlPredictions,
        Scorer,
        dataset_hash,
        open_dataset,
        score_model,
        score_predictions,
        sweep_metrics,
    )
    from gres_cli.metrics.cosod import REFERENCES
    from gres_cli.metrics.masks import PROTOCOLS

    if protocol not in PROTOCOLS:
        fail(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if cosod_reference not in REFERENCES:
        fail(f"--cosod-reference {cosod_reference!r}: choose from {', '.join(REFERENCES)}")

    if (model is None) == (predictions is None):
        fail("pass exactly one of --model or --predictions")
    if save_predictions is not None and model is None:
        fail("--save-predictions needs --model (--predictions are saved already)")
    saving, saving_option = save_predictions, "--save-predictions"
    if saving is None and view and model is not None:  # the site's galleries need the masks
        saving, saving_option = _predictions_beside(report), "--view"
    model_folder = [Path(model)] if model is not None and Path(model).exists() else []
    for option, target in (("--report", report), ("--plots", plots)):  # never onto an input
        for source in (dataset, predictions, *model_folder):
            if target is not None and source is not None:
                t, src = target.resolve(), source.resolve()
                if is_within(t, src):
                    fail(f"{option} {target}: is or lies inside the input {source}; pick another")
    if saving is not None:
        site = None
        if view:  # where site_of_evaluation puts it
            site = report.with_name(f"{report.stem}-view") if report else Path("gres-eval-view")
        outputs = {"--report": report, "--plots": plots, "--save-calibrated": save_calibrated}
        outputs["the --view site"] = site
        _refuse_overlaps(saving, saving_option, [dataset, *model_folder], outputs)
    if report is not None:  # before the work, not after it
        if report.is_dir():
            fail(f"--report {report}: is a folder; give a file name such as report.json")
        writable_folder(report.parent, "--report")
    if plots is not None:
        writable_folder(plots, "--plots")
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
    weights: list[float] = []
    if group_weights is not None:
        if not sweep:
            fail("--group-weights needs --margins")
        try:
            weights = sorted({float(x) for x in group_weights.split(",") if x.strip()})
        except ValueError:
            fail(f"--group-weights {group_weights!r}: expected numbers like 0,0.5,1")
        if any(w < 0 for w in weights):
            fail("--group-weights must be >= 0")
    if save_calibrated is not None and calibrate is None:
        fail("--save-calibrated needs --calibrate METRIC (and --margins)")
    if save_calibrated is not None:
        if save_calibrated.exists():
            fail(f"--save-calibrated {save_calibrated}: already exists; choose a new folder")
        refuse_sources(save_calibrated, "--save-calibrated", {"DATASET": dataset, "--model": model})
        from gres_cli.backends.settings import calibrated

        with user_errors():  # a GRSer or an unknown model is refused before the work
            calibrated(model, revision, 0.0, {})
    if calibrate is not None and calibrate not in sweep_metrics(protocol):
        names = ", ".join(sweep_metrics(protocol))
        fail(f"--calibrate {calibrate!r}: not a metric of the margin sweep ({names})")
    with user_errors(), open_dataset(dataset) as (ds, source_format):
        if split is None:
            split = "test" if any(g.split == "test" for g in ds.groups) else None
        scorer = Scorer(protocol, cosod_reference, strict)
        resolution = scorer.masks.protocol.resolution
        settings = {"protocol": protocol, "resolution": resolution, "split": split}
        if scorer.cosod is not None:
            settings["cosod_reference"] = cosod_reference
        settings["dataset"] = str(dataset)
        settings["dataset_format"] = source_format
        settings["dataset_sha256"] = dataset_hash(ds.root)
        missing: list[str] = []
        saved = None
        if saving is not None and source_format != "grd" and saving_option == "--view":
            saving = None  # records of a temporary conversion's images: galleries need GRD
        elif saving is not None and source_format != "grd":
            fail(
                f"--save-predictions: {dataset} is read through a temporary conversion from "
                f"{source_format}; convert it with gres grd convert --to grd and evaluate that"
            )
        elif saving is not None:
            from gres_cli.evaluation.saved import SavedPredictions

            saved = SavedPredictions(saving, saving_option, settings["dataset_sha256"], split)
        if predictions is not None:
            if not predictions.exists():
                fail(f"--predictions {predictions}: no such file or folder")
            source = (
                FolderPredictions(predictions)
                if predictions.is_dir()
                else JsonlPredictions(predictions)
            )
            scorer, missing = score_predictions(ds, source, split, scorer)
            settings["predictions"] = str(predictions)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            progress = Progress(
                TextColumn("[bold]eval"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err_console,
                disable=not err_console.is_terminal,
            )
            with progress, saved.writing() if saved else contextlib.nullcontext():
                task = progress.add_task("pairs", total=sum(1 for _ in ds.pairs(split)))
                scorer, used, sweeps, weighed = score_model(
                    ds,
                    model,
                    split,
                    margin,
                    sweep,
                    scorer,
                    revision=revision,
                    on_scored=lambda n: progress.advance(task, n),
                    group=not no_group,
                    group_weights=weights,
                    saved=saved,
                    device=device,
                    batch_size=batch_size,
                    workers=workers,
                )
            settings.update(
                {"model": model, "revision": revision, "margin": used, "group": not no_group}
            )
            if saved is not None:
                settings["saved_predictions"] = str(saved.records_file)
                err_console.print(
                    escape(f"predictions: {saved.out} ({saved.records} records)"), soft_wrap=True
                )
    meter = scorer.masks
    metrics = scorer.metrics()
    missing += scorer.left_out
    result = {
        "metrics": metrics,
        "settings": settings,
        "pairs": meter.pairs,
        "left_out": len(scorer.left_out),
        "missing": missing,
        "warnings": scorer.warnings,
        "groups": meter.per_group(),
    }
    if sweep:
        curve = {str(m): sweeps[m].compute() for m in sweep}
        result["margin_sweep"] = curve
        if calibrate is not None:
            best = max(sweep, key=lambda m: (curve[str(m)][calibrate], -abs(m)))
            result["calibrated"] = {"metric": calibrate, "margin": best, **curve[str(best)]}
            weight = None
            if weighed:
                result["group_weight_sweep"] = {
                    str(w): {str(m): weighed[w, m].compute() for m in sweep} for w in weights
                }
                weight, best = max(
                    weighed, key=lambda wm: (weighed[wm].compute()[calibrate], -abs(wm[1]))
                )
                result["calibrated"] = {
                    "metric": calibrate,
                    "margin": best,
                    "group_weight": weight,
                    **weighed[weight, best].compute(),
                }
            if save_calibrated is not None:
                _save_calibrated(
                    save_calibrated, model, revision, best, weight, calibrate, settings
                )
    if report is not None:
        from grd_tools.fsutil import atomic_write_text

        atomic_write_text(report, json.dumps(result, indent=2) + "\n")
    if plots is not None:
        from gres_cli.evaluation.plots import write_plots

        with user_errors():
            written = write_plots(
                plots,
                f"{dataset.name}: {meter.pairs} pairs, protocol {protocol} ({resolution})",
                meter.iou_histogram(),
                meter.confusion(),
                result.get("margin_sweep"),
                scorer.cosod.curves() if scorer.cosod is not None else None,
            )
        err_console.print(escape(f"plots: {', '.join(str(p) for p in written)}"))
    from rich.table import Table

    table = Table(
        title=f"gres eval ({meter.pairs} pairs, protocol {protocol}, {resolution} resolution)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    err_console.print(table)
    if scorer.left_out:
        err_console.print(
            f"{len(scorer.left_out)} pairs left out (image or prediction unreadable; see "
            "`missing` in the report)"
        )
    if len(missing) > len(scorer.left_out):
        err_console.print(
            f"{len(missing) - len(scorer.left_out)} pairs had no prediction (counted as empty)"
        )
    for line in scorer.warnings[:5]:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if len(scorer.warnings) > 5:
        err_console.print(f"... {len(scorer.warnings) - 5} more warnings (see --report)")
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
            also = f" with group weight {c['group_weight']:g}" if "group_weight" in c else ""
            err_console.print(
                f"calibrated: --margin {c['margin']:g}{also} maximises {calibrate} "
                f"({c[calibrate]:.4f})"
            )
    if report is None and not err_console.is_terminal:
        typer.echo(json.dumps(result))
    if view:
        from gres_cli.cli.view import site_of_evaluation

        site_of_evaluation(result, report, plots)


def _predictions_beside(report: Path | None) -> Path:
    """Where `--view` saves a --model run's predictions: REPORT-predictions beside the report
    (the name of the site, REPORT-view, with another suffix), else ./gres-eval-predictions."""
    if report is None:
        return Path("gres-eval-predictions")
    return report.with_name(f"{report.stem}-predictions")


def _refuse_overlaps(
    folder: Path, option: str, inputs: list[Path], outputs: dict[str, Path | None]
) -> None:
    """The predictions folder is replaced when the evaluation ends: it may not be, hold or lie
    inside an input (the dataset, a model folder) nor another output of the run (one line,
    exit 2, before any work)."""
    where = folder.resolve()
    for source in inputs:
        src = source.resolve()
        if is_within(where, src) or is_within(src, where):
            fail(f"{option} {folder}: is, holds or lies inside the input {source}; pick another")
    for name, other in outputs.items():
        if other is None:
            continue
        o = other.resolve()
        if is_within(o, where) or is_within(where, o):
            fail(f"{option} {folder}: overlaps {name} {other}; pick another folder")


def _save_calibrated(
    out: Path,
    model: str,
    revision: str | None,
    margin: float,
    weight: float | None,
    metric: str,
    settings: dict,
) -> None:
    from grd_tools.fsutil import atomic_output_dir
    from gres_cli.backends.settings import calibrated

    note = {"metric": metric, "dataset_sha256": settings["dataset_sha256"]}
    note |= {"split": settings["split"], "group": settings["group"]}
    with user_errors():
        found = calibrated(model, revision, margin, note)
        if weight is not None:
            found.group_weight = weight
        with atomic_output_dir(out) as tmp:
            found.write(tmp)
    chosen = f"m = {margin:g}" + ("" if weight is None else f", gamma = {weight:g}")
    err_console.print(f"wrote gres-backend settings ({chosen}) to {out}")


def register(app: typer.Typer) -> None:
    """Add `gres eval` to the top-level app."""
    app.command("eval")(evaluate)
