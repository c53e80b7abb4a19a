"""`gres grd split`: group-aware, deterministic, ratios kept, negatives balanced, source intact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_grd
from PIL import Image
from typer.testing import CliRunner

from grd_tools import Expression, GRDDataset, Group, ImageRecord, load, save
from grd_tools.errors import GRDError
from grd_tools.split import assign_splits, parse_ratios, split_dataset
from grd_tools.validate import validate
from gres_cli.cli import app

runner = CliRunner()


def build_varied(root: Path, n_groups: int = 60, seed: int = 1) -> Path:
    """Groups of 2-6 images and 1-3 expressions whose negative share ranges from ~0 to ~1."""
    rng = np.random.default_rng(seed)
    groups = []
    for gi in range(n_groups):
        gid = f"g{gi:03d}"
        (root / "images" / gid).mkdir(parents=True)
        (root / "masks" / gid).mkdir(parents=True)
        images = []
        for ii in range(int(rng.integers(2, 7))):
            rel = f"images/{gid}/{ii}.png"
            Image.new("RGB", (8, 6), (gi, ii, 0)).save(root / rel)
            images.append(ImageRecord(str(ii), rel, 8, 6))
        mask = f"masks/{gid}/m.png"
        Image.fromarray(np.full((6, 8), 255, np.uint8)).save(root / mask)
        p_present = rng.uniform(0.05, 0.95)
        exprs = [
            Expression(
                f"e{ei}",
                f"thing {ei} of {gid}",
                {i.id: (mask if rng.random() < p_present else None) for i in images},
            )
            for ei in range(int(rng.integers(1, 4)))
        ]
        groups.append(Group(gid, images, exprs))
    save(GRDDataset(groups, name="varied"), root)
    return root


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _shares(dataset: GRDDataset) -> tuple[dict[str, float], dict[str, float], float]:
    """Plain reference: each split's share of pairs, its negative share, the overall one."""
    pairs: dict[str, int] = {}
    negatives: dict[str, int] = {}
    for g in dataset.groups:
        for e in g.expressions:
            for img in g.images:
                pairs[g.split] = pairs.get(g.split, 0) + 1
                negatives[g.split] = negatives.get(g.split, 0) + (e.targets[img.id] is None)
    total = sum(pairs.values())
    share = {s: pairs[s] / total for s in pairs}
    neg = {s: negatives[s] / pairs[s] for s in pairs}
    return share, neg, sum(negatives.values()) / total


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_varied(tmp_path_factory.mktemp("varied") / "ds")


def test_split_honours_ratios_and_balances_negatives(varied: Path, tmp_path: Path):
    split_dataset(varied, tmp_path / "out", parse_ratios("0.7,0.15,0.15"), seed=3)
    share, neg, overall = _shares(load(tmp_path / "out"))
    assert share == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}, abs=0.03)
    for split, negative_share in neg.items():
        assert negative_share == pytest.approx(overall, abs=0.02), split


def test_balance_beats_a_plain_shuffle(varied: Path):
    """The greedy split keeps negative shares closer to the overall one than a random cut."""
    dataset = load(varied)
    ratios = parse_ratios("0.6,0.2,0.2")
    worst_balanced, worst_random = [], []
    for seed in range(5):
        for g, s in zip(dataset.groups, assign_splits(dataset, ratios, seed), strict=True):
            g.split = s
        _, neg, overall = _shares(dataset)
        worst_balanced.append(max(abs(v - overall) for v in neg.values()))
        order = np.random.default_rng(seed).permutation(len(dataset.groups))
        cut = (int(0.6 * len(order)), int(0.8 * len(order)))
        for rank, gi in enumerate(order):
            dataset.groups[gi].split = (
                "train" if rank < cut[0] else "val" if rank < cut[1] else "test"
            )
        _, neg, overall = _shares(dataset)
        worst_random.append(max(abs(v - overall) for v in neg.values()))
    assert np.mean(worst_balanced) < np.mean(worst_random)


def test_same_seed_same_split_other_seed_other_split(varied: Path, tmp_path: Path):
    ratios = parse_ratios("0.8,0.1,0.1")
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        split_dataset(varied, tmp_path / name, ratios, seed=seed)
    text = {n: (tmp_path / n / "grd.json").read_text() for n in "abc"}
    assert text["a"] == text["b"]
    assert text["a"] != text["c"]


def test_groups_sharing_an_image_or_an_id_stay_together(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=12)
    data = json.loads((root / "grd.json").read_text())
    groups = data["groups"]
    groups[3]["images"][0]["file"] = groups[2]["images"][0]["file"]  # shared image
    groups[5]["id"] = groups[4]["id"]  # same group id twice
    (root / "grd.json").write_text(json.dumps(data))
    dataset = load(root)
    for seed in range(10):
        splits = assign_splits(dataset, parse_ratios("0.4,0.3,0.3"), seed)
        assert splits[2] == splits[3] and splits[4] == splits[5]
        assert set(splits) == {"train", "val", "test"}


def test_groups_linked_through_a_third_are_one_unit(tmp_path: Path):
    """C shares one file with A and another with B (A and B share nothing): A, B and C are
    one unit, so all three land in one split for every seed. C comes last, so only a
    transitive merge joins A and B."""
    root = build_grd(tmp_path / "ds", n_groups=12)
    data = json.loads((root / "grd.json").read_text())
    a, b, c = data["groups"][0], data["groups"][1], data["groups"][11]
    c["images"][0]["file"] = a["images"][0]["file"]
    c["images"][1]["file"] = b["images"][0]["file"]
    (root / "grd.json").write_text(json.dumps(data))
    dataset = load(root)
    for seed in range(20):
        splits = assign_splits(dataset, parse_ratios("0.4,0.3,0.3"), seed)
        assert splits[0] == splits[1] == splits[11], seed
        assert set(splits) == {"train", "val", "test"}


def test_source_untouched_and_files_hard_linked_or_copied(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=6)
    before = _tree_hash(root)
    split_dataset(root, tmp_path / "linked", parse_ratios("0.5,0.5"))
    split_dataset(root, tmp_path / "copied", parse_ratios("0.5,0.5"), copy_files=True)
    assert _tree_hash(root) == before
    for rel in ("images/group-00/0000.jpg", "masks/group-00/e1/0000.png"):
        assert (tmp_path / "linked" / rel).samefile(root / rel)
        assert not (tmp_path / "copied" / rel).samefile(root / rel)
        assert (tmp_path / "copied" / rel).read_bytes() == (root / rel).read_bytes()
    for out in ("linked", "copied"):
        assert validate(tmp_path / out).issues == []
        assert {g.split for g in load(tmp_path / out).groups} == {"train", "test"}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("0.8,0.1", "must sum to 1"),
        ("0.5,0.5,0.5", "must sum to 1"),
        ("a,b,c", "not a list of numbers"),
        ("1", "give 3 numbers"),
        ("0.2,0.2,0.2,0.4", "give 3 numbers"),
        ("0.5,-0.5,1", "between 0 and 1"),
    ],
)
def test_bad_ratios_are_refused(text: str, fault: str):
    with pytest.raises(GRDError, match=fault):
        parse_ratios(text)


def test_too_few_groups_for_the_splits(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=2)
    with pytest.raises(GRDError, match="cannot fill 3 splits"):
        assign_splits(load(root), parse_ratios("0.8,0.1,0.1"))


def test_cli_writes_a_new_dataset_and_refuses_unsafe_outputs(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=10)
    before = _tree_hash(root)
    ok = runner.invoke(app, ["grd", "split", str(root), "--out", str(tmp_path / "o"), "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.stdout)
    assert sum(row["groups"] for row in summary["splits"].values()) == 10
    again = runner.invoke(app, ["grd", "split", str(root), "--out", str(tmp_path / "o")])
    assert again.exit_code == 2 and "already exists" in again.output
    inside = runner.invoke(app, ["grd", "split", str(root), "--out", str(root / "x")])
    assert inside.exit_code == 2 and "never modified" in inside.output
    bad = runner.invoke(app, ["grd", "split", str(root), "--out", "o2", "--ratios", "1,1"])
    assert bad.exit_code == 2 and "--ratios" in bad.output
    assert _tree_hash(root) == before
    human = runner.invoke(
        app, ["grd", "split", str(root), "--out", str(tmp_path / "o"), "--overwrite"]
    )
    assert human.exit_code == 0 and "train" in human.output
    (root / "masks/group-03/e1/0000.png").unlink()
    missing = runner.invoke(app, ["grd", "split", str(root), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "0000.png" in missing.output
    assert not (tmp_path / "m").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
