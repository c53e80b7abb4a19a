"""SAM 3's ONNX export: `gres model export SAM3 OUT --format onnx` checks itself, and `gres
segment / eval --model OUT` runs on onnxruntime, importing neither torch nor transformers, with
the records of the torch backend (backend_score included); the region embedding e_n, pooled in
numpy by the runtime, equal to torch's but for float rounding. The runtime is CLIPSeg's export's
but for its text and first pass (tests/test_onnx_clipseg.py covers the shared parts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gres, segment_torch_free
from PIL import Image
from test_backends_sam import build_tiny_sam3
from test_onnx_clipseg import _compare, _flat, _jpeg

from gres_cli.backends import check_for_push, load_model
from gres_cli.backends.group_rule import region_embedding_array
from gres_cli.backends.openvocab import region_embedding
from gres_cli.backends.sam3_onnx import Sam3OnnxModel
from gres_cli.errors import GresError
from gres_cli.model import sam3_onnx_spec as spec
from gres_cli.model.onnx_sessions import weights_file

ort = pytest.importorskip("onnxruntime")
EXPRESSION = "the red umbrella"


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


@pytest.fixture(scope="module")
def sam3_onnx(sam3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sam3-onnx") / "tiny-sam3-onnx"
    proc = gres("model", "export", str(sam3_dir), str(out), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote ONNX export of {sam3_dir}" in proc.stderr
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNGs of odd sizes and an EXIF-rotated JPEG."""
    folder = tmp_path_factory.mktemp("photos") / "day1"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate([(70, 50), (64, 64), (90, 40), (33, 77), (100, 80)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    _jpeg(folder / "10.jpg", (640, 480), 6, 1)  # shown 480 x 640
    return folder


def test_export_folder_is_the_contract(sam3_onnx: Path, sam3_dir: Path):
    names = {p.name for p in sam3_onnx.iterdir()}
    assert {
        "README.md",
        "config.json",
        "tokenizer.json",
        *spec.GRAPH_FILES.values(),
        *map(weights_file, spec.GRAPH_FILES.values()),
    } <= names
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)
    config = json.loads((sam3_onnx / "config.json").read_text())
    assert config["model_type"] == "sam3-onnx"
    assert (config["image_size"], config["max_tokens"]) == (112, 32)
    assert (config["experts"], config["group_weight"], config["margin"]) == (4, 1.0, 0.0)
    facts = config[spec.CONFIG_KEY]
    assert facts["graphs"] == {"text": "text.onnx", "forward": "forward.onnx"}
    assert facts["source"] == {"model": str(sam3_dir), "revision": None}
    # measured (onnxruntime 1.32.0, torch 2.14.1, transformers 5.24.0): text 2.1e-6,
    # forward 5.1e-5 (on mask logits and features of tens: relative 1e-6), embedding 1.2e-7
    errors = facts["max_abs_error"]
    assert errors["text"] < 1e-4 and errors["forward"] < 1e-3 and errors["embedding"] < 1e-5
    assert errors["image_processor"] == 0
    model = load_model(sam3_onnx)
    assert isinstance(model, Sam3OnnxModel) and model.input_size == 112
    info = gres("model", "info", str(sam3_onnx))
    assert info.returncode == 0 and "SAM 3 ONNX export" in info.stderr
    check_for_push(sam3_onnx)  # gres model push publishes it
    broken = sam3_onnx.parent / "broken"
    shutil.copytree(sam3_onnx, broken)
    (broken / "forward.onnx").write_bytes(b"not a graph")
    with pytest.raises(GresError, match=r"forward\.onnx: cannot load as ONNX"):
        check_for_push(broken)


def test_export_of_a_settings_folder_keeps_its_settings(sam3_dir: Path, tmp_path: Path):
    settings = tmp_path / "calibrated"
    proc = gres("model", "init", str(settings), "--backend", str(sam3_dir), "--margin", "-0.3",
                "--experts", "2", "--group-weight", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    proc = gres("model", "export", str(settings), str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["experts"], config["group_weight"], config["margin"]) == (2, 0.5, -0.3)
    assert config["onnx"]["source"]["backend"] == str(sam3_dir)
    model = load_model(out)
    assert (model.experts, model.group_weight, model.margin) == (2, 0.5, -0.3)


def test_region_embedding_in_numpy_is_torchs():
    """Grids that divide the mask's and grids that do not (adaptive pooling's overlapping
    bins), and an empty region (the whole image pooled)."""
    rng = np.random.default_rng(0)
    for mask, grid in [((32, 32), (8, 8)), ((30, 17), (7, 5)), ((9, 9), (9, 9)), ((5, 6), (8, 8))]:
        logits = (rng.standard_normal((3, *mask)) * 4).astype(np.float32)
        logits[1] = -200.0  # empty: sigmoid 0 everywhere
        features = rng.standard_normal((3, 16, *grid)).astype(np.float32)
        want = region_embedding(torch.from_numpy(features), torch.from_numpy(logits).sigmoid())
        got = region_embedding_array(features, logits)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_segment_records_equal_the_torch_backends(
    sam3_dir: Path, sam3_onnx: Path, photos: Path, tmp_path: Path
):
    """With and without the group, at margins that decide both ways."""
    decided = {True: 0, False: 0}
    for flags in (["--margin", "-0.3"], ["--margin", "-0.4", "--no-group"]):
        outs = {}
        for name, model in (("torch", sam3_dir), ("onnx", sam3_onnx)):
            outs[name] = tmp_path / f"{name}{len(flags)}"
            proc = gres("segment", str(photos), EXPRESSION, "--model", str(model), "--out",
                        str(outs[name]), *flags)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
        for present, n in _compare(outs["onnx"], outs["torch"]).items():
            decided[present] += n
    assert decided[True] and decided[False]  # both decisions compared


def test_segment_from_the_hub_cache_imports_neither_torch_nor_transformers(
    sam3_onnx: Path, photos: Path, tmp_path: Path
):
    records = segment_torch_free(sam3_onnx, photos, EXPRESSION, tmp_path, "gres-test/sam3-onnx")
    assert len(records) == 6 and all(r["error"] is None for r in records)
    assert all("backend_score" in r and "backend_present" in r for r in records)


def test_eval_gives_the_torch_backends_metrics(
    sam3_dir: Path, sam3_onnx: Path, grd_dataset: Path, tmp_path: Path
):
    reports = {}
    for name, model in (("torch", sam3_dir), ("onnx", sam3_onnx)):
        reports[name] = tmp_path / f"{name}.json"
        proc = gres("eval", str(grd_dataset), "--model", str(model), "--split", "train",
                    "--report", str(reports[name]), "--margins", "-0.5,0,0.5",
                    "--group-weights", "0,1", "--calibrate", "acc")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    mine, want = (json.loads(reports[n].read_text()) for n in ("onnx", "torch"))
    assert mine["pairs"] == want["pairs"] > 0
    for metric, value in want["metrics"].items():
        assert mine["metrics"][metric] == pytest.approx(value, abs=1e-4), metric
    for sweep in ("margin_sweep", "group_weight_sweep"):
        assert _flat(mine[sweep]) == pytest.approx(_flat(want[sweep]), abs=1e-4), sweep


def test_push_uploads_every_file_of_the_export(hub: list[dict], sam3_onnx: Path, tmp_path: Path):
    """Was: forward.onnx was left out (the Hub file list named GRSer's and CLIPSeg's graphs
    only), so a pushed SAM 3 export could not run when pulled."""
    from typer.testing import CliRunner

    from gres_cli.cli import app

    folder = tmp_path / "export"
    shutil.copytree(sam3_onnx, folder)
    (folder / "notes.yaml").write_text("private")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/sam3-onnx"])
    assert result.exit_code == 0, result.output
    (files,) = hub
    assert set(files) == {p.name for p in sam3_onnx.iterdir()}
    assert {"forward.onnx", "text.onnx", "tokenizer.json", "config.json"} <= set(files)
