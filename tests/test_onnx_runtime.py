"""The torch-free runtime (issue 14): an ONNX export of GRSer (`gres model export --format onnx`)
runs `gres segment` and `gres eval --model` on onnxruntime, imports neither torch nor
transformers, and answers as the torch model does, record for record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import segment_torch_free
from PIL import Image
from typer.testing import CliRunner

from grd_tools.imageio import read_mask
from gres_cli.backends import load_model
from gres_cli.backends.grser_onnx import GRSerOnnxModel, Tokenizer, expert_order
from gres_cli.cli import app
from gres_cli.inference.engine import Job, Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model import hierarchizer
from gres_cli.model import onnx_spec as spec
from gres_cli.model.grser import GRSer
from gres_cli.model.preprocess import (
    image_to_array,
    image_to_pixels,
    normalize,
    normalize_array,
    probability_to_original,
    probability_to_original_array,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
SYNTH = ROOT / "examples" / "synth-demo"
PHOTOS = ROOT / "examples" / "photos"


def gres(*args: str):
    """`gres ARGS` in this process (click's Result)."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _env(**extra: str) -> dict[str, str]:
    """This environment, with this checkout first on the path of a subprocess."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _records(out: Path) -> dict[tuple[str, str], dict]:
    lines = (out / "records.jsonl").read_text("utf-8").splitlines()
    return {(r["image"], r["expression"]): r for r in map(json.loads, lines)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def test_onnx_folder_is_the_contract(demo_onnx: Path):
    config = json.loads((demo_onnx / "config.json").read_text())
    assert config["model_type"] == spec.MODEL_TYPE
    assert config[spec.CONFIG_KEY]["graphs"] == spec.GRAPH_FILES
    for name in spec.GRAPH_FILES.values():
        assert (demo_onnx / name).is_file()
    assert isinstance(load_model(demo_onnx), GRSerOnnxModel)


def test_onnx_segment_from_the_hub_cache_imports_neither_torch_nor_transformers(
    demo_onnx: Path, tmp_path: Path
):
    """A subprocess runs `gres segment` on the export, loaded as a Hub id from an offline
    cache, then lists the heavy modules it imported: none."""
    records = segment_torch_free(
        demo_onnx, PHOTOS, "the red circle", tmp_path, "gres-test/demo-onnx"
    )
    assert [Path(r["image"]).name for r in records] == sorted(p.name for p in PHOTOS.iterdir())
    assert all(r["error"] is None for r in records)


def test_onnx_records_equal_the_torch_records(demo_onnx: Path, tmp_path: Path):
    """`gres segment` on examples/synth-demo (one of its expressions, so decisions go both
    ways) and on photos of other sizes (every mask upsampled): the same records but for
    floating noise in the distances, and masks of IoU 1 (measured)."""
    expression = json.loads((SYNTH / "grd.json").read_text())["groups"][0]["expressions"][0]
    runs = [(str(SYNTH / "images"), expression["text"], "0.25")]  # 4 groups of 8
    runs.append((str(PHOTOS), "the red circle", "-5"))  # all present: masks at 320 x 2xx
    decided = {True: 0, False: 0}
    for k, (path, expression, margin) in enumerate(runs):
        outs = {}
        for name, model in (("torch", DEMO), ("onnx", demo_onnx)):
            out = outs[name] = tmp_path / f"{name}-{k}"
            args = ["segment", path, expression, "--model", str(model), "--out", str(out)]
            result = gres(*args, "--recursive", "--margin", margin)
            assert result.exit_code == 0, result.output
        mine, want = _records(outs["onnx"]), _records(outs["torch"])
        assert mine.keys() == want.keys() and len(mine) >= 4
        for key, rec in want.items():
            got = mine[key]
            for field in ("d_pos", "d_neg", "score"):
                assert got[field] == pytest.approx(rec[field], abs=1e-4)
            exact = set(rec) - {"d_pos", "d_neg", "score", "mask", "area", "bbox"}
            assert {f: got[f] for f in exact} == {f: rec[f] for f in exact}
            assert (got["mask"] is None) == (rec["mask"] is None)
            if rec["mask"]:
                a, b = read_mask(got["mask"]) > 0, read_mask(rec["mask"]) > 0
                assert a.shape == (rec["height"], rec["width"])
                assert _iou(a, b) == 1.0
                assert got["area"] == rec["area"] and got["bbox"] == rec["bbox"]
            decided[rec["present"]] += 1
    assert decided[True] and decided[False]  # both decisions were compared


def test_onnx_eval_gives_the_torch_metrics(demo_onnx: Path, tmp_path: Path):
    reports = {}
    for name, model in (("torch", DEMO), ("onnx", demo_onnx)):
        reports[name] = tmp_path / f"{name}.json"
        result = gres("eval", str(SYNTH), "--model", str(model), "--report", str(reports[name]))
        assert result.exit_code == 0, result.output
    mine, want = (json.loads(reports[n].read_text()) for n in ("onnx", "torch"))
    assert mine["pairs"] == want["pairs"] > 0
    assert mine["metrics"].keys() == want["metrics"].keys()
    for metric, value in want["metrics"].items():
        assert mine["metrics"][metric] == pytest.approx(value, abs=1e-4), metric
    assert mine["metrics"]["acc"] == want["metrics"]["acc"]  # the same decisions


def test_onnx_engine_two_passes_whatever_the_cache_and_no_group(demo_onnx: Path):
    """The one engine on the numpy runtime: pass 2 from the cache, from a decode again (no
    cache), replayed for a second job on the same images; and --no-group (each image its own
    expert) as torch's."""
    images = sorted((SYNTH / "images" / "synth-0001").glob("*.png"))
    jobs = [Job(ImageGroup("g", images), "the red cross"), Job(ImageGroup("g", images), "a cat")]
    onnx = Segmenter(load_model(demo_onnx), "cpu", batch_size=3, all_masks=True)
    runs = []
    for budget in (1 << 30, 0):
        onnx.cache_bytes = budget
        runs.append(list(onnx.run(jobs)))
    torch_alone = Segmenter(load_model(DEMO, group=False), "cpu", batch_size=3, all_masks=True)
    onnx_alone = Segmenter(load_model(demo_onnx, group=False), "cpu", batch_size=3)
    runs.append(list(torch_alone.run(jobs)))
    runs.append(list(onnx_alone.run(jobs)))
    assert [(r.job, r.index) for r in runs[0]] == [(j, i) for j in (0, 1) for i in range(8)]
    # the same answers; d_pos and d_neg to float noise, as on torch: a matrix product's last
    # bits depend on how many images share the call (the replayed job's batches differ), now
    # that onnxruntime does not pre-pack the weights (model/onnx_sessions.py)
    for a, b in zip(runs[0], runs[1], strict=True):
        assert (a.job, a.index, a.present) == (b.job, b.index, b.present)
        assert (a.d_pos, a.d_neg) == (
            pytest.approx(b.d_pos, abs=1e-5),
            pytest.approx(b.d_neg, abs=1e-5),
        )
        assert np.array_equal(a.mask, b.mask)
    for a, b in zip(runs[2], runs[3], strict=True):
        assert (a.job, a.index, a.present) == (b.job, b.index, b.present)
        assert a.d_pos == pytest.approx(b.d_pos, abs=1e-4)
    assert any(
        a.d_pos != pytest.approx(b.d_pos, abs=1e-3) for a, b in zip(runs[0], runs[3], strict=True)
    )


def test_expert_order_in_numpy_is_torchs_ties_included():
    rng = np.random.default_rng(0)
    cases = [rng.standard_normal((2, n)).astype(np.float32) for n in (1, 2, 5, 9, 30)]
    cases.append(np.ones((2, 6), np.float32))  # every key equal: the group's order
    cases.append(np.array([[1, 1, 2, 2, 0, 0], [3, 3, 1, 1, 2, 2]], np.float32))  # rank ties
    cases.append(np.array([[0.5, 0.2, 0.5, 0.2], [0.1, 0.4, 0.1, 0.4]], np.float32))
    for s_pos, s_neg in cases:
        want = hierarchizer.expert_order(torch.from_numpy(s_pos), torch.from_numpy(s_neg))
        assert expert_order(s_pos, s_neg).tolist() == want.tolist()


def test_tokenizers_alone_give_the_ids_of_the_torch_models_tokenizer(demo_onnx: Path):
    net = GRSer.from_pretrained(DEMO)
    texts = ["the red circle", "The BIG  blue square, left of the café!", "a " * 40, ""]
    texts += [spec.ANTI_PREFIX + t for t in texts] + ["unknownwordzzz <no>"]
    want = net.text_encoder.tokenize(texts)
    ids, mask = Tokenizer(demo_onnx, net.config.max_tokens)(texts)
    assert ids.tolist() == want["input_ids"].tolist()
    assert mask.tolist() == want["attention_mask"].tolist()


def test_numpy_preprocessing_and_upsampling_are_torchs():
    rng = np.random.default_rng(1)
    for shape in ((30, 50), (480, 640), (7, 300)):
        photo = Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        assert np.array_equal(image_to_array(photo, 64), image_to_pixels(photo, 64).numpy())
        want = normalize(image_to_pixels(photo, 64)[None]).numpy()
        assert np.array_equal(normalize_array(image_to_array(photo, 64)[None]), want)
    logits = (rng.standard_normal((64, 64)) * 6).astype(np.float32)
    logits[0, 0] = -200.0  # exp overflows: probability 0, no warning
    for size in ((640, 480), (64, 64), (33, 20), (1, 1), (1000, 77), (90, 700)):  # 11 bands
        want = probability_to_original(torch.from_numpy(logits), size).numpy()
        got = probability_to_original_array(logits, size)
        assert got.shape == want.shape == size[::-1] and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5
        assert np.array_equal(got > 0.5, want > 0.5)


def test_onnx_runtime_refuses_other_devices_and_precisions_in_one_line(
    demo_onnx: Path, tmp_path: Path
):
    for flag, value in (("--device", "cuda"), ("--precision", "bf16")):
        result = gres(
            "segment", str(PHOTOS), "x", "--model", str(demo_onnx), flag, value,
            "--out", str(tmp_path / "o"),
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{flag} {value}" in lines[0] and "ONNX" in lines[0]


def test_missing_onnxruntime_is_one_line_naming_the_extra(demo_onnx: Path, tmp_path: Path):
    script = (
        "import runpy, sys\n"
        "sys.modules['onnxruntime'] = None  # as if not installed\n"
        f"sys.argv = ['gres', 'segment', {str(PHOTOS)!r}, 'x', '--model', {str(demo_onnx)!r},"
        f" '--out', {str(tmp_path / 'o')!r}]\n"
        "runpy.run_module('gres_cli', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env()
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "onnxruntime" in line and 'pip install "gres[onnx]"' in line
