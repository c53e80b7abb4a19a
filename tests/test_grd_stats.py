"""`gres grd stats`: counts and mask areas per split, checked against plain computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_grd
from PIL import Image
from typer.testing import CliRunner

from grd_tools.stats import load_stats
from gres_cli.cli import app

runner = CliRunner()


def _reference(root: Path) -> dict[str, dict]:
    """Plain recount from grd.json and the mask files, per split and for "all"."""
    data = json.loads((root / "grd.json").read_text())
    out: dict[str, dict] = {}
    for g in data["groups"]:
        for key in ("all", g["split"] or "unassigned"):
            row = out.setdefault(
                key, {"groups": 0, "images": 0, "pos": 0, "neg": 0, "areas": [], "ipg": []}
            )
            row["groups"] += 1
            row["images"] += len(g["images"])
            row["ipg"].append(len(g["images"]))
            for e in g["expressions"]:
                for img in g["images"]:
                    mask = e["targets"][img["id"]]
                    if mask is None:
                        row["neg"] += 1
                    else:
                        row["pos"] += 1
                        pixels = np.asarray(Image.open(root / mask))
                        row["areas"].append((pixels > 0).mean())
    return out


def test_counts_and_areas_match_a_plain_recount(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=5, n_images=4, size=(48, 32))
    data = json.loads((root / "grd.json").read_text())
    data["groups"][4]["split"] = None  # one group without a split
    data["groups"][3]["images"].pop()  # uneven group sizes
    for e in data["groups"][3]["expressions"]:
        e["targets"].pop("0003")
    (root / "grd.json").write_text(json.dumps(data))

    result = load_stats(root)["splits"]
    reference = _reference(root)
    assert list(result) == ["all", "train", "test", "unassigned"]
    for split, ref in reference.items():
        got = result[split]
        assert got["groups"] == ref["groups"] and got["images"] == ref["images"]
        assert (got["positive"], got["negative"]) == (ref["pos"], ref["neg"])
        assert got["pairs"] == ref["pos"] + ref["neg"]
        assert got["negative_share"] == pytest.approx(ref["neg"] / (ref["pos"] + ref["neg"]))
        assert got["images_per_group"]["min"] == min(ref["ipg"])
        assert got["images_per_group"]["max"] == max(ref["ipg"])
        assert got["images_per_group"]["mean"] == pytest.approx(np.mean(ref["ipg"]), abs=1e-3)
        area = got["mask_area"]
        assert area["count"] == len(ref["areas"])
        assert area["median"] == pytest.approx(np.median(ref["areas"]), abs=1e-6)
        assert area["max"] == pytest.approx(max(ref["areas"]), abs=1e-6)
        assert area["mean"] == pytest.approx(np.mean(ref["areas"]), abs=1e-6)


def test_areas_can_be_skipped(grd_dataset: Path):
    (grd_dataset / "masks/group-00/e1/0000.png").unlink()  # unread without areas
    assert load_stats(grd_dataset, areas=False)["splits"]["all"]["mask_area"] is None


def test_cli_json_table_and_errors(grd_dataset: Path):
    as_json = runner.invoke(app, ["grd", "stats", str(grd_dataset), "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["splits"]["all"]["pairs"] == 12
    table = runner.invoke(app, ["grd", "stats", str(grd_dataset)])
    assert table.exit_code == 0 and "negative share" in table.output and "50.0%" in table.output

    (grd_dataset / "masks/group-00/e1/0000.png").unlink()
    missing = runner.invoke(app, ["grd", "stats", str(grd_dataset)])
    assert missing.exit_code == 2
    assert "0000.png" in missing.output and "gres grd validate" in missing.output

    (grd_dataset / "grd.json").write_text('{"format": "grd", "version": 1, "groups": [{}]}')
    broken = runner.invoke(app, ["grd", "stats", str(grd_dataset)])
    assert broken.exit_code == 2 and "$.groups[0]" in broken.output
