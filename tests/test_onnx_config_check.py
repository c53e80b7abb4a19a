"""An ONNX export whose config.json disagrees with its graphs (issue 19, item 9) is refused at
load in one line naming the key, before any image is read. Was: an onnxruntime InvalidArgument
traceback in the middle of the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, gres

pytest.importorskip("onnxruntime")

PHOTOS = REPO / "examples" / "photos"


@pytest.mark.parametrize(
    ("key", "value", "graph"),
    [
        ("experts", 3, "query.onnx"),
        ("image_size", 96, "encode.onnx"),
        ("max_tokens", 32, "text.onnx"),
        ("swin_depths", [1, 1, 2], "query.onnx"),
    ],
)
def test_an_export_whose_config_disagrees_with_its_graphs_is_refused_in_one_line(
    demo_onnx: Path, tmp_path: Path, key: str, value, graph: str
):
    folder = tmp_path / "edited"
    shutil.copytree(demo_onnx, folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    proc = gres("segment", str(PHOTOS), "the cup", "--model", str(folder), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gres: error:") and "Traceback" not in proc.stderr
    assert f'"{key}"' in line and graph in line and str(value) in line, line
    assert "re-export" in line
    assert not (out / "records.jsonl").exists() or not (out / "records.jsonl").read_text()


def test_the_export_as_written_loads(demo_onnx: Path):
    from gres_cli.backends.grser_onnx import GRSerOnnxModel

    model = GRSerOnnxModel(demo_onnx)
    assert (model.input_size, model.experts) == (64, 4)
