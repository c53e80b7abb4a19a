"""CLIPSeg's ONNX export (issue 22): `gres model export CLIPSEG OUT --format onnx` checks itself,
and `gres segment / eval --model OUT` runs on onnxruntime, importing neither torch nor
transformers, with the records of the torch backend (backend_score included): the image
processor's numpy twin equal to transformers' bit for bit, the group rule's numpy twin equal
to torch's but for float rounding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_clipseg, gres, segment_torch_free
from PIL import Image

from grd_tools.imageio import open_image_reduced, read_mask
from gres_cli.backends import load_model
from gres_cli.backends.clipseg_onnx import CLIPSegOnnxModel
from gres_cli.backends.group_rule import group_distances_array, group_prototype_array
from gres_cli.backends.openvocab import group_distances, group_prototype
from gres_cli.model import clipseg_onnx_spec as spec
from gres_cli.model.image_processor import resize_bilinear_antialiased
from gres_cli.model.onnx_sessions import weights_file

ort = pytest.importorskip("onnxruntime")
EXPRESSION = "the red circle"
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the decoder reads vision layers 0 and 1: layer 2 is in region.onnx, as rd64's last two
    folder = tmp_path_factory.mktemp("clipseg") / "tiny-clipseg"
    return build_tiny_clipseg(folder, extract_layers=(0, 1))


@pytest.fixture(scope="module")
def clipseg_onnx(clipseg_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clipseg-onnx") / "tiny-clipseg-onnx"
    proc = gres("model", "export", str(clipseg_dir), str(out), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote ONNX export of {clipseg_dir}" in proc.stderr
    return out


def _jpeg(path: Path, size: tuple[int, int], orientation: int | None, seed: int) -> None:
    """A smooth JPEG (a gradient plus a disc: small files even at 12 MP), EXIF-rotated."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.2 * min(w, h)) ** 2
    img = np.stack([x / w * 255, y / h * 255, np.where(disc, 255.0, 40.0)], -1).astype(np.uint8)
    exif = Image.Exif()
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(img).save(path, quality=90, exif=exif)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNGs of odd sizes, JPEGs of 640 x 480 and 4032 x 3024, two of them EXIF-rotated."""
    folder = tmp_path_factory.mktemp("photos") / "day1"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(70, 50), (33, 77), (641, 479)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    _jpeg(folder / "10.jpg", (640, 480), None, 0)
    _jpeg(folder / "11.jpg", (640, 480), 6, 1)  # shown 480 x 640
    _jpeg(folder / "12.jpg", (4032, 3024), 8, 2)  # shown 3024 x 4032
    return folder


def _records(out: Path) -> dict[tuple[str, str], dict]:
    lines = (out / "records.jsonl").read_text("utf-8").splitlines()
    return {(r["image"], r["expression"]): r for r in map(json.loads, lines)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# ---- the export -------------------------------------------------------------------------------


def test_export_folder_is_the_contract(clipseg_onnx: Path, clipseg_dir: Path):
    names = sorted(p.name for p in clipseg_onnx.iterdir())
    assert {
        "README.md",
        "config.json",
        "tokenizer.json",
        *spec.GRAPH_FILES.values(),
        *map(weights_file, spec.GRAPH_FILES.values()),
    } <= set(names)
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)
    config = json.loads((clipseg_onnx / "config.json").read_text())
    assert config["model_type"] == spec.MODEL_TYPE
    assert (config["image_size"], config["max_tokens"]) == (64, 77)
    assert (config["experts"], config["group_weight"], config["margin"]) == (4, 1.0, 0.0)
    facts = config[spec.CONFIG_KEY]
    assert facts["graphs"] == spec.GRAPH_FILES and facts["onnxruntime"] == ort.__version__
    assert facts["source"] == {"model": str(clipseg_dir), "revision": None}
    # measured (onnxruntime 1.32.0, torch 2.14.1, transformers 5.24.0): text 6.6e-7, image
    # 4.9e-5, region 2.8e-7 (region.onnx after the runtime's image.onnx, against e_n of torch)
    errors = facts["max_abs_error"]
    assert errors["text"] < 1e-5 and errors["image"] < 1e-3 and errors["region"] < 1e-5
    assert errors["image_processor"] == 0
    assert isinstance(load_model(clipseg_onnx), CLIPSegOnnxModel)
    info = gres("model", "info", str(clipseg_onnx))
    assert info.returncode == 0 and "CLIPSeg ONNX export" in info.stderr


def test_export_of_a_settings_folder_keeps_its_settings(clipseg_dir: Path, tmp_path: Path):
    settings = tmp_path / "calibrated"
    proc = gres("model", "init", str(settings), "--backend", str(clipseg_dir), "--margin", "0.3",
                "--experts", "2", "--group-weight", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    proc = gres("model", "export", str(settings), str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["experts"], config["group_weight"], config["margin"]) == (2, 0.5, 0.3)
    assert config["onnx"]["source"]["backend"] == str(clipseg_dir)
    model = load_model(out)
    assert (model.experts, model.group_weight, model.margin) == (2, 0.5, 0.3)


def test_export_refusals_are_one_line_and_write_nothing(clipseg_dir: Path, tmp_path: Path):
    dino = tmp_path / "dino"
    dino.mkdir()
    (dino / "config.json").write_text('{"model_type": "grounding-dino"}')
    proc = gres("model", "export", str(dino), str(tmp_path / "a"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "a grounding-dino model; ONNX export supports GRSer, CLIPSeg and SAM 3" in proc.stderr
    over_dino = tmp_path / "over-dino"
    over_dino.mkdir()
    (over_dino / "config.json").write_text(
        json.dumps({"model_type": "gres-backend", "backend": str(dino)})
    )
    proc = gres("model", "export", str(over_dino), str(tmp_path / "b"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "settings for a grounding-dino backend; ONNX export supports" in proc.stderr
    sam3 = tmp_path / "sam3"  # a kind that exports, from a folder that is no checkpoint
    sam3.mkdir()
    (sam3 / "config.json").write_text('{"model_type": "sam3"}')
    proc = gres("model", "export", str(sam3), str(tmp_path / "c"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "cannot load as sam3" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino", "over-dino", "sam3"]


def test_failed_self_check_leaves_nothing(clipseg_dir: Path, tmp_path: Path, monkeypatch):
    from gres_cli.backends import clipseg_export
    from gres_cli.errors import GresError
    from gres_cli.model import export

    monkeypatch.setattr(export, "CHECK_TOLERANCE", 0.0)  # no float32 graph is exact
    with pytest.raises(GresError, match=r"self-check failed: onnxruntime's .* differs from torch"):
        clipseg_export.export_clipseg_onnx(clipseg_dir, "tiny", None, tmp_path / "out", 17)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            {
                "onnx": {
                    "graphs": {"text": "text.onnx", "image": "text.onnx", "region": "region.onnx"}
                }
            },
            "image graph text.onnx",
        ),
        (
            {
                "onnx": {
                    "graphs": {"text": "image.onnx", "image": "image.onnx", "region": "region.onnx"}
                }
            },
            "text graph image.onnx",
        ),
        (
            {"onnx": {"graphs": {"text": "text.onnx", "image": "image.onnx"}}},
            "graph 'region' must be a file in the model folder (an export by an earlier gres",
        ),
        (
            {
                "onnx": {
                    "graphs": {"text": "text.onnx", "image": "image.onnx", "region": "image.onnx"}
                }
            },
            "region graph image.onnx",
        ),
        ({"image_processor": {"height": 32, "width": 32}}, '"image_processor"'),
    ],
)
def test_an_export_whose_config_disagrees_with_its_graphs_is_refused_at_load(
    clipseg_onnx: Path, photos: Path, tmp_path: Path, edit: dict, words: str
):
    """A config.json edited (a graph named for the other, a processor size the image graph
    does not take) is refused in one line before any image is read. Was: onnxruntime's
    ValueError or InvalidArgument traceback in the middle of the run."""
    folder = tmp_path / "edited"
    shutil.copytree(clipseg_onnx, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in edit.items():
        config[key] = config[key] | value
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    proc = gres("segment", str(photos), "x", "--model", str(folder), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gres: error:") and words in line and "re-export" in line, line
    assert not (out / "records.jsonl").exists()


# ---- the numpy twins --------------------------------------------------------------------------


def test_image_processor_twin_is_clipsegs_bit_for_bit(
    clipseg_dir: Path, clipseg_onnx: Path, photos: Path
):
    """On each photo as gres decodes it (JPEGs at a reduced scale, EXIF orientation applied),
    and on random arrays of odd sizes, shrunk and enlarged."""
    import torchvision.transforms.v2.functional as tvF

    torch_model, onnx_model = load_model(clipseg_dir), load_model(clipseg_onnx)
    processor, twin = torch_model.preparer(), onnx_model.preparer()
    for path in sorted(photos.iterdir()):
        img, size = open_image_reduced(path, onnx_model.input_size)
        assert np.array_equal(twin(img), processor(img).numpy()), path.name
    assert size == (3024, 4032)  # the EXIF-rotated 12 MP photo, last
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 300), (353, 351), (1000, 77), (97, 131), (756, 1008)]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        for out in ((352, 352), (64, 64), (100, 30)):
            want = tvF.resize(chw, list(out), tvF.InterpolationMode.BILINEAR, antialias=True)
            got = resize_bilinear_antialiased(pixels, *out)
            assert np.array_equal(got, want.permute(1, 2, 0).numpy()), (h, w, out)


def test_group_rule_in_numpy_is_torchs():
    rng = np.random.default_rng(0)
    for n, k, d in [(1, 4, 8), (2, 4, 8), (6, 4, 16), (9, 3, 32), (5, 8, 8)]:
        emb = rng.standard_normal((n, d)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        if n > 3:
            scores[1] = scores[3]  # a tie: the earlier image first
            emb[2] = -emb[0]  # an expert that disagrees: weight 0
        for weight in (0.0, 0.5, 1.0):
            want_g = group_prototype(torch.from_numpy(scores), torch.from_numpy(emb), k)
            got_g = group_prototype_array(scores, emb, k)
            assert got_g.active == want_g.active
            np.testing.assert_allclose(got_g.prototype, want_g.prototype.numpy(), atol=1e-6)
            assert float(got_g.radius) == pytest.approx(float(want_g.radius), abs=1e-6)
            want = group_distances(torch.from_numpy(scores), torch.from_numpy(emb), want_g, weight)
            got = group_distances_array(scores, emb, got_g, weight)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == np.float32
                np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    agree = np.ones((3, 4), np.float32) / 2  # every expert equal: rho 0, no NaN
    group = group_prototype_array(np.ones(3, np.float32), agree, 3)
    assert group.active and float(group.radius) == pytest.approx(0.0, abs=1e-6)


# ---- gres segment / eval on the export --------------------------------------------------------


def test_segment_from_the_hub_cache_imports_neither_torch_nor_transformers(
    clipseg_onnx: Path, photos: Path, tmp_path: Path
):
    records = segment_torch_free(
        clipseg_onnx, photos, EXPRESSION, tmp_path, "gres-test/clipseg-onnx"
    )
    assert len(records) == 6 and all(r["error"] is None for r in records)
    assert all("backend_score" in r and "backend_present" in r for r in records)


def _compare(onnx_out: Path, torch_out: Path) -> dict[bool, int]:
    """The records of two runs: equal but for float noise in the distances and scores, masks
    of IoU >= 0.999 (measured: 1.0)."""
    mine, want = _records(onnx_out), _records(torch_out)
    assert mine.keys() == want.keys() and mine
    decided = {True: 0, False: 0}
    for key, rec in want.items():
        got = mine[key]
        for field in ("d_pos", "d_neg", "score", "backend_score"):
            assert got[field] == pytest.approx(rec[field], abs=1e-4), (key, field)
        exact = set(rec) - {"d_pos", "d_neg", "score", "backend_score", "mask", "area", "bbox"}
        assert {f: got[f] for f in exact} == {f: rec[f] for f in exact}
        assert (got["mask"] is None) == (rec["mask"] is None)
        if rec["mask"]:
            a, b = read_mask(got["mask"]) > 0, read_mask(rec["mask"]) > 0
            assert a.shape == (rec["height"], rec["width"])
            assert _iou(a, b) >= 0.999, key
        decided[rec["present"]] += 1
    return decided


def test_segment_records_equal_the_torch_backends(
    clipseg_dir: Path, clipseg_onnx: Path, photos: Path, tmp_path: Path
):
    """Group and --no-group, a margin that decides both ways, and --jobs (two expressions)."""
    decided = {True: 0, False: 0}
    for flags in ([], ["--no-group"]):
        outs = {}
        for name, model in (("torch", clipseg_dir), ("onnx", clipseg_onnx)):
            outs[name] = tmp_path / f"{name}{len(flags)}"
            proc = gres("segment", str(photos), EXPRESSION, "--model", str(model), "--out",
                        str(outs[name]), "--margin", "0.999", *flags)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
        for present, n in _compare(outs["onnx"], outs["torch"]).items():
            decided[present] += n
    assert decided[True] and decided[False]  # both decisions compared
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(json.dumps({"path": str(photos), "expression": e}) + "\n" for e in ("a", "cat"))
    )
    outs = {}
    for name, model in (("torch", clipseg_dir), ("onnx", clipseg_onnx)):
        outs[name] = tmp_path / f"jobs-{name}"
        proc = gres("segment", "--jobs", str(jobs), "--model", str(model), "--out",
                    str(outs[name]), "--margin", "-5")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    _compare(outs["onnx"], outs["torch"])


class CountingSession:
    """An onnxruntime session that counts its runs (and runs them)."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.session, name)


def test_a_lone_image_skips_the_region_graph(
    clipseg_dir: Path, clipseg_onnx: Path, photos: Path, tmp_path: Path
):
    """Only the group step reads e_n: an image alone in its group, --no-group and K = 1 leave
    region.onnx (the vision transformer's layers past the decoder's) out; a group runs it once
    per batch in pass 1, and once per batch in pass 2 for images past the cache. The records
    of a lone photo equal the torch backend's."""
    from gres_cli.inference import Segmenter
    from gres_cli.inference.inputs import ImageGroup

    model = load_model(clipseg_onnx)
    region = model.sessions[spec.REGION] = CountingSession(model.sessions[spec.REGION])
    images = sorted(photos.iterdir())
    for kwargs, group, group_on, runs in [
        ({}, images[:1], True, 0),
        ({}, images, True, 1),  # 6 images, one batch
        ({"experts": 1}, images, True, 0),
        ({}, images, False, 0),
        ({"cache_bytes": 0}, images, True, 2),  # pass 2 decodes and runs them again
        ({"cache_bytes": 0, "experts": 1}, images, True, 0),
    ]:
        region.runs, model.group = 0, group_on
        results = Segmenter(model, batch_size=8, **kwargs).run_group(
            ImageGroup("g", group), EXPRESSION
        )
        assert len(results) == len(group) and all(r.error is None for r in results)
        assert region.runs == runs, (kwargs, len(group), group_on)
    outs = {}
    for name, model_dir in (("torch", clipseg_dir), ("onnx", clipseg_onnx)):
        outs[name] = tmp_path / f"lone-{name}"
        proc = gres("segment", str(photos / "10.jpg"), EXPRESSION, "--model", str(model_dir),
                    "--out", str(outs[name]), "--margin", "-5")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert _compare(outs["onnx"], outs["torch"]) == {True: 1, False: 0}


def test_a_checkpoint_whose_decoder_reads_the_last_layer_has_a_region_graph_of_no_layers(
    photos: Path, tmp_path: Path
):
    """extract_layers ending at the last vision layer: region.onnx is the post-layernorm and
    the pooling alone (no weights file beside it), and a group's records equal torch's."""
    source = build_tiny_clipseg(tmp_path / "last-layer", extract_layers=(1, 2))
    export = tmp_path / "last-layer-onnx"
    proc = gres("model", "export", str(source), str(export))
    assert proc.returncode == 0, proc.stderr
    assert (export / "region.onnx").is_file()
    assert not (export / weights_file("region.onnx")).exists()
    outs = {}
    for name, model_dir in (("torch", source), ("onnx", export)):
        outs[name] = tmp_path / f"out-{name}"
        proc = gres("segment", str(photos), EXPRESSION, "--model", str(model_dir), "--out",
                    str(outs[name]), "--margin", "-5")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert _compare(outs["onnx"], outs["torch"]) == {True: 6, False: 0}


def test_segment_resumes_an_interrupted_run(clipseg_onnx: Path, photos: Path, tmp_path: Path):
    """A run that lost its last records redoes those images only (their masks rewritten, the
    others' left alone), with the same answers: the group step still sees every image."""
    out = tmp_path / "out"
    args = ["segment", str(photos), EXPRESSION, "--model", str(clipseg_onnx), "--out", str(out)]
    assert gres(*args, "--margin", "-5").returncode == 0
    full = (out / "records.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in full[:3]]
    (out / "records.jsonl").write_text("\n".join(full[:3]) + "\n")
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    proc = gres(*args, "--margin", "-5")
    assert proc.returncode == 0, proc.stderr
    assert sorted((out / "records.jsonl").read_text().splitlines()) == sorted(full)
    unchanged = {p for p, t in mtimes.items() if p.stat().st_mtime_ns == t}
    assert unchanged == {Path(r["mask"]) for r in kept}


def test_eval_gives_the_torch_backends_metrics(
    clipseg_dir: Path, clipseg_onnx: Path, grd_dataset: Path, tmp_path: Path
):
    reports = {}
    for name, model in (("torch", clipseg_dir), ("onnx", clipseg_onnx)):
        reports[name] = tmp_path / f"{name}.json"
        proc = gres("eval", str(grd_dataset), "--model", str(model), "--split", "train",
                    "--report", str(reports[name]), "--margins", "-0.5,0,0.5",
                    "--group-weights", "0,1", "--calibrate", "acc")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    mine, want = (json.loads(reports[n].read_text()) for n in ("onnx", "torch"))
    assert mine["pairs"] == want["pairs"] > 0
    for metric, value in want["metrics"].items():
        assert mine["metrics"][metric] == pytest.approx(value, abs=1e-4), metric
    for sweep in ("margin_sweep", "group_weight_sweep"):  # one pass served every gamma
        assert json.dumps(mine[sweep], sort_keys=True).count(":") > 20
        assert _flat(mine[sweep]) == pytest.approx(_flat(want[sweep]), abs=1e-4), sweep


def _flat(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}/")
        else:
            out[prefix + key] = value
    return out


# ---- push -------------------------------------------------------------------------------------


def test_push_uploads_the_export_and_refuses_a_raw_checkpoint(
    hub: list[dict], clipseg_onnx: Path, clipseg_dir: Path, tmp_path: Path
):
    from typer.testing import CliRunner

    from gres_cli.cli import app

    folder = tmp_path / "export"
    shutil.copytree(clipseg_onnx, folder)
    (folder / "notes.yaml").write_text("private")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/clipseg-onnx"])
    assert result.exit_code == 0, result.output
    (files,) = hub
    assert set(files) == {p.name for p in clipseg_onnx.iterdir()}
    assert {"image.onnx", "region.onnx", "text.onnx", "tokenizer.json", "config.json"} <= set(files)
    (folder / "image.onnx").write_bytes(b"not a graph")
    result = CliRunner().invoke(app, ["model", "push", str(folder), "org/clipseg-onnx"])
    assert result.exit_code == 2 and "image.onnx: cannot load as ONNX" in result.stderr
    result = CliRunner().invoke(app, ["model", "push", str(clipseg_dir), "org/clipseg"])
    assert result.exit_code == 2 and len(hub) == 1
    (line,) = result.stderr.strip().splitlines()
    assert "a clipseg checkpoint; gres model push publishes" in line
