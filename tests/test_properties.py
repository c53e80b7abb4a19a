"""Property-based tests (hypothesis, issue 11): generated and mutated manifests, COCO files and
JSONL predictions never produce a traceback; every fault is one line with its exit code; no
generated input makes a command write outside its destination."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import build_grd
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from gres_cli.cli import app

TEMPLATES = Path(tempfile.mkdtemp(prefix="gres-properties-"))
atexit.register(shutil.rmtree, TEMPLATES, True)
GRD = build_grd(TEMPLATES / "grd", n_groups=2, n_images=2, size=(12, 10))
GRD_MANIFEST = json.loads((GRD / "grd.json").read_text())

# values that stress a manifest: paths that escape, wrong types, odd text, huge numbers
TRICKY = st.sampled_from(
    ["../escape.png", "/etc/passwd", "images/../../x.png", "", "a\\b.png", "[/x]", "\x00", "."]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=6)
    | TRICKY
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)


def _replaced(document: Any, path: tuple, value: Any) -> Any:
    """A copy of `document` with the node at `path` set to `value` (for pinned examples)."""
    doc = copy.deepcopy(document)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """`document` with 1-3 nodes replaced by generated JSON, deleted, or duplicated."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            doc = draw(JSON)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parent[key] = draw(JSON)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


def _copy_dataset(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _check(result, allowed: tuple[int, ...]) -> None:
    """No traceback; an allowed exit code; a usage fault (2) is one line on stderr."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in allowed, result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gres: error:"), result.stderr


def _run_and_confine(work: Path, out: Path | None, *args: str) -> Any:
    """Run `gres ARGS`; nothing may change in `work` except under `out`."""
    before = {k: v for k, v in _files(work).items() if out is None or not _under(k, out, work)}
    result = CliRunner().invoke(app, list(args))
    after = {k: v for k, v in _files(work).items() if out is None or not _under(k, out, work)}
    assert after == before, "wrote outside its destination"
    return result


def _under(rel: str, out: Path, work: Path) -> bool:
    return (work / rel).resolve() == out.resolve() or out.resolve() in (
        work / rel
    ).resolve().parents


@given(manifest=mutated(GRD_MANIFEST), to=st.sampled_from(["grd", "coco", "cosod"]))
def test_mutated_manifests_are_refused_in_one_line_and_never_escape(manifest: Any, to: str):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        _copy_dataset(GRD, data)
        (data / "grd.json").write_text(json.dumps(manifest))
        (work / "escape.png").write_bytes(b"outside")  # what '../escape.png' would reach
        _check(_run_and_confine(work, None, "grd", "validate", str(data), "--json"), (0, 1, 2))
        _check(_run_and_confine(work, None, "grd", "stats", str(data), "--json"), (0, 2))
        out = work / "out"
        convert = ("grd", "convert", str(data), str(out), "--to", to)
        _check(_run_and_confine(work, out, *convert), (0, 2))


@given(raw=st.binary(max_size=64))
def test_a_manifest_that_is_not_json_is_one_line_exit_2(raw: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _copy_dataset(GRD, data)
        (data / "grd.json").write_bytes(b"{" + raw)
        for args in (["validate", str(data)], ["stats", str(data)]):
            _check(CliRunner().invoke(app, ["grd", *args]), (2,))


COCO = TEMPLATES / "coco"
CliRunner().invoke(app, ["grd", "convert", str(GRD), str(COCO), "--to", "coco"])
COCO_DOC = json.loads((COCO / "annotations.json").read_text())


@given(document=mutated(COCO_DOC))
# issue 24: a ref's group that is not its image's: a group 'None' with no images, whose target
# names an image of another group; convert exited 0 with a dataset validate rejects
@example(document=_replaced(COCO_DOC, ("refs", 0, "group"), None))
def test_mutated_coco_files_convert_or_fail_in_one_line(document: Any):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        coco = work / "coco"
        _copy_dataset(COCO, coco)
        (coco / "annotations.json").write_text(json.dumps(document))
        out = work / "out"
        result = _run_and_confine(
            work, out, "grd", "convert", str(coco), str(out), "--from", "coco"
        )
        _check(result, (0, 2))
        if result.exit_code == 0:  # what a reader accepts is a valid GRD dataset
            _check(CliRunner().invoke(app, ["grd", "validate", str(out)]), (0,))


RECORD = {
    # relative, matched by group + file stem: no example depends on where the templates are
    "image": "images/group-00/0000.jpg",
    "group": "group-00",
    "expression": GRD_MANIFEST["groups"][0]["expressions"][0]["text"],
    "present": True,
    "mask": None,
    "rle": {"size": [10, 12], "counts": "0"},
    "error": None,
}


@given(
    lines=st.lists(
        st.one_of(
            mutated(RECORD).map(json.dumps),
            st.text(max_size=20),
            JSON.map(json.dumps),
        ),
        max_size=4,
    )
)
# issue 24: a record whose image is null but not an error ended in a TypeError traceback
@example(lines=[json.dumps({**RECORD, "image": None})])
def test_generated_jsonl_predictions_score_or_fail_in_one_line(lines: list[str]):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        predictions = work / "p.jsonl"
        predictions.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n")
        report = work / "r.json"
        result = _run_and_confine(
            work,
            report,
            "eval",
            str(GRD),
            "--predictions",
            str(predictions),
            "--report",
            str(report),
        )
        _check(result, (0, 2))
