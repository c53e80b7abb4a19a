"""`gres segment` never writes over an input, never outside --out, and never passes old answers
off as new ones (issue 11). Runs in-process (CliRunner): no interpreter start per command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_grser, gres_here, noise_image, read_jsonl
from PIL import Image

from gres_cli.inference.inputs import discover
from gres_cli.model.config import GRSerConfig
from gres_cli.model.grser import GRSer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # margin -5: every image "present", masks written
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-5.0)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gres: error:"), result.stderr
    return lines[0]


def test_out_that_holds_the_input_folder_is_refused_and_the_photo_kept(
    model_dir: Path, tmp_path: Path
):
    """Was: `gres segment synth-0000 X --out .` wrote the mask over synth-0000/0001.png."""
    noise_image(tmp_path / "synth-0000" / "0001.png", 0)
    noise_image(tmp_path / "synth-0000" / "0002.png", 1)
    before = _snapshot(tmp_path)
    for out in (".", "synth-0000", "synth-0000/masks"):
        result = gres_here(
            "segment", "synth-0000", "x", "--model", str(model_dir), "--out", out, cwd=tmp_path
        )
        assert "--out" in _one_line_error(result)
        assert _snapshot(tmp_path) == before


def test_a_file_above_the_working_folder_makes_no_dotdot_group(model_dir: Path, tmp_path: Path):
    """Was: `gres segment ../x.png` made a group named `..` and wrote the mask outside --out."""
    noise_image(tmp_path / "x.png", 0)
    (tmp_path / "work").mkdir()
    result = gres_here(
        "segment", "../x.png", "x", "--model", str(model_dir), "--out", "o", cwd=tmp_path / "work"
    )
    assert result.exit_code == 0, result.output
    (rec,) = read_jsonl(result.stdout)
    assert rec["group"] == tmp_path.name
    out = (tmp_path / "work" / "o").resolve()
    assert out in (tmp_path / "work" / rec["mask"]).resolve().parents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work", "x.png"]


def test_stdin_groups_come_from_full_paths_and_never_share_an_output(
    model_dir: Path, tmp_path: Path
):
    """Was: a/day1/IMG_1.png and b/day1/IMG_1.png were one group writing one mask file."""
    a = noise_image(tmp_path / "a" / "day1" / "IMG_1.png", 0)
    b = noise_image(tmp_path / "b" / "day1" / "IMG_1.png", 1)
    groups = discover("-", False, [str(a), str(b)])
    assert [[p.name for p in g.images] for g in groups] == [["IMG_1.png"], ["IMG_1.png"]]
    assert len({g.name for g in groups}) == 2 and all(".." not in g.name for g in groups)
    assert [g.name for g in discover("-", False, [str(a)])] == ["day1"]  # one folder: its name
    result = gres_here(
        "segment",
        "-",
        "x",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "o"),
        stdin=f"{a}\n{b}\n",
    )
    assert result.exit_code == 0, result.output
    recs = read_jsonl(result.stdout)
    assert len({r["group"] for r in recs}) == 2
    masks = {r["mask"] for r in recs}
    assert len(masks) == 2 and all(Path(m).is_file() for m in masks)


def test_two_images_with_one_stem_keep_their_own_outputs(model_dir: Path, tmp_path: Path):
    """Was: p.jpg and p.png in one folder wrote one mask file, p.png."""
    noise_image(tmp_path / "in" / "p.png", 0)
    Image.open(tmp_path / "in" / "p.png").save(tmp_path / "in" / "p.jpg")
    noise_image(tmp_path / "in" / "q.png", 2)
    out = tmp_path / "o"
    result = gres_here(
        "segment",
        str(tmp_path / "in"),
        "x",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--overlay",
    )
    assert result.exit_code == 0, result.output
    recs = {Path(r["image"]).name: r for r in read_jsonl(result.stdout)}
    assert {Path(r["mask"]).name for r in recs.values()} == {"p.jpg.png", "p.png.png", "q.png"}
    assert len({r["overlay"] for r in recs.values()}) == 3
    for r in recs.values():
        assert np.asarray(Image.open(r["mask"])).sum() // 255 == r["area"]


def test_a_rerun_with_other_settings_is_refused_naming_the_difference(
    model_dir: Path, tmp_path: Path
):
    """Was: a re-run with another --margin (or model, format, threshold) re-emitted the old
    records as answers of the new settings."""
    noise_image(tmp_path / "in" / "a.png", 0)
    noise_image(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "o"
    base = ("segment", str(tmp_path / "in"), "x", "--model", str(model_dir), "--out", str(out))
    first = gres_here(*base)
    assert first.exit_code == 0 and all(r["present"] for r in read_jsonl(first.stdout))
    settings = json.loads((out / "settings.json").read_text())
    assert settings["margin"] == -5.0 and settings["format"] == "png"
    assert len(settings["config_sha256"]) == 64
    other = tmp_path / "other-model"
    GRSer(GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4)).save_pretrained(
        other
    )
    for option, value in (
        ("--margin", "100"),
        ("--format", "rle"),
        ("--threshold", "0.9"),
        ("--experts", "2"),
        ("--model", str(other)),
    ):
        line = _one_line_error(gres_here(*base, option, value))
        assert option in line and "--overwrite" in line
    redo = gres_here(*base, "--margin", "100", "--overwrite")
    assert redo.exit_code == 0, redo.output
    assert [r["present"] for r in read_jsonl(redo.stdout)] == [False, False]
    on_disk = read_jsonl((out / "records.jsonl").read_text())
    assert [r["present"] for r in on_disk] == [False, False]  # the old answers are gone
    again = gres_here(*base, "--margin", "100")
    assert read_jsonl(again.stdout) == read_jsonl(redo.stdout)


def test_jsonl_file_of_a_resumed_run_holds_each_record_once(model_dir: Path, tmp_path: Path):
    """Was: --jsonl FILE was appended to, so a re-run duplicated every line."""
    noise_image(tmp_path / "in" / "a.png", 0)
    noise_image(tmp_path / "in" / "b.png", 1)
    lines = tmp_path / "r.jsonl"
    args = (
        "segment",
        str(tmp_path / "in"),
        "x",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "o"),
        "--jsonl",
        str(lines),
    )
    assert gres_here(*args).exit_code == 0
    first = lines.read_text()
    assert gres_here(*args).exit_code == 0
    assert lines.read_text() == first and len(first.splitlines()) == 2


def test_another_expression_never_overwrites_an_images_masks(model_dir: Path, tmp_path: Path):
    """Masks are named after their image: a second expression on the same images into one
    --out would overwrite the first one's masks under records still pointing at them. Other
    groups (one expression each, as for `gres eval --predictions`) share an --out and FILE."""
    noise_image(tmp_path / "g1" / "a.png", 0)
    noise_image(tmp_path / "g2" / "a.png", 1)
    out, lines = tmp_path / "o", tmp_path / "r.jsonl"
    common = ("--model", str(model_dir), "--out", str(out), "--jsonl", str(lines))
    assert gres_here("segment", str(tmp_path / "g1"), "x", *common).exit_code == 0
    mask = (out / "g1" / "a.png").read_bytes()
    line = _one_line_error(gres_here("segment", str(tmp_path / "g1"), "y", *common))
    assert "'x'" in line and "another --out" in line
    assert (out / "g1" / "a.png").read_bytes() == mask
    assert gres_here("segment", str(tmp_path / "g2"), "y", *common).exit_code == 0
    assert [r["expression"] for r in read_jsonl(lines.read_text())] == ["x", "y"]


def test_markup_in_user_text_prints_literally(model_dir: Path, tmp_path: Path):
    """Was: a path holding `[/draft]` raised a rich MarkupError traceback."""
    missing = tmp_path / "[/draft] photos"
    line = _one_line_error(gres_here("segment", str(missing), "x", "--model", str(model_dir)))
    assert "[/draft] photos: no such file or folder" in line
    noise_image(tmp_path / "[draft]" / "a.png", 0)
    result = gres_here(
        "segment",
        str(tmp_path / "[draft]"),
        "the [/b] thing",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "o"),
        "--jsonl",
        str(tmp_path / "r.jsonl"),
    )
    assert result.exit_code == 0, result.output
    assert '"the [/b] thing"' in result.stderr  # the summary table's title


@pytest.mark.parametrize("experts", ["6", "0", "-1"])
def test_experts_outside_the_models_range_is_a_usage_error(
    model_dir: Path, tmp_path: Path, experts: str
):
    """--experts above the model's K (or below 1) is refused before any image is read; it was a
    conv RuntimeError traceback with exit 1."""
    photo = noise_image(tmp_path / "in" / "a.png", 0)
    result = gres_here(
        "segment", str(photo.parent), "x", "--model", str(model_dir), "--experts", experts,
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    line = _one_line_error(result)
    assert f"--experts {experts}" in line and "1 to 4" in line
    assert not (tmp_path / "out" / "records.jsonl").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--margin", "inf"),
        ("--margin", "-inf"),
        ("--margin", "nan"),
        ("--threshold", "nan"),
        ("--threshold", "inf"),
        ("--threshold", "1.5"),
        ("--threshold", "-0.1"),
    ],
)
def test_a_margin_or_threshold_that_is_not_a_usable_number_is_a_usage_error(
    model_dir: Path, tmp_path: Path, option: str, value: str
):
    """Was: `--margin inf` wrote records with a bare `Infinity` (not JSON), `--threshold nan`
    a NaN into settings.json that the same command then refused as other settings ("made with
    --threshold nan, not nan"), and a threshold past 1 empty masks on "present" images."""
    photo = noise_image(tmp_path / "in" / "a.png", 0)
    out = tmp_path / "out"
    result = gres_here(
        "segment", str(photo.parent), "x", "--model", str(model_dir), option, value,
        "--out", str(out),
    )  # fmt: skip
    line = _one_line_error(result)
    assert f"{option} {value}" in line
    assert not out.exists()
