"""One two-pass implementation: `GRSer.predict` and the engine's GRSer adapter run the same
pass functions of the model (`first_pass`, `top_experts`, `second_pass`), so the two never
drift apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_grser
from PIL import Image

from gres_cli.inference.engine import Segmenter
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.grser import GRSer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> GRSer:
    return GRSer.from_pretrained(build_tiny_grser(tmp_path_factory.mktemp("model") / "tiny"))


def recorded(model: GRSer, calls: list[str]) -> None:
    """Record each call of the model's pass functions (on the instance only)."""
    for name in ("first_pass", "top_experts", "second_pass"):
        original = getattr(model, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(model, name, spy)


@torch.no_grad()
def test_predict_and_the_engine_call_the_same_passes(model: GRSer, tmp_path: Path):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(paths[-1])
    images = [Image.open(p).convert("RGB") for p in paths]
    calls: list[str] = []
    recorded(model, calls)
    preds = model.predict(images, "the cat", batch_size=2)
    assert calls == ["first_pass"] * 3 + ["top_experts"] + ["second_pass"] * 3
    calls.clear()
    engine = Segmenter(model, "cpu", batch_size=2, all_masks=True)
    results = sorted(engine.run_group(ImageGroup("g", paths), "the cat"), key=lambda r: r.index)
    assert calls == ["first_pass"] * 3 + ["top_experts"] + ["second_pass"] * 3
    for pred, res in zip(preds, results, strict=True):
        assert pred.d_pos == pytest.approx(res.d_pos, abs=1e-5)
        assert pred.d_neg == pytest.approx(res.d_neg, abs=1e-5)
        assert pred.present == res.present
