"""`gres segment` end to end: real photos, bad inputs, outputs, resume, two-pass equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_grser, gres, read_jsonl
from PIL import Image

from gres_cli.inference.engine import Job, Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.grser import GRSer
from gres_cli.model.preprocess import preprocess, probability_to_original


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # margin -5: every image "present", masks written
    return build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny", margin=-5.0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("in") / "my photos é"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg")
    # an RGBA PNG, a palette image and a 16-bit greyscale image: all decoded to RGB
    Image.fromarray(data.camera()).convert("RGBA").save(folder / "camera rgba.png")
    Image.fromarray(data.camera()).convert("P").save(folder / "camera-p.png")
    Image.fromarray(data.camera().astype(np.uint16) * 200).save(folder / "camera16.png")
    return folder


def test_folder_of_real_photos_gives_records_and_masks_at_original_size(
    model_dir: Path, photos: Path, tmp_path: Path
):
    out = tmp_path / "out"
    proc = gres("segment", str(photos), "the cat", "--model", str(model_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    recs = read_jsonl(proc.stdout)
    assert len(recs) == 7
    keys = {"image", "group", "expression", "present", "d_pos", "d_neg", "margin", "score"}
    keys |= {"mask", "area", "bbox", "width", "height", "error"}
    for r in recs:
        assert keys <= set(r) and r["error"] is None and r["present"] is True
        with Image.open(r["image"]) as im:
            assert (r["width"], r["height"]) == im.size
        mask = np.asarray(Image.open(r["mask"]))
        assert mask.shape == (r["height"], r["width"])
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == r["area"]
        assert r["score"] == pytest.approx(r["d_neg"] - r["d_pos"], abs=1e-5)


def test_bad_images_get_an_error_record_and_exit_1(model_dir: Path, tmp_path: Path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "good.jpg")
    Image.new("RGB", (1, 1)).save(folder / "one-pixel.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    good = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.new("1", (10000, 10000)).save(folder / "bomb.png")  # 100 M pixels: refused
    proc = gres(
        "segment",
        str(folder),
        "the red thing",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 1, proc.stderr
    by_name = {Path(r["image"]).name: r for r in read_jsonl(proc.stdout)}
    assert by_name["good.jpg"]["error"] is None and by_name["one-pixel.png"]["error"] is None
    for bad in ("empty.jpg", "notes.png", "truncated.jpg", "bomb.png"):
        assert by_name[bad]["error"], bad
    assert "decompression-bomb" in by_name["bomb.png"]["error"]
    assert "Traceback" not in proc.stderr


def test_rerun_skips_finished_images_and_overwrite_redoes_them(
    model_dir: Path, photos: Path, tmp_path: Path
):
    out = tmp_path / "out"
    args = ("segment", str(photos), "the cat", "--model", str(model_dir), "--out", str(out))
    first = gres(*args)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    second = gres(*args)
    assert second.returncode == 0
    assert read_jsonl(second.stdout) == read_jsonl(first.stdout)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    third = gres(*args, "--overwrite")
    assert third.returncode == 0 and len(read_jsonl(third.stdout)) == 7


def test_stdin_paths_and_rle_format(model_dir: Path, photos: Path, tmp_path: Path):
    from pycocotools import mask as mask_utils

    paths = "\n".join(str(p) for p in sorted(photos.glob("*.jpg")))
    proc = gres(
        "segment",
        "-",
        "the cat",
        "--model",
        str(model_dir),
        "--format",
        "rle",
        "--out",
        str(tmp_path / "o"),
        stdin=paths,
    )
    assert proc.returncode == 0, proc.stderr
    recs = read_jsonl(proc.stdout)
    assert len(recs) == 4
    for r in recs:
        rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
        assert int(mask_utils.decode(rle).sum()) == r["area"]
        assert mask_utils.decode(rle).shape == (r["height"], r["width"])


def test_usage_errors_exit_2_before_any_work(model_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = gres("segment", str(empty), "x", "--model", str(model_dir), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no images found" in proc.stderr
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = gres(
        "segment",
        str(tmp_path / "img"),
        "x",
        "--model",
        "no/such-model",
        "--out",
        str(blocker / "o"),
    )
    assert proc.returncode == 2 and "not writable" in proc.stderr
    proc = gres(
        "segment",
        str(tmp_path / "img"),
        "x",
        "--model",
        str(model_dir),
        "--precision",
        "fp16",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr
    for option, value, says in (
        ("--batch-size", "0", "must be >= 1"),
        ("--workers", "-1", "must be >= 0"),
        ("--jsonl", str(blocker / "r.jsonl"), "not writable"),  # refused before the model loads
        ("--jsonl", str(tmp_path), "is a folder"),
    ):
        args = ("x", "--model", str(model_dir), option, value, "--out", str(tmp_path / "o"))
        proc = gres("segment", str(tmp_path / "img"), *args)
        assert proc.returncode == 2 and f"{option} " in proc.stderr and says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@torch.no_grad()
@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])  # pass 2 reuses pass 1 / encodes again
def test_engine_equals_all_pairs_for_small_folders(
    model_dir: Path, photos: Path, tmp_path: Path, cache_bytes: int
):
    model = GRSer.from_pretrained(model_dir)
    model.config.margin = 0.0
    # PNG copies: the engine decodes JPEGs at reduced scale (draft), a decode-level choice
    paths = []
    for p in sorted(photos.glob("*.jpg")):  # 4 images = K
        Image.open(p).save(tmp_path / f"{p.stem}.png")
        paths.append(tmp_path / f"{p.stem}.png")
    engine = Segmenter(model, "cpu", batch_size=3, cache_bytes=cache_bytes, all_masks=True)
    results = sorted(engine.run_group(ImageGroup("g", paths), "the cat"), key=lambda r: r.index)
    images = [Image.open(p).convert("RGB") for p in paths]
    out = model(preprocess(images, 64), "the cat")
    logits = out.mask_logits[0]
    masks = [
        (probability_to_original(logits[k], im.size) > 0.5).numpy() for k, im in enumerate(images)
    ]
    for k, r in enumerate(results):
        assert r.d_pos == pytest.approx(float(out.d_pos[0, k]), abs=1e-4)
        assert r.d_neg == pytest.approx(float(out.d_neg[0, k]), abs=1e-4)
        assert (r.mask != masks[k]).mean() < 1e-3


def test_large_folder_uses_top_k_of_the_whole_folder(model_dir: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / f"{i:02d}.png"
        )
    model = GRSer.from_pretrained(model_dir)
    engine = Segmenter(model, device="cpu", batch_size=4)
    results = engine.run_group(ImageGroup("g", sorted(tmp_path.glob("*.png"))), "the cat")
    assert sorted(r.index for r in results) == list(range(11))
    assert all(r.mask.shape == (48, 64) for r in results if r.present)
    # masks are upsampled for present images only, unless asked for all (a margin sweep)
    engine.margin = float(np.median([r.d_neg - r.d_pos for r in results]))
    results = engine.run_group(ImageGroup("g", sorted(tmp_path.glob("*.png"))), "the cat")
    assert {r.present for r in results} == {True, False}
    assert all((r.mask is not None) == r.present for r in results)
    engine.all_masks = True
    results = engine.run_group(ImageGroup("g", sorted(tmp_path.glob("*.png"))), "the cat")
    assert all(r.mask.shape == (48, 64) for r in results)


@torch.no_grad()
def test_top_k_experts_of_a_folder_larger_than_k_match_the_all_pairs_forward(
    model_dir: Path, tmp_path: Path
):
    """11 images, K = 4, batches of 4: pass 1 sees the folder in three batches, yet the engine
    picks the same K experts as the paper's forward over all 11 images at once (not the top K
    of a batch), and so makes the same d_pos / d_neg for every image."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(paths[-1])
    model = GRSer.from_pretrained(model_dir)
    assert model.config.experts == 4
    chosen = []
    select = model.select_experts

    def recording_select(scores, k=None):
        picked = select(scores, k)
        chosen.append(picked.tolist())
        return picked

    model.select_experts = recording_select
    engine = Segmenter(model, "cpu", batch_size=4, all_masks=True)
    results = sorted(engine.run_group(ImageGroup("g", paths), "the cat"), key=lambda r: r.index)
    out = model(preprocess([Image.open(p).convert("RGB") for p in paths], 64), "the cat")
    assert chosen == [out.expert_order[0].tolist()]
    assert max(chosen[0]) >= 4  # experts from beyond the first batch: the whole folder counts
    for k, r in enumerate(results):
        assert r.d_pos == pytest.approx(float(out.d_pos[0, k]), abs=1e-4)
        assert r.d_neg == pytest.approx(float(out.d_neg[0, k]), abs=1e-4)


@torch.no_grad()
def test_python_predict_agrees_with_the_engine(model_dir: Path, tmp_path: Path):
    """GRSer.predict (in-memory API) makes the engine's decisions and masks: two passes with
    the encoder output reused when the group exceeds one batch, one all-pairs forward within
    a batch (equal to the two passes for at most K = 4 images)."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    model = GRSer.from_pretrained(model_dir)
    engine = Segmenter(model, "cpu", batch_size=3, all_masks=True)
    runs = engine.run_group(ImageGroup("g", paths), "the cat")
    engine.margin = float(np.median([r.d_neg - r.d_pos for r in runs]))  # some of each

    def check(paths: list[Path], batch_size: int) -> None:
        images = [Image.open(p).convert("RGB") for p in paths]
        runs = engine.run_group(ImageGroup("g", paths), "the cat")
        preds = model.predict(images, "the cat", margin=engine.margin, batch_size=batch_size)
        assert {p.present for p in preds} == {True, False}
        for pred, res, im in zip(preds, sorted(runs, key=lambda r: r.index), images, strict=True):
            assert pred.present == res.present
            assert pred.d_pos == pytest.approx(res.d_pos, abs=1e-4)
            assert pred.score == pytest.approx(res.d_neg - res.d_pos, abs=1e-4)
            assert pred.mask.shape == (im.height, im.width)
            if pred.present:
                assert (pred.mask != res.mask).mean() < 1e-3
                assert pred.mask.any() == (pred.probability > 0.5)
            else:
                assert not pred.mask.any() and pred.probability == 0.0

    check(paths, batch_size=3)  # 7 images: two passes
    check(paths[:4], batch_size=16)  # one forward


def _noise_images(folder: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48 + i, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@torch.no_grad()
def test_one_run_over_many_jobs_equals_one_run_per_job(model_dir: Path, tmp_path: Path):
    """One loader streams every job's images (batches span jobs); each job still gets exactly
    its own two passes, whether its images stay cached, partly cached or are decoded again."""
    model = GRSer.from_pretrained(model_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not an image")
    five = _noise_images(tmp_path / "five", 5, 0)
    jobs = [
        Job(ImageGroup("five", five), "the cat"),
        Job(ImageGroup("five", five), "a dog"),  # replays the decode above, when it fits
        Job(ImageGroup("broken", [broken / "a.jpg"]), "the cat"),
        Job(ImageGroup("empty", []), "the cat"),
        Job(ImageGroup("seven", _noise_images(tmp_path / "seven", 7, 1)), "a dog", {2}),
        Job(ImageGroup("five again", five), "a bird"),  # as eval asks: same images, new text
    ]
    engine = Segmenter(model, "cpu", batch_size=3, all_masks=True)
    expected = [
        sorted(engine.run_group(j.group, j.expression, j.skip), key=lambda r: r.index) for j in jobs
    ]
    assert [r.index for r in expected[4]] == [0, 1, 3, 4, 5, 6]  # skipped: no result
    assert expected[2][0].error and not expected[3]
    one_image = model.encode(torch.zeros(1, 3, 64, 64), model.encode_text(["x"])).item(0)
    fits_three = 3 * one_image.nbytes  # pass 2 reuses the encoder output, not the pixels
    # every image cached / three per job / none; and the loader's worker processes
    for budget, workers in ((1 << 30, 0), (fits_three, 0), (0, 0), (1 << 30, 2)):
        engine.cache_bytes, engine.workers = budget, workers
        got = list(engine.run(jobs))
        assert [r.job for r in got] == sorted(r.job for r in got)  # job by job, in order
        for j, want in enumerate(expected):
            mine = sorted((r for r in got if r.job == j), key=lambda r: r.index)
            assert [r.index for r in mine] == [r.index for r in want]
            for a, b in zip(mine, want, strict=True):
                assert (a.error is None) == (b.error is None)
                if a.error is None:
                    assert a.d_pos == pytest.approx(b.d_pos, abs=1e-5)
                    assert a.d_neg == pytest.approx(b.d_neg, abs=1e-5)
                    assert (a.mask != b.mask).mean() < 1e-3


def test_image_unreadable_by_pass_two_is_an_error_result(model_dir: Path, tmp_path: Path):
    paths = _noise_images(tmp_path / "g", 3, 0)
    engine = Segmenter(GRSer.from_pretrained(model_dir), "cpu", batch_size=1, cache_bytes=0)
    results = engine.run([Job(ImageGroup("g", paths), "the cat")])
    first = next(results)  # pass 2 has begun: the other images are decoded again one by one
    paths[2].write_bytes(b"truncated")
    rest = list(results)
    assert first.error is None and rest[0].error is None
    assert rest[1].index == 2 and "cannot read image" in rest[1].error


@torch.no_grad()
def test_consecutive_jobs_on_the_same_images_decode_them_once(model_dir: Path, tmp_path: Path):
    """gres eval asks each expression of a group in turn: the group is read from disk once."""
    model = GRSer.from_pretrained(model_dir)
    five = _noise_images(tmp_path / "five", 5, 0)
    texts = ["the cat", "a dog", "the cat"]
    jobs = [Job(ImageGroup("five", five), t) for t in texts]
    engine = Segmenter(model, "cpu", batch_size=2)
    expected = [
        sorted(engine.run_group(j.group, j.expression), key=lambda r: r.index) for j in jobs
    ]
    results = engine.run(jobs)
    got = [next(results)]  # the first job's pass 2 has begun: every image has been read
    for p in five:
        p.write_bytes(b"gone")  # the next jobs must not read them again
    got += list(results)
    assert [r.job for r in got] == [0] * 5 + [1] * 5 + [2] * 5
    assert all(r.error is None for r in got)
    for j, want in enumerate(expected):
        mine = sorted((r for r in got if r.job == j), key=lambda r: r.index)
        for a, b in zip(mine, want, strict=True):
            assert (a.present, a.index) == (b.present, b.index)
            assert a.d_pos == pytest.approx(b.d_pos, abs=1e-5)
            assert a.d_neg == pytest.approx(b.d_neg, abs=1e-5)
    # reading again from disk now fails: the replay above was real, not a lucky cache
    assert all(r.error for r in engine.run_group(jobs[0].group, "the cat"))


def test_overlays_tint_the_mask_and_write_the_verdict(
    model_dir: Path, photos: Path, tmp_path: Path
):
    from grd_tools.imageio import open_image

    for margin, present in (("-5", True), ("100", False)):
        out = tmp_path / f"out{margin}"
        args = ("--model", str(model_dir), "--margin", margin, "--overlay", "--out", str(out))
        proc = gres("segment", str(photos), "the cat", *args)
        assert proc.returncode == 0, proc.stderr
        for r in read_jsonl(proc.stdout):
            assert r["present"] is present
            photo = np.asarray(open_image(r["image"]), dtype=np.float32)
            overlay = np.asarray(Image.open(r["overlay"]).convert("RGB"), dtype=np.float32)
            assert overlay.shape == photo.shape  # original size, EXIF and mode handled
            band = np.zeros(photo.shape[:2], bool)
            band[:15] = True  # the verdict is written on a black band at the top
            written = overlay[:15, :100]  # white letters on black
            assert (written < 40).all(-1).mean() > 0.5 and (written > 200).all(-1).any()
            mask = np.zeros(photo.shape[:2], bool)
            if present:
                mask = np.asarray(Image.open(r["mask"])) > 0
                tinted = 0.5 * photo + 0.5 * np.array([255, 40, 40], np.float32)
                inside = mask & ~band
                assert np.abs(overlay[inside] - tinted[inside]).mean() < 12  # JPEG error
            outside = ~mask & ~band
            assert np.abs(overlay[outside] - photo[outside]).mean() < 8


def test_mask_stats_and_png_on_hand_made_masks(tmp_path: Path):
    from grd_tools.imageio import mask_png, read_mask
    from gres_cli.inference.writers import mask_stats

    mask = np.zeros((6, 9), bool)
    assert mask_stats(mask) == (0, None)
    mask[4, 7] = True
    assert mask_stats(mask) == (1, [7, 4, 1, 1])
    mask[1:3, 2] = True  # an L with the single pixel: box from (2, 1) to (7, 4)
    mask[2, 2:5] = True
    assert mask_stats(mask) == (5, [2, 1, 6, 4])
    for given in (mask, mask.astype(np.uint8), mask.astype(np.uint8) * 255, mask.T.copy().T):
        (tmp_path / "m.png").write_bytes(mask_png(given))
        back = read_mask(tmp_path / "m.png")
        assert back.dtype == np.uint8 and np.array_equal(back, np.where(mask, 255, 0))


def test_writer_threads_keep_the_submission_order(tmp_path: Path):
    from gres_cli.inference.writers import RECORDS, OutputWriter

    writer = OutputWriter(tmp_path / "out", "png", overlay=True, threads=2)
    big = Image.new("RGB", (3000, 2000), (10, 200, 10))  # slow to write: submitted first
    sizes = [(3000, 2000)] + [(20 + i, 10) for i in range(7)]
    written = []
    for i, (w, h) in enumerate(sizes):
        record = {"group": "g", "expression": "x", "present": i % 2 == 0, "score": 0.5, "i": i}
        mask = np.zeros((h, w), bool)
        mask[: h // 2] = True
        photo = big if i == 0 else Image.new("RGB", (w, h))
        written += writer.submit(record, f"{i}", mask, photo)
    written += writer.drain()
    writer.close()
    assert [r["i"] for r in written] == list(range(8))
    on_disk = [json.loads(line) for line in (tmp_path / "out" / RECORDS).read_text().splitlines()]
    assert on_disk == written
    for r, (w, h) in zip(written, sizes, strict=True):
        assert Image.open(r["overlay"]).size == (w, h)
        assert (r.get("mask") is not None) == r["present"]
        if r["present"]:
            assert np.asarray(Image.open(r["mask"])).shape == (h, w)


def test_an_output_that_cannot_be_written_stops_with_one_line_and_resumes(
    model_dir: Path, tmp_path: Path
):
    _noise_images(tmp_path / "g", 3, 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "g").write_text("a file where the group's folder goes")
    args = ("segment", str(tmp_path / "g"), "x", "--model", str(model_dir), "--out", str(out))
    proc = gres(*args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("gres: error: cannot write outputs")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "run the same command again" in proc.stderr
    (out / "g").unlink()
    again = gres(*args)
    assert again.returncode == 0, again.stderr
    assert sorted(Path(r["mask"]).name for r in read_jsonl(again.stdout)) == [
        "00.png",
        "01.png",
        "02.png",
    ]
