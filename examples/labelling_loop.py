"""The labelling loop, end to end and offline: a big model labels a photo collection, a person
corrects some answers, a small model learns from the labels (docs/labelling.md).

    python examples/labelling_loop.py WORK [--groups 200] [--steps 1000] [--correct 0.1]

Teacher: the shipped demo model (examples/demo-model). Data: a fresh `gres grd synth` set whose
ground truth the loop never reads: its training groups' photos are the "collection"
(WORK/photos/<group>/), the expressions asked of them the person's questions; its test groups
are the held-out ground truth every model is scored on. Each step is a `gres` command, printed
as it runs:

    gres segment --jobs     the teacher answers every question on every photo (WORK/teacher-run)
    gres grd from-run       its answers as a GRD dataset (WORK/labels)
    gres grd split          train/val split of the labels
    gres train              a fresh grser-tiny learns from them (WORK/student)
    gres model export       the student as ONNX
    gres eval               student and teacher on the held-out ground truth

then again with a share (`--correct`, 10%) of the teacher's wrong answers corrected first,
simulated from the ground truth and written as a real corrections.json (what `gres view`'s
review page downloads): a wrong "present" becomes "absent", a wrong "absent" becomes "present"
(left out: no mask to learn from), a present answer whose mask has IoU < 0.5 with the truth is
"rejected". Prints each model's accuracy and mIoU; `--json FILE` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from grd_tools import load
from grd_tools.corrections import Correction, corrections_document, run_id
from grd_tools.imageio import read_mask

HERE = Path(__file__).resolve().parent
TEACHER = shlex.quote(str(HERE / "demo-model"))
IOU_REJECT = 0.5


def gres(command: str, cwd: Path) -> float:
    """Run one `gres` command line in `cwd` (printed as typed there); its wall seconds."""
    command = command.strip()
    print(f"$ gres {command}", flush=True)
    start = time.perf_counter()
    argv = [sys.executable, "-m", "gres_cli", *shlex.split(command)]
    done = subprocess.run(argv, cwd=cwd, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"gres {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def collection(work: Path, truth: Path) -> list[dict[str, str]]:
    """Hard-link the training groups' photos to WORK/photos/<group>/ and return the questions:
    one job per (group, expression text). Nothing else of the ground truth leaves `truth`."""
    jobs = []
    for group in load(truth).groups:
        if group.split != "train":
            continue
        for image in group.images:
            dst = work / "photos" / group.id / Path(image.file).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(truth / image.file, dst)
        jobs += [{"path": f"photos/{group.id}", "expression": e.text} for e in group.expressions]
    return jobs


def simulate_corrections(
    work: Path, truth: Path, share: float, seed: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """A person's corrections of `share` of the teacher's wrong answers, picked at random
    (seeded), read from the ground truth; and the counts of wrong answers by kind."""
    gt = {
        (group.id, Path(image.file).stem, e.text): e.targets.get(image.id)
        for group in load(truth).groups
        for e in group.expressions
        for image in group.images
    }
    run = work / "teacher-run"
    wrong: list[Correction] = []
    kinds = {"absent": 0, "present": 0, "rejected": 0}
    for line in (run / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("error"):
            continue
        target = gt[(rec["group"], Path(rec["image"]).stem, rec["expression"])]
        was = "present" if rec["present"] else "absent"
        if rec["present"] and target is None:
            answer = "absent"
        elif not rec["present"] and target is not None:
            answer = "present"
        elif rec["present"] and _iou(work / rec["mask"], truth / target) < IOU_REJECT:
            answer = "rejected"
        else:
            continue
        kinds[answer] += 1
        wrong.append(Correction(rec["image"], rec["expression"], rec["group"], was, answer))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(wrong), size=round(share * len(wrong)), replace=False)
    settings = json.loads((run / "settings.json").read_text())
    document = corrections_document(run_id(settings), [wrong[i] for i in sorted(picked)])
    return document, kinds


def _iou(a: Path, b: Path) -> float:
    x, y = read_mask(a) > 0, read_mask(b) > 0
    union = np.logical_or(x, y).sum()
    return float(np.logical_and(x, y).sum() / union) if union else 1.0


def student(work: Path, name: str, seed: int, extra: str = "") -> dict[str, Any]:
    """from-run -> split -> train -> export -> eval: the student's figures and times."""
    times = {
        "from-run": gres(f"grd from-run teacher-run {name}-labels {extra}", work),
        "split": gres(
            f"grd split {name}-labels --out {name}-split --ratios 0.9,0.1,0 --seed {seed}", work
        ),
        "train": gres(f"train {name}-split --out {name}-student --config student.yaml", work),
        "export": gres(f"model export {name}-student/best {name}-onnx --format onnx", work),
        "eval": gres(
            f"eval truth --split test --model {name}-onnx --report {name}-report.json", work
        ),
    }
    labels = json.loads((work / f"{name}-labels" / "grd.json").read_text())["meta"]
    return {
        "metrics": _metrics(work / f"{name}-report.json"),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "left_out": labels["left_out"],
    }


def _metrics(report: Path) -> dict[str, float]:
    metrics = json.loads(report.read_text())["metrics"]
    return {k: round(metrics[k], 4) for k in ("acc", "mIoU", "N-acc", "T-acc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a new folder for everything the loop writes")
    parser.add_argument("--groups", type=int, default=200, help="synthetic groups (80%% train)")
    parser.add_argument("--images-per-group", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of a student")
    parser.add_argument("--groups-per-step", type=int, default=8, help="expressions a step")
    parser.add_argument("--correct", type=float, default=0.1, help="share of wrong answers fixed")
    parser.add_argument("--seed", type=int, default=7, help="of the synthetic set and the picks")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=False)
    gres(
        f"grd synth truth --size 64 --groups {args.groups} --images-per-group "
        f"{args.images_per_group} --seed {args.seed} --ratios 0.8,0,0.2",
        work,
    )
    (work / "jobs.jsonl").write_text(
        "".join(json.dumps(j) + "\n" for j in collection(work, work / "truth"))
    )
    teach = gres(f"segment --jobs jobs.jsonl --model {TEACHER} --out teacher-run", work)
    gres(f"eval truth --split test --model {TEACHER} --report teacher-report.json", work)
    # the demo model's own recipe (examples/demo-train.yaml), for `--steps` steps; validated
    # (on the labels' val split) once, at the end: best/ is the last step
    (work / "student.yaml").write_text(
        "preset: tiny-synth\n"
        "model: {preset: grser-tiny, image_size: 64, swin_window_size: 4, decoder_film: true}\n"
        f"steps: {args.steps}\ngroups_per_step: {args.groups_per_step}\nimages_per_group: 6\n"
        "lr: 0.001\n"
        f"warmup_steps: {min(100, args.steps // 10)}\ndice_negatives: true\n"
        f"val_every: {args.steps}\ncheckpoint_every: {args.steps}\nseed: {args.seed}\n"
    )
    plain = student(work, "plain", args.seed)
    document, wrong = simulate_corrections(work, work / "truth", args.correct, args.seed)
    (work / "corrections.json").write_text(json.dumps(document, indent=1))
    fixed = student(work, "corrected", args.seed, "--corrections corrections.json")
    records = sum(1 for _ in (work / "teacher-run" / "records.jsonl").open())
    figures = {
        "groups": args.groups,
        "steps": args.steps,
        "groups_per_step": args.groups_per_step,
        "teacher_pairs": records,
        "teacher_seconds": round(teach, 1),
        "teacher_wrong": wrong,
        "corrections": len(document["corrections"]),
        "teacher": _metrics(work / "teacher-report.json"),
        "student": plain,
        "student_corrected": fixed,
    }
    print(
        f"\nteacher answers on the collection: {records} pairs, wrong: {wrong}; "
        f"{figures['corrections']} corrected ({args.correct:.0%})"
    )
    print("held-out ground truth (test groups)   acc     mIoU")
    for label, m in (
        ("teacher (examples/demo-model)", figures["teacher"]),
        ("student", plain["metrics"]),
        (f"student, {args.correct:.0%} of wrong answers corrected", fixed["metrics"]),
    ):
        print(f"{label:<37} {m['acc']:.4f}  {m['mIoU']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
