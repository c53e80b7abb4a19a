"""Training: loss goes down, resume is bit-for-bit, bad input is refused cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchrun
from safetensors.torch import load_file

from gres_cli.errors import GresError
from gres_cli.training.config import TrainConfig
from gres_cli.training.loop import build_model, train

MODEL = {"preset": "grser-tiny", "image_size": 64, "swin_window_size": 4, "decoder_dim": 16}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grd_tools.synth import generate

    return generate(tmp_path_factory.mktemp("d") / "s", groups=12, images_per_group=5, size=64)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model=MODEL,
        steps=6,
        groups_per_step=2,
        images_per_group=4,
        warmup_steps=2,
        val_every=3,
        checkpoint_every=3,
        log_every=1,
        lr=2e-3,
    )
    return TrainConfig.from_dict({**base, **kw})


def test_loss_goes_down_on_a_fixed_batch(synth: Path, tmp_path: Path, monkeypatch):
    # overfitting one batch must work: the stream's first batch of draws, every step
    cfg = _cfg(steps=25, val_split=None, checkpoint_every=100, warmup_steps=1)
    import itertools

    from gres_cli.training.data import DrawSampler

    stream = DrawSampler.__iter__

    def first_batch_forever(self):
        return itertools.cycle(list(itertools.islice(stream(self), cfg.groups_per_step)))

    monkeypatch.setattr(DrawSampler, "__iter__", first_batch_forever)
    train(synth, tmp_path / "run", cfg)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["total"] for r in log if "total" in r]
    assert losses[-1] < 0.85 * losses[0]  # measured: about 0.75 after 25 steps


def test_resume_continues_bit_for_bit(synth: Path, tmp_path: Path):
    cfg = _cfg()
    train(synth, tmp_path / "straight", cfg)
    train(synth, tmp_path / "split", cfg, max_steps=3)
    train(synth, tmp_path / "split", cfg, resume=True)
    a = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "split" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = tmp_path / "split" / "best"
    assert (best / "model.safetensors").is_file() and (best / "README.md").is_file()
    config = json.loads((best / "config.json").read_text())
    curve = config["extra"]["margin_curve"]  # the calibration is saved with the model
    assert len(curve["margin"]) == len(curve["acc"]) > 2 and config["margin"] in curve["margin"]
    assert max(curve["acc"]) == config["extra"]["metrics"]["val accuracy"]


def test_tensorboard_events_mirror_the_jsonl_log(synth: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(synth, tmp_path / "tb", _cfg(steps=3, val_every=3, checkpoint_every=3))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/total", "train/mask", "train/triplet", "train/lr", "val/acc"} <= tags
    log = [json.loads(x) for x in (tmp_path / "tb" / "log.jsonl").read_text().splitlines()]
    totals = [r["total"] for r in log if "total" in r]
    assert [e.value for e in events.Scalars("train/total")] == pytest.approx(totals)
    off = tmp_path / "off"
    train(synth, off, _cfg(steps=1, val_split=None, checkpoint_every=1, tensorboard=False))
    assert not (off / "tensorboard").exists() and (off / "log.jsonl").is_file()


def test_existing_run_needs_resume(synth: Path, tmp_path: Path):
    cfg = _cfg(steps=1, val_split=None, checkpoint_every=1)
    train(synth, tmp_path / "r", cfg)
    with pytest.raises(GresError, match="--resume"):
        train(synth, tmp_path / "r", cfg)


def test_unknown_config_key_is_named(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("preset: tiny-synth\nlearning_rate: 0.1\n")
    with pytest.raises(GresError, match="unknown key\\(s\\) learning_rate"):
        TrainConfig.load(tmp_path / "c.yaml")


def test_cli_refuses_an_invalid_dataset(synth: Path, tmp_path: Path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(synth, broken)
    next((broken / "images").rglob("*.png")).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "gres_cli", "train", str(broken), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "fails `gres grd validate`" in proc.stderr
    assert not (tmp_path / "o").exists()


DDP_SCRIPT = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
from gres_cli.training import loop
from gres_cli.training.config import TrainConfig

built = []
build = loop.build_model
loop.build_model = lambda cfg: built.append(build(cfg)) or built[-1]  # keep this rank's model
data, out, config = sys.argv[1:]
loop.train(data, out, TrainConfig.load(config))
state = {k: v.contiguous() for k, v in built[0].state_dict().items()}
save_file(state, str(Path(out) / f"rank{os.environ['RANK']}.safetensors"))
"""


def test_two_process_ddp_on_gloo(synth: Path, tmp_path: Path):
    """Two ranks draw different groups, average their gradients, and so end with identical
    weights, which differ from the start; rank 0 alone writes the log and the checkpoint."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "preset: tiny-synth\nmodel: {preset: grser-tiny, image_size: 64, swin_window_size: 4}\n"
        "steps: 3\ngroups_per_step: 2\nimages_per_group: 3\nval_split: null\n"
        "checkpoint_every: 3\nlog_every: 1\nwarmup_steps: 1\n"
    )
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    proc = torchrun(str(script), str(synth), str(run), str(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]  # rank 0 alone writes
    rank0, rank1 = load_file(run / "rank0.safetensors"), load_file(run / "rank1.safetensors")
    torch.manual_seed(0)  # the loop's seed: the weights both ranks started from
    model = build_model(TrainConfig.load(config))
    start = model.state_dict()
    weights = [name for name, _ in model.named_parameters()]
    assert rank0.keys() == rank1.keys() and set(weights) <= rank0.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in weights)
    assert sum(not torch.equal(start[k], rank0[k]) for k in weights) > len(weights) // 2
    # BatchNorm running statistics are buffers: each rank keeps its own batches' (DDP
    # broadcasts rank 0's at every forward), and the checkpoint holds rank 0's
    saved = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
