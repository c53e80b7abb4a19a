"""`gres eval` as one library call: score a split, calibrate m (and the group weight gamma)
from a margin sweep, and assemble the report (the JSON `--report` writes).

    from gres_cli.evaluation.report import EvalOptions, evaluate
    result = evaluate(Path("data/synth"), EvalOptions(model="examples/demo-model"))
    result.report["metrics"]["mIoU"]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_tools.paths import is_within
from gres_cli.errors import GresError


@dataclass
class EvalOptions:
    """What to score and how (the options of `gres eval`). Exactly one of `model` and
    `predictions`; `margins` (a sweep of m, one pass) and what depends on it need `model`."""

    model: str | None = None
    predictions: Path | None = None
    revision: str | None = None
    split: str | None = None
    margin: float | None = None
    protocol: str = "gres"
    cosod_reference: str = "pysodmetrics"
    strict: bool = False
    margins: list[float] = field(default_factory=list)
    group_weights: list[float] = field(default_factory=list)
    calibrate: str | None = None  # the metric the calibrated m (and gamma) maximise
    group: bool = True
    save_predictions: Path | None = None  # the model's answers, kept as a segment run
    saving_option: str = "--save-predictions"  # how messages name that folder
    engine: dict[str, Any] = field(default_factory=dict)  # device, batch_size, workers
    pool: Any = None  # inference.ray_run.RayPool: run the model on a Ray cluster

    def check(self, save_calibrated: Path | None = None) -> None:
        """Refuse (GresError, before any work) options that do not go together; with
        `save_calibrated`, a folder that exists or a model that has no settings folder."""
        from gres_cli.evaluation.run import sweep_metrics
        from gres_cli.inference.engine import check_cuts
        from gres_cli.metrics.cosod import REFERENCES
        from gres_cli.metrics.masks import PROTOCOLS

        if self.protocol not in PROTOCOLS:
            raise GresError(f"--protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        if self.cosod_reference not in REFERENCES:
            choose = ", ".join(REFERENCES)
            raise GresError(f"--cosod-reference {self.cosod_reference!r}: choose from {choose}")
        if (self.model is None) == (self.predictions is None):
            raise GresError("pass exactly one of --model or --predictions")
        check_cuts(self.margin)  # NaN called every image absent, and is no JSON value
        if self.pool is not None and self.model is None:
            raise GresError("--ray runs a --model; saved --predictions are scored here")
        if self.save_predictions is not None and self.model is None:
            raise GresError("--save-predictions needs --model (--predictions are saved already)")
        if self.margins and self.model is None:
            raise GresError(
                "--margins needs --model (saved predictions hold decisions, not masks for all m)"
            )
        if self.group_weights and not self.margins:
            raise GresError("--group-weights needs --margins")
        if any(w < 0 for w in self.group_weights):
            raise GresError("--group-weights must be >= 0")
        if self.calibrate is not None and not self.margins:
            raise GresError("--calibrate needs --margins")
        if save_calibrated is not None and self.calibrate is None:
            raise GresError("--save-calibrated needs --calibrate METRIC (and --margins)")
        if save_calibrated is not None:
            if save_calibrated.exists():
                raise GresError(
                    f"--save-calibrated {save_calibrated}: already exists; choose a new folder"
                )
            from gres_cli.backends.settings import calibrated

            assert self.model is not None
            calibrated(self.model, self.revision, 0.0, {})  # a GRSer is refused here
        if self.calibrate is not None and self.calibrate not in sweep_metrics(self.protocol):
            names = ", ".join(sweep_metrics(self.protocol))
            raise GresError(
                f"--calibrate {self.calibrate!r}: not a metric of the margin sweep ({names})"
            )

    def plan_outputs(
        self, dataset: Path, outputs: dict[str, Path | None], view: bool = False
    ) -> None:
        """Before any work: where the model's answers are saved (with `view` and no
        --save-predictions: beside the --report, REPORT-predictions, for the site's galleries)
        and GresError for an output (`outputs`: option -> path; `--report`, `--plots`,
        `--save-calibrated`, the site) that is, holds or lies inside an input (the dataset, a
        model folder, the predictions) or, for the answers' folder, overlaps another output."""
        from grd_tools.fsutil import refuse_overlap

        model = self.model
        models = [Path(model)] if model is not None and Path(model).exists() else []
        calibrated_out = outputs.get("--save-calibrated")
        if calibrated_out is not None:
            for name, source in (("DATASET", dataset), ("--model", models[0] if models else None)):
                if source is not None and source.exists():
                    refuse_overlap(source, calibrated_out, "--save-calibrated", name)
        if self.save_predictions is None and view and model is not None:
            report = outputs.get("--report")
            self.saving_option = "--view"
            self.save_predictions = (
                Path("gres-eval-predictions")
                if report is None
                else report.with_name(f"{report.stem}-predictions")
            )
        for option in ("--report", "--plots"):
            target = outputs.get(option)
            for source in (dataset, self.predictions, *models):
                if target and source and is_within(target.resolve(), source.resolve()):
                    raise GresError(
                        f"{option} {target}: is or lies inside the input {source}; pick another"
                    )
        if self.save_predictions is not None:
            check_overlaps(self.save_predictions, self.saving_option, [dataset, *models], outputs)
        report = outputs.get("--report")
        if report is not None and report.is_dir():
            raise GresError(f"--report {report}: is a folder; give a file name such as report.json")


@dataclass
class Evaluation:
    """The report (`--report`'s JSON) and what printing it needs."""

    report: dict[str, Any]
    scorer: Any
    saved: Any = None  # SavedPredictions, when the answers were kept

    def write_plots(self, folder: Path, dataset_name: str) -> list[Path]:
        """The report's figures (evaluation.plots) as PNGs in `folder`; their paths."""
        from gres_cli.evaluation.plots import write_plots

        meter, settings = self.scorer.masks, self.report["settings"]
        return write_plots(
            folder,
            f"{dataset_name}: {meter.pairs} pairs, protocol {settings['protocol']} "
            f"({settings['resolution']})",
            meter.iou_histogram(),
            meter.confusion(),
            self.report.get("margin_sweep"),
            self.scorer.cosod.curves() if self.scorer.cosod is not None else None,
        )


def parse_numbers(text: str | None, option: str, example: str) -> list[float]:
    """`-0.2,0,0.2` -> sorted distinct floats ([] for None), or GresError naming `option`
    (NaN and infinities too: a NaN does not sort, and neither is a JSON value in the report)."""
    if text is None:
        return []
    try:
        numbers = {float(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise GresError(f"{option} {text!r}: expected numbers like {example}") from None
    if not all(math.isfinite(x) for x in numbers):
        raise GresError(f"{option} {text!r}: give finite numbers, like {example}")
    return sorted(numbers)


def check_overlaps(
    folder: Path, option: str, inputs: list[Path], outputs: dict[str, Path | None]
) -> None:
    """The predictions folder is replaced when the evaluation ends: it may not be, hold or lie
    inside an input (the dataset, a model folder) nor another output of the run (GresError,
    before any work)."""
    where = folder.resolve()
    for source in inputs:
        src = source.resolve()
        if is_within(where, src) or is_within(src, where):
            raise GresError(
                f"{option} {folder}: is, holds or lies inside the input {source}; pick another"
            )
    for name, other in outputs.items():
        if other is None:
            continue
        o = other.resolve()
        if is_within(o, where) or is_within(where, o):
            raise GresError(f"{option} {folder}: overlaps {name} {other}; pick another folder")


def evaluate(
    dataset: Path,
    options: EvalOptions,
    on_start: Callable[[int], None] | None = None,
    on_scored: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score `options.model` (run here) or `options.predictions` on `dataset`'s split; the
    report holds the metrics, the settings, what was left out and, with a sweep, the curve and
    the calibrated choice. `on_start(pairs)` and `on_scored(n)` drive a progress bar."""
    from gres_cli.evaluation.run import (
        FolderPredictions,
        JsonlPredictions,
        Scorer,
        dataset_hash,
        open_dataset,
        score_model,
        score_predictions,
    )

    o = options
    with open_dataset(dataset) as (ds, source_format):
        split = o.split
        if split is None:
            split = "test" if any(g.split == "test" for g in ds.groups) else None
        scorer = Scorer(o.protocol, o.cosod_reference, o.strict)
        resolution = scorer.masks.protocol.resolution
        settings: dict[str, Any] = {"protocol": o.protocol, "resolution": resolution}
        settings["split"] = split
        if scorer.cosod is not None:
            settings["cosod_reference"] = o.cosod_reference
        settings["dataset"] = str(dataset)
        settings["dataset_format"] = source_format
        settings["dataset_sha256"] = dataset_hash(ds.root)
        missing: list[str] = []
        saved = None
        saving = o.save_predictions
        if saving is not None and source_format != "grd" and o.saving_option == "--view":
            saving = None  # records of a temporary conversion's images: galleries need GRD
        elif saving is not None and source_format != "grd":
            raise GresError(
                f"--save-predictions: {dataset} is read through a temporary conversion from "
                f"{source_format}; convert it with gres grd convert --to grd and evaluate that"
            )
        elif saving is not None:
            from gres_cli.evaluation.saved import SavedPredictions

            saved = SavedPredictions(saving, o.saving_option, settings["dataset_sha256"], split)
        sweeps: dict = {}
        weighed: dict = {}
        if o.predictions is not None:
            if not o.predictions.exists():
                raise GresError(f"--predictions {o.predictions}: no such file or folder")
            source = (
                FolderPredictions(o.predictions)
                if o.predictions.is_dir()
                else JsonlPredictions(o.predictions)
            )
            scorer, missing = score_predictions(ds, source, split, scorer)
            settings["predictions"] = str(o.predictions)
        else:
            assert o.model is not None
            if on_start is not None:
                on_start(sum(1 for _ in ds.pairs(split)))
            with saved.writing() if saved else contextlib.nullcontext():
                scorer, used, sweeps, weighed = score_model(
                    ds,
                    o.model,
                    split,
                    o.margin,
                    o.margins,
                    scorer,
                    revision=o.revision,
                    on_scored=on_scored,
                    group=o.group,
                    group_weights=o.group_weights,
                    saved=saved,
                    pool=o.pool,
                    **o.engine,
                )
            settings |= {"model": o.model, "revision": o.revision, "margin": used}
            settings["group"] = o.group
            if saved is not None:
                settings["saved_predictions"] = str(saved.records_file)
    missing += scorer.left_out
    report = {
        "metrics": scorer.metrics(),
        "settings": settings,
        "pairs": scorer.masks.pairs,
        "left_out": len(scorer.left_out),
        "missing": missing,
        "warnings": scorer.warnings,
        "groups": scorer.masks.per_group(),
    }
    if o.margins:
        report |= calibration(o.margins, sweeps, weighed, o.group_weights, o.calibrate)
    return Evaluation(report, scorer, saved)


def calibration(
    margins: list[float],
    sweeps: dict[float, Any],
    weighed: dict[tuple[float, float], Any],
    weights: list[float],
    metric: str | None,
) -> dict[str, Any]:
    """The report's `margin_sweep` (metrics at each m) and, when `metric` is given, the
    `calibrated` choice: the m (and, with a gamma sweep, the (gamma, m)) that maximises it,
    ties going to the m closest to 0."""
    curve = {str(m): sweeps[m].compute() for m in margins}
    part: dict[str, Any] = {"margin_sweep": curve}
    if metric is None:
        return part
    best = max(margins, key=lambda m: (curve[str(m)][metric], -abs(m)))
    part["calibrated"] = {"metric": metric, "margin": best, **curve[str(best)]}
    if weighed:
        part["group_weight_sweep"] = {
            str(w): {str(m): weighed[w, m].compute() for m in margins} for w in weights
        }
        weight, best = max(weighed, key=lambda wm: (weighed[wm].compute()[metric], -abs(wm[1])))
        part["calibrated"] = {
            "metric": metric,
            "margin": best,
            "group_weight": weight,
            **weighed[weight, best].compute(),
        }
    return part


def save_calibrated(out: Path, model: str, revision: str | None, report: dict[str, Any]) -> str:
    """Write the calibrated choice of `report` as a gres-backend settings folder at `out`
    (atomically); returns the choice in words (`m = 0.1, gamma = 0.5`)."""
    from grd_tools.fsutil import atomic_output_dir
    from gres_cli.backends.settings import calibrated

    chosen, settings = report["calibrated"], report["settings"]
    margin, weight = chosen["margin"], chosen.get("group_weight")
    note = {"metric": chosen["metric"], "dataset_sha256": settings["dataset_sha256"]}
    note |= {"split": settings["split"], "group": settings["group"]}
    found = calibrated(model, revision, margin, note)
    if weight is not None:
        found.group_weight = weight
    with atomic_output_dir(out) as tmp:
        found.write(tmp)
    return f"m = {margin:g}" + ("" if weight is None else f", gamma = {weight:g}")
