"""What `gres eval --model ... --save-predictions DIR` costs (the records and the masks of the
pairs called present, which `--view` saves for its galleries): the same evaluation with and
without saving, alternated in one process after a warm-up run, and the bytes and files DIR
holds. Default: examples/synth-demo (96 pairs of 64 px) with examples/demo-model.

    python benchmarks/bench_eval_predictions.py [--dataset DIR --model DIR --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from gres_cli.cli import app
from gres_cli.evaluation.saved import SavedPredictions

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "synth-demo")
    parser.add_argument("--model", default=str(REPO / "examples" / "demo-model"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runner = CliRunner()
    # the main thread's share of saving: each answer's record and its queueing (the PNGs are
    # encoded and written by the writer's threads meanwhile)
    spent = [0.0]
    add = SavedPredictions.add

    def timed_add(self: SavedPredictions, *args: object) -> None:
        started = time.perf_counter()
        add(self, *args)
        spent[0] += time.perf_counter() - started

    SavedPredictions.add = timed_add  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"

        def evaluate(save: bool) -> float:
            shutil.rmtree(saved, ignore_errors=True)
            extra = ["--save-predictions", str(saved)] if save else []
            argv = ["eval", str(args.dataset), "--model", args.model, *extra]
            started = time.perf_counter()
            result = runner.invoke(app, [*argv, "--report", str(Path(tmp) / "r.json")])
            seconds = time.perf_counter() - started
            assert result.exit_code == 0, result.output
            return seconds

        evaluate(True)  # warm-up: imports, model files in the page cache
        spent[0] = 0.0
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for save in (False, True):
                times[save].append(evaluate(save))
        files = [p for p in saved.rglob("*") if p.is_file()]
        masks = [p for p in files if p.suffix == ".png"]
        records = (saved / "records.jsonl").read_text().count("\n")
        total = sum(p.stat().st_size for p in files)
        mask_bytes = sum(p.stat().st_size for p in masks)
        on_disk = sum(os.stat(p).st_blocks * 512 for p in files)
    plain, saving = min(times[False]), min(times[True])
    print(f"load average {os.getloadavg()[0]:.1f}; best of {args.repeats}, alternated")
    print(f"eval --model:                      {plain:7.2f} s")
    print(f"eval --model --save-predictions:   {saving:7.2f} s  ({saving / plain:.2f}x)")
    print(f"  of which in SavedPredictions.add: {1000 * spent[0] / args.repeats:7.1f} ms per run")
    print(f"saved: {records} records, {len(masks)} mask files, {len(files)} files in all")
    print(f"       {total:,} bytes ({mask_bytes:,} of masks), {on_disk:,} bytes of disk blocks")


if __name__ == "__main__":
    main()
