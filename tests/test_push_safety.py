"""`gres model push` and `gres grd push` upload only what a model or a dataset needs, and refuse
a folder holding pickles (issue 11). The Hub is replaced by a recorder of the one commit."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from conftest import build_grd
from typer.testing import CliRunner

from gres_cli.cli import app
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer


def test_model_push_uploads_the_model_files_only(hub: list[dict], tmp_path: Path):
    torch.manual_seed(0)
    folder = tmp_path / "m"
    GRSer(GRSerConfig.preset("grser-tiny")).save_pretrained(folder)
    (folder / "notes.yaml").write_text("private: yes")
    (folder / "scratch").mkdir()
    (folder / "scratch" / "x.json").write_text("{}")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/m"])
    assert result.exit_code == 0, result.output
    (files,) = hub
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert "notes.yaml" not in files and not any("/" in name for name in files)
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_model_push_refuses_a_checkpoint_holding_a_pickle(hub: list[dict], tmp_path: Path):
    """Was: pushing a run's checkpoint/ published its trainer_state.pt pickle."""
    folder = tmp_path / "checkpoint"
    GRSer(GRSerConfig.preset("grser-tiny")).save_pretrained(folder)
    torch.save({"step": 1}, folder / "trainer_state.pt")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/m"])
    assert result.exit_code == 2 and not hub
    (line,) = result.stderr.strip().splitlines()
    assert "trainer_state.pt" in line and "pickle" in line


def test_model_push_uploads_an_onnx_export_graphs_tokenizer_and_card(
    hub: list[dict], demo_onnx: Path, tmp_path: Path
):
    """Was: an export was refused (it has no model.safetensors for GRSer to load)."""
    folder = tmp_path / "export"
    shutil.copytree(demo_onnx, folder)
    (folder / "notes.yaml").write_text("private: yes")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/m-onnx"])
    assert result.exit_code == 0, result.output
    (files,) = hub
    expected = {p.name for p in demo_onnx.iterdir()}
    assert {"config.json", "README.md", "tokenizer.json", "text.onnx", "encode.onnx"} <= expected
    assert set(files) == expected and "query.onnx" in files
    assert all(files[name] == (folder / name).read_bytes() for name in files)


def test_model_push_refuses_an_onnx_export_whose_graph_does_not_load(
    hub: list[dict], demo_onnx: Path, tmp_path: Path
):
    folder = tmp_path / "export"
    shutil.copytree(demo_onnx, folder)
    (folder / "query.onnx").write_bytes(b"not a graph")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/m-onnx"])
    assert result.exit_code == 2 and not hub
    (line,) = result.stderr.strip().splitlines()
    assert "query.onnx: cannot load as ONNX" in line


def test_dataset_push_uploads_the_manifest_its_files_and_a_card(hub: list[dict], tmp_path: Path):
    data = build_grd(tmp_path / "d", n_groups=1)
    (data / "notes.txt").write_text("not part of the dataset")
    (data / "images" / "group-00" / "unlisted.jpg").write_bytes(b"x")
    result = CliRunner().invoke(app, ["grd", "push", str(data), "org/d"])
    assert result.exit_code == 0, result.output
    (files,) = hub
    listed = {"grd.json", "README.md"}
    listed |= {f"images/group-00/{i:04d}.jpg" for i in range(3)}
    listed |= {"masks/group-00/e1/0000.png", "masks/group-00/e1/0001.png"}
    listed |= {"masks/group-00/e2/0000.png"}
    assert set(files) == listed
    assert b"CC0-1.0" in files["README.md"]
    (data / "extra.pkl").write_bytes(b"\x80\x04N.")
    refused = CliRunner().invoke(app, ["grd", "push", str(data), "org/d"])
    assert refused.exit_code == 2 and "extra.pkl" in refused.stderr and len(hub) == 1
