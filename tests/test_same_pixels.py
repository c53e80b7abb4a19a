"""The model sees the same pixels whatever the output options: a JPEG larger than the model's
input is decoded for the model the same way with and without --overlay (which keeps the photo
at full size for the overlay) and whatever --format (issue 19, item 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import DEMO_MODEL, REPO, gres_here, read_jsonl
from PIL import Image

from gres_cli.backends import load_model
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup

COFFEE = REPO / "examples" / "photos" / "coffee.jpg"  # 320 x 213: the demo model reads 64 px
ANSWER = ("present", "d_pos", "d_neg", "score", "area", "bbox", "width", "height")


def photos(tmp_path: Path) -> Path:
    """coffee.jpg and a generated 900 x 700 JPEG, both larger than the model's input."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(COFFEE, folder / "coffee.jpg")
    gradient = Image.linear_gradient("L").resize((900, 700)).convert("RGB")
    gradient.paste((200, 30, 30), (300, 200, 600, 500))
    gradient.save(folder / "square.jpg", quality=90)
    return folder


def answers(out: Path) -> dict[str, tuple]:
    records = read_jsonl(out / "records.jsonl")
    return {Path(r["image"]).name: tuple(r[k] for k in ANSWER) for r in records}


def test_overlay_and_format_never_change_the_records(tmp_path):
    folder = photos(tmp_path)
    runs = {
        "plain": [],
        "overlay": ["--overlay"],
        "npy": ["--format", "npy"],
        "npy-overlay": ["--format", "npy", "--overlay"],
    }
    got = {}
    for name, options in runs.items():
        out = tmp_path / name
        done = gres_here(
            "segment", str(folder), "a red square", "--model", str(DEMO_MODEL),
            "--margin", "0", "--out", str(out), *options,
        )  # fmt: skip
        assert done.exit_code == 0, done.stderr
        got[name] = answers(out)
    assert len(got["plain"]) == 2
    for name in runs:
        assert got[name] == got["plain"], name
    assert Image.open(tmp_path / "overlay" / "photos" / "coffee.overlay.jpg").size == (320, 213)


def test_the_engine_decodes_the_models_input_alike_with_and_without_the_photo(tmp_path):
    folder = photos(tmp_path)
    group = ImageGroup("photos", sorted(folder.glob("*.jpg")))
    engine = Segmenter(load_model(DEMO_MODEL), "cpu", batch_size=2, margin=0.0)
    plain = engine.run_group(group, "a red square")
    kept = engine.run_group(group, "a red square", keep_photo=True)
    assert [(r.d_pos, r.d_neg, r.present) for r in kept] == [
        (r.d_pos, r.d_neg, r.present) for r in plain
    ]
    assert [r.photo.size for r in kept] == [(320, 213), (900, 700)]
    assert [r.size for r in kept] == [r.size for r in plain] == [(320, 213), (900, 700)]
