"""The synthetic generator: determinism, GRD completeness, exact masks, hard negatives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from grd_tools import GRDError, load
from grd_tools.imageio import read_mask
from grd_tools.synth import _CELL_SIDES, COLOURS, SHAPES, generate
from grd_tools.validate import validate


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("s") / "synth", groups=6, images_per_group=6, size=64)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, synth: Path):
    again = generate(tmp_path / "again", groups=6, images_per_group=6, size=64)
    other = generate(tmp_path / "other", groups=6, images_per_group=6, size=64, seed=1)
    assert _digest(again) == _digest(synth)
    assert _digest(other) != _digest(synth)


def test_output_is_a_valid_complete_grd_dataset(synth: Path):
    report = validate(synth)
    assert [i.code for i in report.issues if i.severity == "error"] == []
    ds = load(synth)
    for g in ds.groups:
        ids = {i.id for i in g.images}
        for e in g.expressions:
            assert set(e.targets) == ids
    assert {g.split for g in ds.groups} <= {"train", "val", "test"}


def test_masks_cover_exactly_the_pixels_of_the_named_colour(synth: Path):
    """Read from the image itself, not from the generator: under a present mask every pixel is
    one flat colour nearest to the colour the expression names, and no pixel of the ring just
    outside the mask has that colour (the mask is neither short of the object nor beyond it)."""
    from grd_tools.imageio import open_image

    palette = {name: np.array(rgb, float) for name, rgb in COLOURS.items()}
    checked = 0
    for pair in load(synth).pairs():
        if pair.mask is None:
            continue
        pixels = np.asarray(open_image(synth / pair.image.file), dtype=float)
        mask = read_mask(synth / pair.mask) > 0
        named = next(w for w in pair.expression.text.split() if w in COLOURS)
        inside = pixels[mask]
        assert np.ptp(inside, axis=0).max() == 0  # one flat colour
        nearest = min(palette, key=lambda c: np.abs(palette[c] - inside[0]).sum())
        assert nearest == named
        ring = np.zeros_like(mask)
        for axis in (0, 1):
            for step in (1, -1):
                ring |= np.roll(mask, step, axis=axis)
        ring &= ~mask
        assert not (np.abs(pixels[ring] - inside[0]).max(axis=1) == 0).any()
        checked += 1
    assert checked > 10


def test_language_needs_colour_shape_and_size_or_position(synth: Path):
    for pair in load(synth).pairs():
        words = pair.expression.text.split()
        assert sum(w in COLOURS for w in words) == 1
        assert sum(w in SHAPES for w in words) == 1
        assert ("small" in words) + ("large" in words) + ("on" in words) == 1


def test_negatives_hold_hard_distractors(synth: Path):
    hard = negatives = 0
    for pair in load(synth).pairs():
        if pair.mask is not None:
            continue
        negatives += 1
        ref = pair.expression.meta["referent"]
        for o in pair.image.meta["objects"]:
            third = (
                o["size"] == ref["size"]
                if ref["size"] is not None
                else ref["position"] in _CELL_SIDES[tuple(o["cell"])]
            )
            shared = (o["colour"] == ref["colour"]) + (o["shape"] == ref["shape"]) + third
            if shared == 2:
                hard += 1
                break
    assert negatives > 0 and hard / negatives > 0.5


def test_existing_destination_and_bad_arguments_are_refused(synth: Path, tmp_path: Path):
    with pytest.raises(GRDError, match="already exists"):
        generate(synth)
    with pytest.raises(GRDError, match="too small"):
        generate(tmp_path / "x", size=8)
    with pytest.raises(GRDError, match="positive-rate"):
        generate(tmp_path / "y", positive_rate=2.0)
