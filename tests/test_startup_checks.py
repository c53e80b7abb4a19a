"""The checks `gres train` runs before its first step, made cheap for RefCOCO-sized sets
(issue 12): `fits_schema`, the direct check of grd.schema.json, never accepts a manifest
jsonschema rejects; `gres train` on a valid dataset never runs jsonschema (once, inside
`gres grd validate`'s checks, when the manifest is broken); `validate` reads a file named by
several records once and still reports its faults at every record."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import build_grd
from hypothesis import given
from test_properties import GRD_MANIFEST, mutated
from typer.testing import CliRunner

from grd_tools.format import fits_schema, schema
from grd_tools.validate import validate

FULL = jsonschema.Draft202012Validator(schema())


def _has_float(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_has_float(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_float(v) for v in node)
    return isinstance(node, float)


def _agrees(manifest: Any) -> None:
    valid = FULL.is_valid(manifest)
    if fits_schema(manifest):
        assert valid, "fits_schema accepted what the schema rejects"
    elif not _has_float(manifest):  # 2.0 is an integer to JSON Schema; fits_schema defers
        assert not valid, "fits_schema rejected a valid manifest"


@given(manifest=mutated(GRD_MANIFEST))
def test_fits_schema_gives_jsonschemas_verdict_on_mutated_manifests(manifest: Any):
    _agrees(manifest)


def _set(path: list, value: Any) -> Any:
    doc = copy.deepcopy(GRD_MANIFEST)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


GROUP, IMAGE, EXPR = ["groups", 0], ["groups", 0, "images", 0], ["groups", 0, "expressions", 0]


@pytest.mark.parametrize(
    "manifest",
    [
        _set(["version"], True),
        _set(["format"], "GRD"),
        _set(["extra"], 1),
        _set(["meta"], []),
        _set([*GROUP, "id"], "a/b"),
        _set([*GROUP, "id"], "a\\b"),
        _set([*GROUP, "id"], "a\x00"),
        _set([*GROUP, "id"], ""),
        _set([*GROUP, "split"], 3),
        _set([*GROUP, "meta"], "m"),
        _set([*IMAGE, "width"], 0),
        _set([*IMAGE, "width"], True),
        _set([*IMAGE, "height"], "10"),
        _set([*IMAGE, "file"], ""),
        _set([*IMAGE, "colour"], "red"),
        _set([*EXPR, "text"], ""),
        _set([*EXPR, "targets"], []),
        _set([*EXPR, "targets", "extra"], 4),
        _set([*EXPR, "targets", "extra"], ""),
    ],
)
def test_each_rule_of_the_schema_is_checked(manifest: Any):
    assert not FULL.is_valid(manifest) and not fits_schema(manifest)


@pytest.mark.parametrize(
    "manifest",
    [
        GRD_MANIFEST,
        _set([*GROUP, "split"], None),
        _set([*GROUP, "id"], "a b\n"),
        _set(["meta"], {"source": "x"}),
        _set([*EXPR, "targets", "extra"], None),  # an unknown image id is validate's fault, not
        _set([*IMAGE, "width"], 2.0),  # the schema's; 2.0 is an integer to JSON Schema
    ],
)
def test_valid_manifests_pass_the_full_check_and_agree(manifest: Any):
    assert FULL.is_valid(manifest)
    _agrees(manifest)


def test_gres_train_runs_jsonschema_only_on_a_broken_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`gres train` checks the manifest twice (validate, then load to index the split); on a
    valid one jsonschema never runs. A missing split stops the run right after indexing, before
    the model is built, which keeps this test short."""
    from grd_tools.synth import generate
    from gres_cli.cli import app

    calls = []
    full_check = jsonschema.Draft202012Validator.iter_errors

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return full_check(self, *args, **kwargs)

    monkeypatch.setattr(jsonschema.Draft202012Validator, "iter_errors", counted)
    data = generate(tmp_path / "s", groups=4, images_per_group=2, size=32)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"preset": "tiny-synth", "train_split": "nosuch"}))
    runner = CliRunner()
    args = ["train", str(data), "--config", str(recipe), "--out", str(tmp_path / "run")]
    valid = runner.invoke(app, args)
    assert valid.exit_code == 2 and "no groups in split 'nosuch'" in valid.output
    assert calls == []

    manifest = json.loads((data / "grd.json").read_text())
    manifest["groups"][0]["images"][0]["width"] = "wide"
    (data / "grd.json").write_text(json.dumps(manifest))
    broken = runner.invoke(app, args)
    assert broken.exit_code == 2 and "$.groups[0].images[0].width" in broken.output
    assert len(calls) == 1


def test_a_file_shared_by_two_records_is_reported_at_each(tmp_path: Path):
    root = build_grd(tmp_path / "ds", n_groups=2, n_images=2)
    manifest = json.loads((root / "grd.json").read_text())
    first, second = manifest["groups"][0]["images"][0], manifest["groups"][1]["images"][0]
    second["file"] = first["file"]  # one photo in two groups, as --group-by category makes
    manifest["groups"][1]["images"][1]["file"] = first["file"]
    manifest["groups"][1]["images"][1]["width"] = first["width"] + 1  # and one record is wrong
    (root / "grd.json").write_text(json.dumps(manifest))

    def where(report: Any, code: str) -> list[str]:
        return [i.where for i in report.issues if i.code == code]

    report = validate(root, check_pixels=False)
    assert report.images == 4
    assert where(report, "size-mismatch") == ["$.groups[1].images[1].file"]
    (root / first["file"]).unlink()
    report = validate(root, check_pixels=False)
    assert where(report, "missing-file") == [
        "$.groups[0].images[0].file",
        "$.groups[1].images[0].file",
        "$.groups[1].images[1].file",
    ]
