"""`gres train --resume` continues the run it finds, not whatever config is passed now
(issue 11): the saved recipe is kept, a different one refused, and the fp16 GradScaler state
travels with the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gres_cli.cli import app
from gres_cli.errors import GresError
from gres_cli.training.config import TrainConfig
from gres_cli.training.loop import STATE_FILE, train

RECIPE = {
    "model": {"preset": "grser-tiny", "image_size": 64, "swin_window_size": 4, "decoder_dim": 16},
    "steps": 4,
    "groups_per_step": 2,
    "images_per_group": 3,
    "warmup_steps": 1,
    "val_split": None,
    "checkpoint_every": 2,
    "log_every": 1,
    "dice_negatives": True,
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grd_tools.synth import generate

    return generate(tmp_path_factory.mktemp("d") / "s", groups=6, images_per_group=4, size=64)


def test_resume_with_a_different_config_is_refused_naming_the_key(synth: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(synth, run, TrainConfig.from_dict(RECIPE), max_steps=2)
    saved = (run / "train_config.json").read_text()
    other = TrainConfig.from_dict({**RECIPE, "steps": 10})
    with pytest.raises(GresError, match="steps"):
        train(synth, run, other, resume=True)
    assert (run / "train_config.json").read_text() == saved


def test_cli_resume_without_config_continues_the_saved_recipe(synth: Path, tmp_path: Path):
    """Was: following the Ctrl-C hint (`--resume`, no --config) trained on with the tiny-synth
    preset and overwrote the run's train_config.json."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(
        app, ["train", str(synth), "--out", str(run), "--config", str(recipe), "--max-steps", "2"]
    )
    assert first.exit_code == 0, first.output
    saved = (run / "train_config.json").read_text()
    again = runner.invoke(app, ["train", str(synth), "--out", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    assert (run / "train_config.json").read_text() == saved
    assert torch.load(run / "checkpoint" / STATE_FILE, weights_only=True)["step"] == 4
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    refused = runner.invoke(
        app, ["train", str(synth), "--out", str(run), "--resume", "--preset", "tiny-synth"]
    )
    assert refused.exit_code == 2 and "--resume" in refused.stderr, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1


def test_grad_scaler_state_is_saved_and_restored(tmp_path: Path):
    """fp16 training's loss scale is part of the exact state of a run."""
    from gres_cli.training import loop

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once used
    scaler.update(new_scale=37.0)
    state = loop.trainer_state(opt, sched, scaler, step=5)
    torch.save(state, tmp_path / STATE_FILE)
    back = torch.load(tmp_path / STATE_FILE, weights_only=True)
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert loop.restore_trainer_state(back, opt, sched, fresh) == 5
    assert fresh.get_scale() == 37.0
