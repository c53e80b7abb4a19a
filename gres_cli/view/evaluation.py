"""The page data of a `gres eval` report: headline metrics, plots, per-group figures, and,
when the report scored saved predictions, galleries of false positives, misses and the worst
IoUs with ground truth and prediction side by side.

The report holds numbers only, so the galleries come from scoring the report's predictions
again on its dataset, pair by pair, with the report's protocol and split: the predictions it
scored (`--predictions`), or those a `--model` run saved (`--save-predictions`, or `--view`).
A `--model` report that saved none: the page says how to get galleries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gres_cli.errors import GresError
from gres_cli.view.site import MaskSource, Picture, ViewError

GALLERY_SIZE = 200  # pairs shown per gallery; the page states how many there are in all
PLOT_NAMES = (
    "iou_histogram.png",
    "precision_curve.png",
    "confusion.png",
    "margin_sweep.png",
    "cosod_curves.png",
)
GROUP_COLUMNS = ("pairs", "acc", "mIoU", "oIoU", "N-acc", "T-acc", "f1")
NO_PREDICTIONS = (
    "This report scored a model directly and saved no predicted masks. For galleries, run it "
    "again with --save-predictions DIR (or --view, which saves them beside the report): "
    "gres eval DATASET --model M --report r.json --view."
)


def read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ViewError(f"{path}: not a readable gres eval report ({e})") from None
    except RecursionError:
        raise ViewError(f"{path}: not a readable gres eval report (nested too deeply)") from None
    if not is_report(report):
        raise ViewError(f"{path}: not a gres eval report (no metrics and settings)")
    return report


def is_report(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("metrics"), dict)
        and isinstance(data.get("settings"), dict)
    )


def _locate(text: Any, beside: Path | None) -> Path | None:
    """A path from the report's settings, as written (relative to where eval ran) or beside
    the report."""
    if not isinstance(text, str) or not text:
        return None
    candidates = [Path(text)] + ([beside / text] if beside is not None else [])
    return next((p for p in candidates if p.exists()), None)


def evaluation_data(
    report: dict[str, Any],
    site: Path,
    report_path: Path | None = None,
    plots_dir: Path | None = None,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], Picture | None]]]:
    """The page's data and the pictures to draw, as (slot, picture) pairs: each slot dict
    gets its picture's file names once drawn."""
    settings = report.get("settings", {})
    groups = [
        {"id": g, **{k: v.get(k) for k in GROUP_COLUMNS if k in v}}
        for g, v in (report.get("groups") or {}).items()
        if isinstance(v, dict)
    ]
    data: dict[str, Any] = {
        "kind": "evaluation",
        "title": f"gres eval: {report_path.name if report_path else settings.get('dataset')}",
        "source": str(report_path) if report_path else "",
        "metrics": report.get("metrics", {}),
        "settings": {k: v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()},
        "pairs": report.get("pairs"),
        "missing": len(report.get("missing") or []),
        "warnings": [str(w) for w in (report.get("warnings") or [])[:200]],
        "group_columns": [c for c in GROUP_COLUMNS if any(c in g for g in groups)],
        "groups": groups,
        "margin_sweep": report.get("margin_sweep"),
        "galleries": [],
        "gallery_note": "",
        "plots": [],
    }
    slots: list[tuple[dict[str, Any], Picture | None]] = []
    beside = report_path.parent if report_path is not None else None
    dataset = _locate(settings.get("dataset"), beside)
    scored = "predictions" if "predictions" in settings else "saved_predictions"
    predictions = _locate(settings.get(scored), beside)
    histogram = None
    if scored not in settings:
        data["gallery_note"] = NO_PREDICTIONS
    elif dataset is not None and not (dataset / "grd.json").is_file():
        data["gallery_note"] = (
            f"Galleries need the dataset in GRD form; {dataset} is not (convert it with "
            "gres grd convert and score that)."
        )
    elif dataset is None or predictions is None:
        missing = "dataset" if dataset is None else scored
        data["gallery_note"] = (
            f"The report's {missing} ({settings.get(missing)}) is not found from here or beside "
            "the report: run gres view from where gres eval ran."
        )
    else:
        histogram = _galleries(data, slots, dataset, predictions, settings, site, report)
    if plots_dir is not None and plots_dir.is_dir():
        data["plots"] = _copy_plots(plots_dir, site)
    elif histogram is not None:
        data["plots"] = histogram
    return data, slots


def _copy_plots(plots_dir: Path, site: Path) -> list[str]:
    from gres_cli.view.site import copy_files

    found = [(plots_dir / n, n) for n in PLOT_NAMES if (plots_dir / n).is_file()]
    return copy_files(site, found)


def _galleries(
    data: dict[str, Any],
    slots: list[tuple[dict[str, Any], Picture | None]],
    dataset_path: Path,
    predictions_path: Path,
    settings: dict[str, Any],
    site: Path,
    report: dict[str, Any],
) -> list[str] | None:
    """Score the predictions again pair by pair; fill the galleries; write the plots.
    Returns the plots' site paths (None when matplotlib is missing)."""
    import numpy as np

    from grd_tools.format import load
    from grd_tools.paths import resolve_inside
    from gres_cli.evaluation.run import FolderPredictions, JsonlPredictions, Scorer
    from gres_cli.metrics.masks import pair_iou

    scorer = Scorer(
        settings.get("protocol", "gres"), settings.get("cosod_reference", "pysodmetrics")
    )
    protocol = scorer.masks.protocol
    if predictions_path.is_dir():
        source: Any = FolderPredictions(predictions_path)
    else:
        source = JsonlPredictions(predictions_path)
    rows = []  # (pair, gt present, predicted present, IoU)
    ds = load(dataset_path)
    for pair in ds.pairs(settings.get("split")):
        shape = (pair.image.height, pair.image.width)
        gt = scorer.ground_truth(ds, pair)
        if source.error(ds, pair):  # no answer was made: gres eval left it out, not a miss
            continue
        pred, present, grey = source.mask(ds, pair, shape)
        where = f"{pair.group.id}/{Path(pair.image.file).name}"
        if pred is None:
            pred, grey = np.zeros(shape, bool), None
        if grey is not None:
            grey = scorer.fit(grey, shape, where)
            pred = grey >= 128
        else:
            pred = scorer.fit(pred, shape, where)
        resized_gt = None if gt is None else protocol.resize(gt)
        iou, _, _ = pair_iou(protocol.resize(pred), resized_gt, protocol.empty_iou)
        scorer.update(pred, gt, present, pair.group.id, grey)
        rows.append((pair, gt is not None and bool(gt.any()), bool(present), iou))
    kinds = {
        "false_positives": [r for r in rows if not r[1] and r[2]],
        "misses": [r for r in rows if r[1] and not r[2]],
        "worst_iou": sorted((r for r in rows if r[1] and r[2]), key=lambda r: r[3]),
    }
    titles = {
        "false_positives": "False positives: called present, target absent",
        "misses": "Misses: target present, called absent",
        "worst_iou": "Worst IoUs among targets found",
    }
    for name, chosen in kinds.items():
        gallery = {"id": name, "title": titles[name], "total": len(chosen), "items": []}
        for pair, _, _, iou in chosen[:GALLERY_SIZE]:
            photo = resolve_inside(ds.root, pair.image.file)
            truth_mask = MaskSource(path=resolve_inside(ds.root, pair.mask)) if pair.mask else None
            item = {
                "group": pair.group.id,
                "name": Path(pair.image.file).name,
                "expression": pair.expression.text,
                "iou": iou,
                "truth": {},
                "prediction": {},
            }
            slots.append((item["truth"], Picture(photo, truth_mask, "truth")))
            predicted = _prediction_mask(source, ds, pair)
            slots.append((item["prediction"], Picture(photo, predicted, "prediction")))
            gallery["items"].append(item)
        data["galleries"].append(gallery)
    # the records a --model run saved hold binary masks, not the grey levels it was scored on
    grey_levels = scorer.cosod is not None and "saved_predictions" not in settings
    try:
        from gres_cli.evaluation.plots import write_plots

        written = write_plots(
            site / "plots",
            f"{dataset_path.name}: {scorer.masks.pairs} pairs, protocol {protocol.name}",
            scorer.masks.iou_histogram(),
            scorer.masks.confusion(),
            report.get("margin_sweep"),
            scorer.cosod.curves() if grey_levels else None,
        )
    except GresError:  # matplotlib missing: the page shows the numbers without figures
        return None
    return [f"plots/{p.name}" for p in written]


def _prediction_mask(source: Any, ds: Any, pair: Any) -> MaskSource | None:
    """Where the predicted mask of `pair` is stored (the same lookup `gres eval` made)."""
    stored = source.stored(ds, pair)
    return None if stored is None else MaskSource(stored.path, stored.rle, stored.threshold)
