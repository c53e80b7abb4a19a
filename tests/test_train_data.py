"""The streaming training data: what it reads, in which order, on which rank, at which size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import torchrun

from grd_tools.format import load
from grd_tools.imageio import open_image
from gres_cli.model.preprocess import image_to_pixels
from gres_cli.training.config import TrainConfig
from gres_cli.training.data import (
    DrawSampler,
    GroupSamples,
    Sampling,
    SplitIndex,
    train_loader,
)

SAMPLING = Sampling(min_images=2, max_images=5, min_positives=1, min_negatives=1, flip=True)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grd_tools.synth import generate

    return generate(tmp_path_factory.mktemp("d") / "s", groups=8, images_per_group=5, size=64)


def _batches(samples: GroupSamples, workers: int, count: int, **kw) -> list:
    loader = iter(train_loader(samples, 3, workers, **kw))
    return [next(loader) for _ in range(count)]


def test_streamed_batches_equal_the_preloaded_ones(synth: Path):
    index = SplitIndex(load(synth), "train")
    lazy = GroupSamples(index, 64, SAMPLING, seed=7)
    memory = GroupSamples(index, 64, SAMPLING, seed=7, preload=True)
    assert lazy.images is None and len(memory.images) == sum(map(len, index.group_files))
    count = 2 * len(index) // 3 + 1  # beyond one epoch
    streamed, preloaded = _batches(lazy, 2, count), _batches(memory, 0, count)
    for a, b in zip(streamed, preloaded, strict=True):
        assert a.texts == b.texts and a.items == b.items
        for name in ("pixel_values", "masks", "present", "image_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    sizes = {int(n) for batch in streamed for n in batch.image_mask.sum(1)}
    assert sizes == {2, 3, 4, 5}


def test_a_sample_holds_the_files_it_names(synth: Path):
    index = SplitIndex(load(synth), "train")
    samples = GroupSamples(index, 64, SAMPLING, seed=7)
    flips = 0
    for key in range(2 * len(index)):
        x = samples[key]
        item = index.items[x["item"]]
        assert x["item"] == key % len(index) and x["text"] == item.text
        files = index.group_files[item.group]
        present = [item.targets[k] is not None for k in x["images"]]
        assert x["present"].tolist() == present
        if any(t is not None for t in item.targets) and any(t is None for t in item.targets):
            assert any(present) and not all(present)  # min_positives / min_negatives
        for k, pixels, mask in zip(x["images"], x["pixels"], x["masks"], strict=True):
            want = image_to_pixels(open_image(files[k]), 64)
            flipped = not torch.equal(pixels, want)
            flips += flipped
            assert torch.equal(pixels, want.flip(-1) if flipped else want)
            assert bool(mask.any()) == (item.targets[k] is not None)
    assert flips > 0


def test_draw_order_is_a_seeded_permutation_per_epoch():
    first = list(_take(DrawSampler(10, seed=3), 20))
    assert sorted(first[:10]) == list(range(10))  # epoch 0: every expression once
    assert sorted(k - 10 for k in first[10:]) == list(range(10))  # epoch 1, keys 10..19
    assert first == list(_take(DrawSampler(10, seed=3), 20))
    assert first != list(_take(DrawSampler(10, seed=4), 20))
    assert list(_take(DrawSampler(10, seed=3, start=7), 13)) == first[7:]  # resume skips


def _take(sampler: DrawSampler, n: int):
    for _, key in zip(range(n), sampler, strict=False):
        yield key


def test_ranks_draw_disjoint_shares():
    shares = [set(_take(DrawSampler(11, world=2, rank=r, seed=0), 5)) for r in (0, 1)]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 10  # tail of 1 dropped


SHARE_SCRIPT = """
import json, sys
from grd_tools.format import load
from gres_cli.training.data import GroupSamples, Sampling, SplitIndex, train_loader
from gres_cli.training.loop import distributed_setup

world, rank, _ = distributed_setup("cpu")
sampling = Sampling(2, 5, 1, 1, True)
samples = GroupSamples(SplitIndex(load(sys.argv[1]), "train"), 64, sampling, 0)
loader = iter(train_loader(samples, 2, 1, world, rank))
read = [i for _ in range(len(samples) // (2 * world)) for i in next(loader).items]
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
    json.dump(read, f)
"""


def test_two_processes_read_disjoint_shares(synth: Path, tmp_path: Path):
    script = tmp_path / "share.py"
    script.write_text(SHARE_SCRIPT)
    proc = torchrun(str(script), str(synth), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    reads = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    n = len(SplitIndex(load(synth), "train"))
    assert len(reads[0]) == len(reads[1]) == n // 4 * 2
    assert not set(reads[0]) & set(reads[1])  # each expression read by one rank only
    assert len(set(reads[0])) == len(reads[0])


def test_variable_group_sizes_reach_the_model(synth: Path, tmp_path: Path, monkeypatch):
    from gres_cli.model.grser import GRSer
    from gres_cli.training.loop import train

    seen: list[int] = []
    forward = GRSer.forward

    def recording(self, pixel_values, texts, image_mask=None):
        seen.extend(image_mask.sum(1).tolist())
        return forward(self, pixel_values, texts, image_mask)

    monkeypatch.setattr(GRSer, "forward", recording)
    cfg = TrainConfig.from_dict(
        {
            "model": {"preset": "grser-tiny", "image_size": 64, "swin_window_size": 4},
            "steps": 3,
            "groups_per_step": 4,
            "images_per_group": [2, 5],
            "val_split": None,
            "workers": 0,
        }
    )
    train(synth, tmp_path / "run", cfg)
    assert len(seen) == 12 and min(seen) < 4 < max(seen)  # K = 4: below and above K
    assert 4 in seen and set(seen) <= {2, 3, 4, 5}


def test_images_per_group_range_is_checked():
    from gres_cli.errors import GresError

    assert TrainConfig.preset("tiny-synth").sampling().max_images == 8
    with pytest.raises(GresError, match="images_per_group"):
        TrainConfig.from_dict({"images_per_group": [5, 2]})


def test_margin_candidates_span_the_scores():
    from gres_cli.training.loop import margin_candidates

    scores = np.random.default_rng(0).uniform(-1.8, 1.6, 500)
    margins = margin_candidates(scores)
    assert margins[0] < scores.min() and margins[-1] >= scores.max()
    assert 0.0 in margins and len(margins) == 43  # 40 midpoints, 2 edges, 0


def _tracked_objects(root: object) -> int:
    """Objects the garbage collector tracks, reachable from `root` (classes and what they
    reach left out): the ones a forked worker copies page by page as it touches them."""
    import gc

    seen, todo = set(), [root]
    while todo:
        x = todo.pop()
        if id(x) in seen or not gc.is_tracked(x) or isinstance(x, type):
            continue
        seen.add(id(x))
        todo.extend(gc.get_referents(x))
    return len(seen)


def test_the_index_holds_no_object_per_file(synth: Path):
    ds = load(synth)
    train, everything = SplitIndex(ds, "train"), SplitIndex(ds, None)
    assert len(everything) > len(train) and len(everything.group_files) == len(ds.groups)
    assert _tracked_objects(train) == _tracked_objects(everything)  # flat arrays, whatever the size
    g = ds.groups[-1]
    assert everything.group_files[-1 + len(ds.groups)] == tuple(synth / i.file for i in g.images)
    e = g.expressions[-1]
    last = everything.items[len(everything) - 1]
    assert last.text == e.text and last.group == len(ds.groups) - 1
    assert last.targets == tuple(
        None if e.targets.get(i.id) is None else synth / e.targets[i.id] for i in g.images
    )


def test_string_table_round_trips_any_path():
    from gres_cli.training.data import StringTable

    strings = ["a/b.png", "", "déjà vu/ü.jpg", "bad\udcffbyte", "z"]
    table = StringTable(strings)
    assert [table[i] for i in range(len(table))] == strings
