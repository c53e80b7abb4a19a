"""One loading path for every model kind: a kind registered from this file alone (one class,
one `register_model_type` line) runs end to end through `gres segment`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import gres_here, read_jsonl
from PIL import Image

from gres_cli.backends import load_model, model_types, register_model_type
from gres_cli.backends.protocol import (
    Description,
    FirstPass,
    GroupModel,
    SecondPass,
    WithoutExtras,
)
from gres_cli.errors import ModelLoadError

TOY = "toy-red"


def red_share(image: Image.Image) -> np.ndarray:
    """The model's input: how red each pixel of an 8 x 8 thumbnail is, in [0, 1]."""
    rgb = np.asarray(image.convert("RGB").resize((8, 8)), np.float32) / 255
    return np.clip(rgb[..., 0] - rgb[..., 1:].mean(-1), 0, 1)


class RedModel(WithoutExtras):
    """A toy kind: an image holds "red" when its mean redness passes 0.25; the mask is its
    red pixels. numpy only, so the engine gives it the numpy runtime."""

    kind = TOY
    runtime = "numpy"
    input_size = 8
    margin = 0.0
    experts = 2
    max_experts = None
    group_weight = None

    def __init__(self, folder: Path, group: bool) -> None:
        self.group = group
        self.config = {"model_type": TOY, "folder": str(folder), "group": group}

    @classmethod
    def from_folder(
        cls, folder: Path, checkpoint: str, revision: str | None, *, group=True, token=None
    ) -> RedModel:
        return cls(folder, group)

    def describe(self) -> Description:
        return Description("toy", [("input size", "8 px")], {"config": self.config})

    def to(self, device: Any) -> RedModel:
        return self

    def preparer(self):
        return red_share

    def model_input(self, prepared: np.ndarray) -> np.ndarray:
        return prepared

    def encode_text(self, expression: str) -> str:
        return expression

    def first_pass(self, pixels: np.ndarray, text: str, alone: bool = False) -> FirstPass:
        redness = pixels.reshape(len(pixels), -1).mean(1)
        return FirstPass({"redness": redness}, list(pixels))

    def choose_experts(self, summary: dict[str, np.ndarray], k: int) -> None:
        return None

    def second_pass(self, pixels, text, experts, items) -> SecondPass:
        maps = np.stack(items) if items else pixels
        redness = maps.reshape(len(maps), -1).mean(1)
        return SecondPass(0.5 - redness + 0.25, redness + 0.25, maps * 8 - 2)

    def probability_at(self, mask_logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        prob = 1 / (1 + np.exp(-mask_logits))
        return np.asarray(Image.fromarray(prob.astype(np.float32)).resize(size, Image.NEAREST))


register_model_type(TOY, f"{__name__}:RedModel")


@pytest.fixture()
def toy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": TOY}))
    return folder


def test_a_kind_registered_from_a_test_file_runs_through_gres_segment(toy_folder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (250, 10, 10)).save(photos / "red.png")
    Image.new("RGB", (40, 30), (10, 10, 250)).save(photos / "blue.png")
    half = np.zeros((30, 40, 3), np.uint8)
    half[:, :20] = (250, 10, 10)
    Image.fromarray(half).save(photos / "half.png")
    out = tmp_path / "out"
    done = gres_here("segment", str(photos), "red", "--model", str(toy_folder), "--out", str(out))
    assert done.exit_code == 0, done.stderr
    records = {Path(r["image"]).name: r for r in read_jsonl(out / "records.jsonl")}
    assert {n: r["present"] for n, r in records.items()} == {
        "blue.png": False,
        "half.png": True,
        "red.png": True,
    }
    assert records["half.png"]["bbox"] == [0, 0, 20, 30]
    assert records["red.png"]["area"] == 40 * 30
    mask = np.asarray(Image.open(out / "photos" / "half.png"))
    assert mask[:, :20].all() and not mask[:, 20:].any()
    assert not (out / "photos" / "blue.png").exists()


def test_the_registry_loads_the_kind_and_names_every_kind_on_a_stranger(toy_folder, tmp_path):
    model = load_model(toy_folder)
    assert isinstance(model, RedModel) and isinstance(model, GroupModel)
    assert TOY in model_types()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match=r"model_type 'bert' is not one gres runs \(grser, "):
        load_model(stranger)


def test_gres_model_info_prints_what_the_kind_describes(toy_folder):
    done = gres_here("model", "info", str(toy_folder), "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout) == {
        "model": str(toy_folder),
        "config": {"model_type": TOY, "folder": str(toy_folder), "group": True},
    }


class RedWithExtras(RedModel):
    """The toy kind with an extra value of its own: it reaches the result and the record."""

    def second_pass(self, pixels, text, experts, items) -> SecondPass:
        out = super().second_pass(pixels, text, experts, items)
        out.extras = {"redness": out.d_neg - 0.25}
        return out

    def image_extras(self, values: dict[str, np.float32], margin: float) -> dict[str, Any]:
        return {"redness": float(values["redness"])}

    def record_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        return {"toy_redness": round(extras["redness"], 3)}


register_model_type("toy-red-extras", f"{__name__}:RedWithExtras")


def test_a_models_declared_extras_reach_its_results_and_records(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy-red-extras"}))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (250, 10, 10)).save(photos / "red.png")
    out = tmp_path / "out"
    done = gres_here("segment", str(photos), "red", "--model", str(folder), "--out", str(out))
    assert done.exit_code == 0, done.stderr
    (record,) = read_jsonl(out / "records.jsonl")
    assert list(record)[-3:] == ["height", "toy_redness", "error"]
    assert record["toy_redness"] == 0.941  # (250 - 10) / 255: red less the mean of green, blue
