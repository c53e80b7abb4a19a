"""Open-vocabulary backends (CLIPSeg) behind the engine, and the group rule by its formula."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_clipseg, gres, populate_hub_cache, read_jsonl
from PIL import Image

from gres_cli.backends import load_model
from gres_cli.backends.openvocab import (
    expert_weights,
    group_distances,
    group_prototype,
    reweighted_score,
)
from gres_cli.backends.protocol import presence
from gres_cli.errors import ModelLoadError
from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup

EXPRESSION = "the red umbrella"


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "tiny-clipseg")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six PNGs of different sizes (PNG: decoded exactly as the library's user would)."""
    folder = tmp_path_factory.mktemp("photos") / "day1"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(70, 50), (64, 64), (90, 40), (33, 77), (64, 48), (100, 80)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    return folder


# ---- the group rule, by its formula, on hand-made embeddings ---------------------------------


def _folder(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Five images share the referent (direction a), two score highest alone but show other
    things (directions c, d), three score low (background-like)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]  # orthonormal columns
    a, c, d, h = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3]
    noise = 0.15 * torch.randn(10, 16, generator=g)
    emb = torch.stack([a] * 5 + [c, d] + [h] * 3) + noise
    emb = F.normalize(emb, dim=-1)
    scores = torch.tensor([0.80, 0.85, 0.88, 0.90, 0.75, 0.97, 0.95, 0.20, 0.30, 0.10])
    kinds = ["referent"] * 5 + ["outlier"] * 2 + ["absent"] * 3
    return scores, emb, kinds


def test_group_rule_calls_the_outliers_absent_at_the_default_margin():
    scores, emb, kinds = _folder()
    group = group_prototype(scores, emb, k=4)  # experts: both outliers and two referents
    d_pos, d_neg = group_distances(scores, emb, group, weight=1.0)
    decided = presence(d_pos, d_neg, 0.0).tolist()
    assert decided == [k == "referent" for k in kinds]
    alone = presence(*group_distances(scores, emb, None, 0.0), 0.0).tolist()
    assert alone == [k != "absent" for k in kinds]  # the backend alone takes the outliers
    # the prototype is the referent's, though half of the experts were outliers
    cosines = [float(group.prototype @ emb[i]) for i in (2, 3, 5, 6)]
    assert min(cosines[:2]) > 0.9 and max(cosines[2:]) < 0.2, cosines


def test_group_rule_by_formula():
    scores, emb, _ = _folder(1)
    group = group_prototype(scores, emb, k=4)
    order = [5, 6, 3, 2]  # top-4 by score
    e = emb[order]
    cos = e @ e.T
    w = ((cos.sum(1) - 1) / 3).clamp(min=0)  # rows are unit vectors: the diagonal is 1
    proto = F.normalize((w[:, None] * e).sum(0), dim=0)
    loo = F.normalize((w[:, None] * e).sum(0) - w[:, None] * e, dim=-1)
    rho = (w * (e - loo).norm(dim=-1)).sum() / w.sum()
    torch.testing.assert_close(group.prototype, proto)
    torch.testing.assert_close(group.radius, rho)
    d_pos, d_neg = group_distances(scores, emb, group, weight=0.5)
    torch.testing.assert_close(d_pos, 1 - scores + 0.5 * (emb - proto).norm(dim=-1))
    torch.testing.assert_close(d_neg, scores + 0.5 * rho)


def test_group_rule_is_monotone_in_the_margin():
    scores, emb, _ = _folder(2)
    d_pos, d_neg = group_distances(scores, emb, group_prototype(scores, emb, 4), 1.0)
    counts = [int(presence(d_pos, d_neg, m).sum()) for m in np.linspace(-3, 3, 61)]
    assert counts == sorted(counts, reverse=True) and counts[0] == 10 and counts[-1] == 0
    for low, high in zip(np.linspace(-3, 3, 61)[:-1], np.linspace(-3, 3, 61)[1:], strict=True):
        assert not (presence(d_pos, d_neg, high) & ~presence(d_pos, d_neg, low)).any()


def test_permuting_the_folder_permutes_the_answers():
    scores, emb, _ = _folder(3)
    d_pos, d_neg = group_distances(scores, emb, group_prototype(scores, emb, 4), 1.0)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    p_pos, p_neg = group_distances(
        scores[perm], emb[perm], group_prototype(scores[perm], emb[perm], 4), 1.0
    )
    torch.testing.assert_close(p_pos, d_pos[perm])
    torch.testing.assert_close(p_neg, d_neg[perm])


def test_one_expert_has_no_group_term():
    scores, emb, _ = _folder()
    group = group_prototype(scores[:1], emb[:1], k=4)
    assert not group.active
    torch.testing.assert_close(
        torch.stack(group_distances(scores, emb, group, 1.0)),
        torch.stack(group_distances(scores, emb, None, 0.0)),
    )


def test_an_exact_tie_is_absent():
    """d_pos + m == d_neg is absent (the rule is strict): a backend alone with b = 0.5 at
    m = 0, and b = 0.75 at m = 0.5 (exact in binary floating point), on both runtimes."""
    for b, m in ((0.5, 0.0), (0.75, 0.5)):
        d_pos, d_neg = group_distances(torch.tensor([b]), torch.zeros(1, 4), None, 0.0)
        assert float(d_pos[0]) + m == float(d_neg[0])  # the tie is exact
        assert presence(d_pos, d_neg, m).tolist() == [False]
        assert presence(d_pos.numpy(), d_neg.numpy(), m).tolist() == [False]
        nudged = presence(d_pos, d_neg, m - 1e-6).tolist()
        assert nudged == [True]  # any smaller margin says present


def test_experts_that_agree_with_no_other_weigh_one_each():
    """Every agreement a_k <= 0 (orthogonal experts: a_k = 0 exactly): w = 1 for all, so the
    prototype is their plain mean direction and rho is finite. By hand, for three orthonormal
    experts: P = (1, 1, 1) / sqrt 3, P_-k = the other two / sqrt 2, ||e_k - P_-k|| = sqrt 2."""
    emb = torch.eye(3, 8)  # exactly orthonormal: every cosine is 0
    scores = torch.tensor([0.9, 0.8, 0.7])
    torch.testing.assert_close(expert_weights(emb), torch.ones(3))
    group = group_prototype(scores, emb, k=3)
    assert group.active
    torch.testing.assert_close(group.prototype, torch.tensor([3**-0.5] * 3 + [0.0] * 5))
    torch.testing.assert_close(group.radius, torch.tensor(2**0.5))
    d_pos, d_neg = group_distances(scores, emb, group, 1.0)
    assert torch.isfinite(d_pos).all() and torch.isfinite(d_neg).all()
    # opposite experts (a_k = -1 < 0) weigh one each too
    torch.testing.assert_close(expert_weights(torch.stack([emb[0], -emb[0]])), torch.ones(2))


# ---- CLIPSeg through the engine and the CLI ---------------------------------------------------


def test_model_kind_comes_from_the_config_not_the_name(clipseg_dir: Path, tmp_path: Path):
    renamed = tmp_path / "grser-looking-name"
    renamed.symlink_to(clipseg_dir, target_is_directory=True)
    assert load_model(renamed).kind == "clipseg"
    other = tmp_path / "clipseg-lookalike"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="model_type 'bert' is not one gres runs"):
        load_model(other)


def test_masks_equal_the_library_processor_and_post_processing(
    clipseg_dir: Path, photos: Path, tmp_path: Path
):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    out = tmp_path / "out"
    proc = gres(
        "segment", str(photos), EXPRESSION, "--model", str(clipseg_dir), "--margin", "-5",
        "--out", str(out), "--jsonl", str(tmp_path / "r.jsonl"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recs = read_jsonl(tmp_path / "r.jsonl")
    assert len(recs) == 6 and all(r["present"] for r in recs)
    processor = CLIPSegProcessor.from_pretrained(clipseg_dir)
    model = CLIPSegForImageSegmentation.from_pretrained(clipseg_dir).eval()
    compared = 0
    for rec in recs:
        image = Image.open(rec["image"]).convert("RGB")
        inputs = processor(text=[EXPRESSION], images=[image], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits.reshape(1, 1, *inputs["pixel_values"].shape[-2:])
        prob = F.interpolate(
            torch.sigmoid(logits), size=image.size[::-1], mode="bilinear", align_corners=False
        )[0, 0]
        want = (prob > 0.5).numpy()
        assert rec["backend_score"] == pytest.approx(float(torch.sigmoid(logits).max()), abs=1e-5)
        assert (rec["width"], rec["height"]) == image.size
        if rec["mask"] is None:
            assert not want.any()
            continue
        got = np.asarray(Image.open(rec["mask"])) > 0
        assert got.shape == want.shape and np.array_equal(got, want)
        compared += 1
    assert compared >= 3  # not a test of empty masks


#: 30 words: past the tiny CLIPSeg's 77 text positions (its character-level tokenizer has no
#: model_max_length, so nothing else truncates it)
LONG_EXPRESSION = " ".join(["the big red umbrella near the old wooden door"] * 3)


def test_an_expression_past_the_text_models_positions_is_truncated_and_said_once(
    clipseg_dir: Path, photos: Path, tmp_path: Path
):
    """Was: a ValueError traceback (sequence length must be less than max_position_embeddings).
    Truncated at the text model's own max_position_embeddings: words past it change nothing."""
    runs = []
    for n, text in enumerate((LONG_EXPRESSION, LONG_EXPRESSION + " and a blue car")):
        args = ["segment", str(photos), text, "--model", str(clipseg_dir), "--format", "rle"]
        proc = gres(*args, "--out", str(tmp_path / f"o{n}"))
        assert proc.returncode == 0, proc.stderr
        said = [line for line in proc.stderr.splitlines() if "truncated" in line]
        assert len(said) == 1 and "77" in said[0], proc.stderr
        runs.append(
            {Path(r["image"]).name: (r["d_pos"], r["d_neg"]) for r in read_jsonl(proc.stdout)}
        )
    assert len(runs[0]) == 6 and runs[0] == runs[1]


def test_no_group_gives_the_backend_alone(clipseg_dir: Path, photos: Path, tmp_path: Path):
    model = load_model(clipseg_dir)
    engine = Segmenter(model, "cpu", batch_size=4, margin=0.0)
    group = ImageGroup("day1", sorted(photos.glob("*.png")))
    grouped = engine.run_group(group, EXPRESSION)
    alone = Segmenter(load_model(clipseg_dir, group=False), "cpu", batch_size=4, margin=0.0)
    solo = alone.run_group(group, EXPRESSION)
    assert [r.present for r in solo] == [r.backend_present for r in solo]
    assert [r.present for r in solo] == [r.backend_score > 0.5 for r in solo]
    # the group step keeps the backend's own score and call on every record
    assert [r.backend_present for r in grouped] == [r.present for r in solo]
    assert [r.backend_score for r in grouped] == pytest.approx([r.backend_score for r in solo])
    # d_pos / d_neg without the group are 1 - b and b
    for r in solo:
        assert (r.d_pos, r.d_neg) == pytest.approx((1 - r.backend_score, r.backend_score))


def test_engine_reuses_pass_one_or_runs_the_model_again_with_equal_results(
    clipseg_dir: Path, photos: Path
):
    model = load_model(clipseg_dir)
    group = ImageGroup("day1", sorted(photos.glob("*.png")))
    runs = []
    for budget in (1 << 30, 0):  # everything cached / nothing cached (pass 2 re-runs)
        engine = Segmenter(model, "cpu", batch_size=4, cache_bytes=budget, all_masks=True)
        runs.append(engine.run_group(group, EXPRESSION))
    for a, b in zip(*runs, strict=True):
        assert (a.present, a.backend_present) == (b.present, b.backend_present)
        assert a.d_pos == pytest.approx(b.d_pos, abs=1e-5)
        assert np.array_equal(a.mask, b.mask)


def test_one_pass_serves_every_group_weight(clipseg_dir: Path, photos: Path):
    """The score at another gamma, from a run at gamma = 1, equals a run at that gamma."""
    group = ImageGroup("day1", sorted(photos.glob("*.png")))
    runs = {}
    for weight in (1.0, 0.5, 3.0):
        model = load_model(clipseg_dir)
        model.group_weight = weight
        runs[weight] = Segmenter(model, "cpu", batch_size=4).run_group(group, EXPRESSION)
    for weight in (0.5, 3.0):
        for r1, rw in zip(runs[1.0], runs[weight], strict=True):
            got = reweighted_score(r1.d_pos, r1.d_neg, r1.alone, 1.0, weight)
            assert got == pytest.approx(rw.d_neg - rw.d_pos, abs=1e-5)
    assert any(
        (r1.d_neg - r1.d_pos) != pytest.approx(r3.d_neg - r3.d_pos, abs=1e-3)
        for r1, r3 in zip(runs[1.0], runs[3.0], strict=True)
    )  # the weight matters on this folder


def test_clipseg_through_an_offline_hub_cache(clipseg_dir: Path, photos: Path, tmp_path: Path):
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "gres-test/tiny-clipseg", clipseg_dir)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    one = sorted(photos.glob("*.png"))[0]
    proc = gres(
        "segment", str(one), EXPRESSION, "--model", "gres-test/tiny-clipseg", "--format",
        "none", "--out", str(tmp_path / "o"), "--jsonl", "-", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(rec) >= {"backend_score", "backend_present", "d_pos", "d_neg", "present"}
    proc = gres(
        "segment", str(one), EXPRESSION, "--model", "gres-test/other", "--out",
        str(tmp_path / "o2"), env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not in the local Hub cache" in proc.stderr and "local folder" in proc.stderr


def test_default_model_offline_says_both_ways_out(photos: Path, tmp_path: Path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"}
    proc = gres("segment", str(photos), EXPRESSION, "--out", str(tmp_path / "o"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "CIDAS/clipseg-rd64-refined" in line and "--model examples/demo-model" in line


def test_backend_run_keeps_segment_behaviours(clipseg_dir: Path, photos: Path, tmp_path: Path):
    """stdin paths, an unreadable image, JSONL fields and resume hold for a backend too."""
    broken = tmp_path / "day1" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    paths = [*sorted(photos.glob("*.png"))[:3], broken]
    out = tmp_path / "out"
    args = ["segment", "-", EXPRESSION, "--model", str(clipseg_dir), "--out", str(out)]
    first = gres(*args, "--jsonl", "-", stdin="\n".join(map(str, paths)))
    assert first.returncode == 1  # some images failed
    recs = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(recs) == 4 and sum(r["error"] is not None for r in recs) == 1
    good = [r for r in recs if r["error"] is None]
    assert all(isinstance(r["backend_score"], float) for r in good)
    again = gres(*args, "--jsonl", "-", stdin="\n".join(map(str, paths[:3])))
    assert again.returncode == 0
    assert [json.loads(line) for line in again.stdout.splitlines()] == good  # resumed, as is
    # shards: two processes take disjoint groups of one --recursive run
    tree = tmp_path / "tree"
    for name, chosen in (("a", paths[:2]), ("b", paths[2:3])):
        (tree / name).mkdir(parents=True)
        for p in chosen:
            (tree / name / p.name).write_bytes(p.read_bytes())
    seen = []
    for shard in ("0/2", "1/2"):
        proc = gres(
            "segment", str(tree), EXPRESSION, "--model", str(clipseg_dir), "--recursive",
            "--shard", shard, "--out", str(tmp_path / "sharded"), "--jsonl", "-",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        seen.append({json.loads(line)["group"] for line in proc.stdout.splitlines()})
    assert len(seen[0]) == len(seen[1]) == 1 and seen[0] | seen[1] == {"a", "b"}


def test_eval_scores_a_backend_with_and_without_the_group(clipseg_dir: Path, grd_dataset: Path):
    reports = {}
    for flag in ([], ["--no-group"]):
        proc = gres("eval", str(grd_dataset), "--model", str(clipseg_dir), "--split", "train",
                    "--margins=-0.5,0,0.5", *flag)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        reports[bool(flag)] = json.loads(proc.stdout)
    for report in reports.values():
        assert report["pairs"] == 6 and report["settings"]["model"] == str(clipseg_dir)
    assert reports[True]["settings"]["group"] is False
    assert reports[False]["settings"]["group"] is True


def test_calibrated_settings_folder_is_used_without_flags(
    clipseg_dir: Path, grd_dataset: Path, photos: Path, tmp_path: Path
):
    """eval --calibrate --save-calibrated writes a gres-backend folder; segment --model FOLDER
    then runs the backend at that margin; model init --backend writes the same kind."""
    saved = tmp_path / "calibrated"
    proc = gres(
        "eval", str(grd_dataset), "--model", str(clipseg_dir), "--split", "train",
        "--margins=-2.5,-0.25,0.25,2.5", "--group-weights", "0,0.5,2", "--calibrate", "acc",
        "--save-calibrated", str(saved),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    best, weight = report["calibrated"]["margin"], report["calibrated"]["group_weight"]
    sweep = report["group_weight_sweep"]
    assert set(sweep) == {"0.0", "0.5", "2.0"} and all(len(v) == 4 for v in sweep.values())
    assert report["calibrated"]["acc"] == max(r["acc"] for v in sweep.values() for r in v.values())
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "gres-backend" and config["backend"] == str(clipseg_dir)
    assert config["margin"] == best and config["extra"]["calibrated"]["metric"] == "acc"
    assert config["group_weight"] == weight
    one = sorted(photos.glob("*.png"))[0]
    proc = gres("segment", str(one), EXPRESSION, "--model", str(saved), "--format", "none",
                "--out", str(tmp_path / "o"), "--jsonl", "-")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["margin"] == best
    init = tmp_path / "init"
    proc = gres("model", "init", str(init), "--backend", str(clipseg_dir), "--margin", "0.3",
                "--experts", "6")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = gres("model", "info", str(init), "--json")
    info = json.loads(proc.stdout)
    assert info["config"]["margin"] == 0.3 and info["config"]["experts"] == 6
    assert info["config"]["model_type"] == "clipseg"
    proc = gres("model", "init", str(tmp_path / "x"), "--backend", str(grd_dataset))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
