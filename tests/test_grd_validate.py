"""`gres grd validate`: each broken dataset trips exactly its own check; exit codes 0/1/2."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_grd
from PIL import Image
from typer.testing import CliRunner

from grd_tools.validate import CODES, validate
from gres_cli.cli import app

runner = CliRunner()


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "grd.json").read_text())


def _write_manifest(root: Path, data: dict[str, Any]) -> None:
    (root / "grd.json").write_text(json.dumps(data))


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        data = _manifest(root)
        fn(data)
        _write_manifest(root, data)

    return apply


def _mask(root: Path, rel: str, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8), mode="L").save(root / rel)


def _first_mask(root: Path) -> str:
    return _manifest(root)["groups"][0]["expressions"][0]["targets"]["0000"]


def _mask_with_values(root: Path, values: tuple[int, ...]) -> None:
    arr = np.zeros((30, 40), dtype=np.uint8)
    for i, v in enumerate(values):
        arr[i * 3 : i * 3 + 3, :10] = v
    _mask(root, _first_mask(root), arr)


def _symlink_out(root: Path) -> None:
    outside = root.parent / "outside.jpg"
    Image.new("RGB", (40, 30)).save(outside)
    target = root / "images/group-00/0000.jpg"
    target.unlink()
    os.symlink(outside, target)


def _garbage_image(root: Path) -> None:
    path = root / "images/group-00/0001.jpg"
    path.write_bytes(b"not an image at all")


def _resize_image(root: Path) -> None:
    Image.new("RGB", (50, 30)).save(root / "images/group-00/0001.jpg")


def _leak(data: dict[str, Any]) -> None:
    # group-01 (test) reuses an image file of group-00 (train)
    data["groups"][1]["images"][0]["file"] = data["groups"][0]["images"][0]["file"]


def _duplicate_group(data: dict[str, Any]) -> None:
    data["groups"][1]["id"] = "group-00"
    data["groups"][1]["split"] = "train"


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return fn


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return fn


G0 = ["groups", 0]
E1 = [*G0, "expressions", 0]

# fault name -> (how to break a valid dataset, the only code expected, where it must point)
FAULTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "schema": (
        _edit(_set([*G0, "images", 0, "width"], "40")),
        "schema",
        "$.groups[0].images[0].width",
    ),
    "missing-file": (
        lambda root: (root / "images/group-00/0001.jpg").unlink(),
        "missing-file",
        "$.groups[0].images[1].file",
    ),
    "missing-mask": (
        lambda root: (root / _first_mask(root)).unlink(),
        "missing-file",
        "$.groups[0].expressions[0].targets['0000']",
    ),
    "unreadable": (_garbage_image, "unreadable", "$.groups[0].images[1].file"),
    "image-size": (_resize_image, "size-mismatch", "$.groups[0].images[1].file"),
    "mask-size": (
        lambda root: _mask(root, _first_mask(root), np.full((20, 20), 255)),
        "size-mismatch",
        "$.groups[0].expressions[0].targets['0000']",
    ),
    "mask-not-binary": (
        lambda root: _mask_with_values(root, (255, 128)),
        "mask-not-binary",
        "$.groups[0].expressions[0].targets['0000']",
    ),
    "mask-0-1": (
        lambda root: _mask_with_values(root, (1,)),
        "mask-0-1",
        "$.groups[0].expressions[0].targets['0000']",
    ),
    "empty-mask-present": (
        lambda root: _mask(root, _first_mask(root), np.zeros((30, 40))),
        "empty-mask-present",
        "$.groups[0].expressions[0].targets['0000']",
    ),
    "duplicate-id": (_edit(_duplicate_group), "duplicate-id", "$.groups[1]"),
    "incomplete-targets": (
        _edit(_delete([*E1, "targets", "0002"])),
        "incomplete-targets",
        "$.groups[0].expressions[0].targets",
    ),
    "unknown-target-image": (
        _edit(_set([*E1, "targets", "9999"], None)),
        "unknown-target-image",
        "$.groups[0].expressions[0].targets['9999']",
    ),
    "dotdot": (
        _edit(_set([*G0, "images", 0, "file"], "../outside.jpg")),
        "unsafe-path",
        "$.groups[0].images[0].file",
    ),
    "absolute": (
        _edit(_set([*G0, "images", 0, "file"], "/etc/hostname")),
        "unsafe-path",
        "$.groups[0].images[0].file",
    ),
    "symlink-out": (_symlink_out, "unsafe-path", "$.groups[0].images[0].file"),
    "split-leak": (_edit(_leak), "split-leak", "$.groups[1].images[0]"),
    "unknown-split": (_edit(_set([*G0, "split"], "training")), "unknown-split", "$.groups[0]"),
    "empty-group": (_edit(_set([*G0, "expressions"], [])), "empty-group", "$.groups[0]"),
    "duplicate-expression": (
        _edit(_set([*G0, "expressions", 1, "text"], "The object e1 of  group-00")),
        "duplicate-expression",
        "$.groups[0].expressions[1]",
    ),
}


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_a_valid_dataset_has_no_issue(grd_dataset: Path):
    report = validate(grd_dataset)
    assert report.issues == []
    assert (report.groups, report.images, report.masks) == (2, 6, 6)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_trips_exactly_its_check(tmp_path: Path, fault: str):
    root = build_grd(tmp_path / "ds")
    breaks, code, where = FAULTS[fault]
    breaks(root)
    before = _tree_hash(root)
    report = validate(root)
    assert {i.code for i in report.issues} == {code}, report.issues
    assert where in {i.where for i in report.issues}
    assert all(i.severity == CODES[code][0] for i in report.issues)
    assert _tree_hash(root) == before  # validation never writes into the dataset


def test_every_code_is_exercised():
    assert {code for _, code, _ in FAULTS.values()} == set(CODES)


def test_header_only_mode_skips_pixel_checks(tmp_path: Path):
    root = build_grd(tmp_path / "ds")
    _mask_with_values(root, (255, 128))
    assert validate(root, check_pixels=False).issues == []
    assert [i.code for i in validate(root).issues] == ["mask-not-binary"]


def test_truncated_image_is_caught_only_when_decoding(tmp_path: Path):
    root = build_grd(tmp_path / "ds")
    path = root / "images/group-01/0002.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert validate(root).issues == []  # the header is intact
    issues = validate(root, decode_images=True).issues
    assert [(i.code, i.where) for i in issues] == [("unreadable", "$.groups[1].images[2].file")]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"format": "grd", "version": 1, "groups": "no"},
        {"format": "grd", "version": 1, "groups": [1, {"id": 5, "images": "x"}]},
        {
            "format": "grd",
            "version": 1,
            "groups": [
                {
                    "id": "g",
                    "images": [{"id": "a"}, 3, {"id": "b", "file": 7}],
                    "expressions": [{"id": "e", "targets": {"a": 4, "b": None}}, None],
                }
            ],
        },
    ],
)
def test_malformed_manifests_give_schema_issues_not_crashes(tmp_path: Path, data: Any):
    root = tmp_path / "ds"
    root.mkdir()
    _write_manifest(root, data)
    report = validate(root)
    assert "schema" in {i.code for i in report.issues}
    assert all(i.where.startswith("$") for i in report.issues)


def test_cli_exit_codes_and_json(tmp_path: Path):
    root = build_grd(tmp_path / "ds")
    clean = runner.invoke(app, ["grd", "validate", str(root)])
    assert clean.exit_code == 0 and "valid" in clean.output

    _mask_with_values(root, (1,))  # a warning only
    assert runner.invoke(app, ["grd", "validate", str(root)]).exit_code == 0
    strict = runner.invoke(app, ["grd", "validate", str(root), "--strict", "--json"])
    assert strict.exit_code == 1
    parsed = json.loads(strict.stdout)
    assert parsed["ok"] is False and parsed["warnings"] == 1 and parsed["errors"] == 0
    assert parsed["issues"][0]["code"] == "mask-0-1"

    (root / "images/group-01/0000.jpg").unlink()
    broken = runner.invoke(app, ["grd", "validate", str(root), "--json"])
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["errors"] == 1
    human = runner.invoke(app, ["grd", "validate", str(root)])
    assert human.exit_code == 1 and "missing-file" in human.output


@pytest.mark.parametrize("content", [None, "{not json", '{"format": "grd"'])
def test_cli_unreadable_manifest_is_a_one_line_usage_error(tmp_path: Path, content: str | None):
    root = tmp_path / "ds"
    root.mkdir()
    if content is not None:
        (root / "grd.json").write_text(content)
    result = runner.invoke(app, ["grd", "validate", str(root)])
    assert result.exit_code == 2
    assert "gres: error:" in result.output and "grd.json" in result.output
    assert "Traceback" not in result.output


def test_worker_processes_find_the_same_issues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import grd_tools.validate as validate_module

    root = build_grd(tmp_path / "ds", n_groups=4)
    _mask_with_values(root, (255, 7))
    (root / "images/group-03/0001.jpg").unlink()
    inline = validate(root, workers=1).issues
    monkeypatch.setattr(validate_module, "PARALLEL_FROM", 1)
    monkeypatch.setattr(validate_module, "BATCH", 2)
    seen: list[tuple[int, int]] = []
    pooled = validate(root, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert pooled.issues == inline
    assert sorted(i.code for i in inline) == ["mask-not-binary", "missing-file"]
    assert seen[-1] == (pooled.images + pooled.masks,) * 2


def test_every_code_is_documented():
    docs = (Path(__file__).parents[1] / "docs" / "grd-tools.md").read_text()
    for code, (severity, _) in CODES.items():
        assert f"| `{code}` | {severity} |" in docs, code
