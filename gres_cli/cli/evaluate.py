"""`gres eval`: score a model or saved predictions on a GRD dataset split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gres_cli.cli import options
from gres_cli.cli.common import ProgressBar, err_console, user_errors, writable_folder


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
    revision: options.Revision = None,
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
    margin: options.Margin = None,
    report: Annotated[Path | None, typer.Option(help="Write every number as JSON here.")] = None,
    device: options.Device = "auto",
    batch_size: options.BatchSize = 16,
    workers: options.Workers = 0,
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
    no_group: options.NoGroup = False,
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
    ray: options.Ray = False,
    ray_address: options.RayAddress = None,
    ray_actors: options.RayActors = None,
    ray_gpus_per_actor: options.RayGpusPerActor = None,
    ray_cpus_per_actor: options.RayCpusPerActor = None,
) -> None:
    """Score GRES predictions: IoU metrics with negatives counted, the present/absent decision,
    and (protocol gres) the co-salient metrics Sm, Em, Fm, MAE.

    Protocol `gres`: original resolution; an empty prediction on an absent target has IoU 1, any
    pixel on it IoU 0; oIoU = cIoU (cumulative), mIoU = gIoU (mean per pair), prec@0.5-0.9,
    N-acc/T-acc (gRefCOCO's names), acc/precision/recall/f1 of the decision. Other protocols
    reproduce LAVT, ReLA, CRIS and LISA's conventions. All values in [0, 1].

    Example: `gres eval data/synth --model examples/demo-model --split test --report r.json`
    """
    from gres_cli.evaluation import report as library

    opts = library.EvalOptions(model, predictions, revision, split, margin, protocol)
    opts.cosod_reference, opts.strict, opts.group = cosod_reference, strict, not no_group
    opts.calibrate, opts.save_predictions = calibrate, save_predictions
    opts.engine = {"device": device, "batch_size": batch_size, "workers": workers}
    opts.pool = options.ray_pool(
        ray, ray_address, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor
    )
    with user_errors():
        opts.margins = library.parse_numbers(margins, "--margins", "-0.2,0,0.2")
        opts.group_weights = library.parse_numbers(group_weights, "--group-weights", "0,0.5,1")
        opts.check(save_calibrated)
        site = None
        if view:  # where site_of_evaluation puts it, once the report is written
            site = report.with_name(f"{report.stem}-view") if report else Path("gres-eval-view")
        outputs = {"--report": report, "--plots": plots, "--save-calibrated": save_calibrated}
        opts.plan_outputs(dataset, outputs | {"the --view site": site}, view)
    if report is not None:  # before the work, not after it
        writable_folder(report.parent, "--report")
    if plots is not None:
        writable_folder(plots, "--plots")
    bar = ProgressBar("eval")
    with user_errors(), bar:
        done = library.evaluate(dataset, opts, bar.start, bar.advance)
        if save_calibrated is not None:
            chosen = library.save_calibrated(save_calibrated, model, revision, done.report)
            err_console.print(f"wrote gres-backend settings ({chosen}) to {save_calibrated}")
    result = done.report
    if done.saved is not None:
        saved = done.saved
        err_console.print(
            escape(f"predictions: {saved.out} ({saved.records} records)"), soft_wrap=True
        )
    if report is not None:
        from grd_tools.fsutil import atomic_write_text

        atomic_write_text(report, json.dumps(result, indent=2) + "\n")
    if plots is not None:
        with user_errors():
            written = done.write_plots(plots, dataset.name)
        err_console.print(escape(f"plots: {', '.join(str(p) for p in written)}"))
    _print_summary(result, calibrate)
    if report is None and not err_console.is_terminal:
        typer.echo(json.dumps(result))
    if view:
        from gres_cli.cli.view import site_of_evaluation

        site_of_evaluation(result, report, plots)


def _print_summary(result: dict, calibrate: str | None) -> None:
    """The metrics, what was left out, warnings and the margin sweep, as tables on stderr."""
    from rich.table import Table

    settings = result["settings"]
    table = Table(
        title=f"gres eval ({result['pairs']} pairs, protocol {settings['protocol']}, "
        f"{settings['resolution']} resolution)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result["metrics"].items():
        table.add_row(k, f"{v:.4f}")
    err_console.print(table)
    left_out, warnings = result["left_out"], result["warnings"]
    if left_out:
        err_console.print(
            f"{left_out} pairs left out (image or prediction unreadable; see `missing` in the "
            "report)"
        )
    if len(result["missing"]) > left_out:
        err_console.print(
            f"{len(result['missing']) - left_out} pairs had no prediction (counted as empty)"
        )
    for line in warnings[:5]:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if len(warnings) > 5:
        err_console.print(f"... {len(warnings) - 5} more warnings (see --report)")
    if "margin_sweep" in result:
        columns = ("acc", "f1", "mIoU", "oIoU", "N-acc", "T-acc")
        table = Table(title="margin sweep (one forward pass)")
        for col in ("m", *columns):
            table.add_column(col, justify="right")
        for m, row in result["margin_sweep"].items():
            table.add_row(f"{float(m):g}", *(f"{row[k]:.4f}" for k in columns))
        err_console.print(table)
    if "calibrated" in result:
        c = result["calibrated"]
        also = f" with group weight {c['group_weight']:g}" if "group_weight" in c else ""
        err_console.print(
            f"calibrated: --margin {c['margin']:g}{also} maximises {calibrate} ({c[calibrate]:.4f})"
        )


def register(app: typer.Typer) -> None:
    """Add `gres eval` to the top-level app."""
    app.command("eval")(evaluate)
