"""Property-based tests (hypothesis, issues 11 and 24): every reader and command fed generated or
mutated input (manifests, the COCO, hf, CoSOD, D³ and RefCOCO readers, JSONL predictions,
`--jobs` lines, `gres view` inputs, gres-backend settings and ONNX folders) never ends in a
traceback: every fault is one line with its exit code, no generated input makes a command write
outside its destination, and what a reader accepts is a valid GRD dataset. The group rule of
the backends is checked on generated embeddings.

The examples come from the hypothesis profile (tests/conftest.py): `ci`, the default, draws the
same 25 per test everywhere (nothing here is derived from a path); `HYPOTHESIS_PROFILE=fuzz`
explores (CONTRIBUTING.md)."""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from conftest import build_grd
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image
from test_grd_convert_releases import make_d3_release, make_refcoco_release
from typer.testing import CliRunner

from gres_cli.backends import load_model
from gres_cli.backends.openvocab import group_distances, group_prototype
from gres_cli.backends.protocol import presence
from gres_cli.backends.settings import BackendSettings
from gres_cli.cli import app
from gres_cli.errors import GresError, ModelLoadError
from gres_cli.inference.jobs import read_jobs

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


def _like(value: Any) -> st.SearchStrategy:
    """A value of `value`'s type (a columnar table keeps its schema); None for containers."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-(2**31), 2**31 - 1)
    if isinstance(value, float):
        return st.floats(allow_nan=True)
    if isinstance(value, str):
        return TRICKY | st.text(max_size=6)
    if isinstance(value, bytes):
        return st.binary(max_size=24)
    return st.none()


@st.composite
def mutated(draw: st.DrawFn, document: Any, typed: bool = False) -> Any:
    """`document` with 1-3 nodes replaced by generated JSON (by a value of the same type when
    `typed`), deleted, or duplicated."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            doc = draw(_like(doc) if typed else JSON)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parent[key] = draw(_like(parent[key]) if typed else JSON)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


def _copy_dataset(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def _replace(file: Path, content: str | bytes) -> None:
    """Give a file of a `_copy_dataset` copy new content. Its files are hard links to the
    template's: writing into one wrote into the template, so a mutated (or not-JSON) grd.json
    stayed in GRD for the tests that ran after, which then checked a broken dataset."""
    file.unlink(missing_ok=True)
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)


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
        _replace(data / "grd.json", json.dumps(manifest))
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
        _replace(data / "grd.json", b"{" + raw)
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
        _replace(coco / "annotations.json", json.dumps(document))
        _read_or_refuse(work, coco, "coco")


def _read_or_refuse(work: Path, src: Path, reader: str) -> None:
    """`gres grd convert SRC --from READER`: one line exit 2, or a dataset that validates."""
    out = work / "out"
    result = _run_and_confine(work, out, "grd", "convert", str(src), str(out), "--from", reader)
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


def test_an_rle_larger_than_any_image_is_refused_before_it_is_decoded(tmp_path: Path):
    """A record's rle size is read before its counts are decoded: 2^20 x 2^20 pixels would be
    a terabyte of mask (a MemoryError traceback, or the machine's memory)."""
    predictions = tmp_path / "p.jsonl"
    huge = {**RECORD, "rle": {"size": [2**20, 2**20], "counts": "0"}}
    predictions.write_text(json.dumps(huge) + "\n")
    result = CliRunner().invoke(app, ["eval", str(GRD), "--predictions", str(predictions)])
    _check(result, (2,))
    assert "1048576x1048576 pixels: more than any image gres reads" in result.stderr


# --- the other readers: hf, CoSOD, D³, RefCOCO ----------------------------------------------

HF = TEMPLATES / "hf"
CliRunner().invoke(app, ["grd", "convert", str(GRD), str(HF), "--to", "hf"])
HF_SHARD = next((HF / "data").glob("*.parquet"))
HF_ROWS = pq.read_table(HF_SHARD).to_pylist()
HF_SCHEMA = pq.read_schema(HF_SHARD)  # keeps the `datasets` features in its metadata


def _empty_mask_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (12, 10), 0).save(buffer, format="PNG")
    return buffer.getvalue()


_PRESENT = next(i for i, row in enumerate(HF_ROWS) if row["present"])


@given(rows=mutated(HF_ROWS, typed=True))
# a row marked present whose mask is all zero: convert exited 0 with an empty-mask-present
# dataset (the other readers write such a target as absent)
@example(rows=_replaced(HF_ROWS, (_PRESENT, "mask", "bytes"), _empty_mask_png()))
def test_mutated_hf_rows_convert_or_fail_in_one_line(rows: list[dict]):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf = work / "hf"
        shard = hf / HF_SHARD.relative_to(HF)
        shard.parent.mkdir(parents=True)
        try:
            table = pa.Table.from_pylist(rows, schema=HF_SCHEMA)
        except (pa.ArrowException, TypeError, ValueError):
            return  # not a table any parquet writer makes (rows is not a list of rows)
        pq.write_table(table, shard)
        _read_or_refuse(work, hf, "hf")


COSOD = TEMPLATES / "cosod"
CliRunner().invoke(app, ["grd", "convert", str(GRD), str(COSOD), "--to", "cosod"])
COSOD_FILES = sorted(str(p.relative_to(COSOD)) for p in COSOD.rglob("*") if p.is_file())
# what can happen to a file of a CoSOD folder: gone, not an image, another size, grey levels
COSOD_DAMAGE = st.tuples(
    st.sampled_from(COSOD_FILES), st.sampled_from(["delete", "garbage", "tiny", "grey", "copy"])
)


@given(damage=st.lists(COSOD_DAMAGE, min_size=1, max_size=3), name=TRICKY | st.text(max_size=6))
def test_damaged_cosod_folders_convert_or_fail_in_one_line(damage: list, name: str):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cosod = work / "cosod"
        shutil.copytree(COSOD, cosod)
        for rel, how in damage:
            file = cosod / rel
            if not file.is_file():
                continue
            if how == "delete":
                file.unlink()
            elif how == "garbage":
                file.write_bytes(b"\x89PNG not really")
            elif how in ("tiny", "grey"):
                size, value = ((3, 2), 255) if how == "tiny" else ((12, 10), 100)
                Image.new("L", size, value).save(file, format="PNG")
            else:  # a copy under a generated name, beside the original
                with contextlib.suppress(OSError, ValueError):  # a name no file system takes
                    shutil.copy(file, file.with_name(name + file.suffix))
        _read_or_refuse(work, cosod, "cosod")


D3 = make_d3_release(TEMPLATES / "d3")
D3_TABLES = {p.stem: pickle.loads(p.read_bytes()) for p in sorted((D3 / "d3_pkl").iterdir())}


@st.composite
def d3_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(D3_TABLES)))
    return name, draw(mutated(D3_TABLES[name]))


@given(change=d3_mutation())
def test_mutated_d3_tables_convert_or_fail_in_one_line(change: tuple[str, Any]):
    name, table = change
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d3 = work / "d3"
        _copy_dataset(D3, d3)
        _replace(d3 / "d3_pkl" / f"{name}.pkl", pickle.dumps(table, protocol=2))
        _read_or_refuse(work, d3, "d3")


REFCOCO = make_refcoco_release(TEMPLATES / "refcoco")
REFCOCO_FILES = {
    "instances.json": json.loads((REFCOCO / "instances.json").read_text()),
    "refs(unc).p": pickle.loads((REFCOCO / "refs(unc).p").read_bytes()),
}


@st.composite
def refcoco_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(REFCOCO_FILES)))
    return name, draw(mutated(REFCOCO_FILES[name]))


@given(change=refcoco_mutation())
def test_mutated_refcoco_files_convert_or_fail_in_one_line(change: tuple[str, Any]):
    name, document = change
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        refcoco = work / "refcoco"
        _copy_dataset(REFCOCO, refcoco)
        json_file = name.endswith(".json")
        encoded = json.dumps(document) if json_file else pickle.dumps(document, protocol=2)
        _replace(refcoco / name, encoded)
        _read_or_refuse(work, refcoco, "refcoco")


# --- `gres segment --jobs` lines ------------------------------------------------------------

JOB = {"path": "images/group-00", "expression": "the red cup", "group": "cups", "note": 1}


@given(
    lines=st.lists(
        st.one_of(mutated(JOB).map(json.dumps), st.text(max_size=20), JSON.map(json.dumps)),
        max_size=4,
    )
)
def test_jobs_lines_become_jobs_or_errors(lines: list[str]):
    """Any line is a JobLine with groups or with a one-line error, never an exception; a file
    with no job at all is one GresError."""
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    try:
        jobs = read_jobs(lines, GRD)
    except GresError as e:
        assert "holds no job" in str(e) and not any(line.strip() for line in lines)
        return
    assert [j.line for j in jobs] == [n for n, line in enumerate(lines, 1) if line.strip()]
    for job in jobs:
        if job.error is None:
            assert job.groups and all(Path(i).is_file() for g in job.groups for i in g.images)
            assert isinstance(job.expression, str)
        else:
            assert not job.groups
            assert job.error.startswith(f"line {job.line}: ") and "\n" not in job.error


# --- `gres view` inputs: records, reports, manifests ----------------------------------------

REPORT = TEMPLATES / "report.json"
(TEMPLATES / "p.jsonl").write_text(json.dumps(RECORD) + "\n")
CliRunner().invoke(
    app, ["eval", str(GRD), "--predictions", str(TEMPLATES / "p.jsonl"), "--report", str(REPORT)]
)
REPORT_DOC = json.loads(REPORT.read_text())
# no example carries a template path (test_hypothesis_profiles.py would see it)
REPORT_DOC["settings"] |= {"predictions": "p.jsonl", "dataset": "data"}


@given(
    kind=st.sampled_from(["records", "report", "manifest"]),
    records=st.lists(mutated(RECORD).map(json.dumps) | st.text(max_size=20), max_size=3),
    report=mutated(REPORT_DOC),
    manifest=mutated(GRD_MANIFEST),
)
def test_view_inputs_make_a_site_or_fail_in_one_line(
    kind: str, records: list[str], report: Any, manifest: Any
):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        _copy_dataset(GRD, data)
        if kind == "records":
            path = work / "records.jsonl"
            path.write_text("\n".join(r.replace("\n", " ") for r in records) + "\n")
        elif kind == "report":
            path = work / "report.json"
            path.write_text(json.dumps(report))
        else:
            path = data
            _replace(data / "grd.json", json.dumps(manifest))
        site = work / "site"
        result = _run_and_confine(work, site, "view", str(path), "--out", str(site))
        _check(result, (0, 2))
        if result.exit_code == 0:
            assert (site / "index.html").is_file()


# --- gres-backend settings folders and ONNX export configs ----------------------------------

BACKEND_CONFIG = BackendSettings("missing-backend", margin=0.1, extra={"calibrated": {}}).to_dict()


@given(config=mutated(BACKEND_CONFIG))
# issue 24, found by the ci profile: values of the wrong type were taken as settings, a list
# model_type was a TypeError, a config that is not an object an AttributeError
@example(config=_replaced(BACKEND_CONFIG, ("margin",), []))
@example(config=_replaced(BACKEND_CONFIG, ("revision",), []))
@example(config=_replaced(BACKEND_CONFIG, ("experts",), True))
@example(config=_replaced(BACKEND_CONFIG, ("model_type",), []))
@example(config=[])
def test_settings_folders_load_typed_or_fail_in_one_line(config: Any):
    """A gres-backend config.json is read into well-typed settings or refused with one line
    (ModelLoadError), and loading the folder fails only with one line (the backend it names
    is not there)."""
    try:
        settings = BackendSettings.from_dict(config) if isinstance(config, dict) else None
    except ModelLoadError as e:
        assert "\n" not in str(e)
        settings = None
    if settings is not None:
        assert isinstance(settings.backend, str) and settings.backend
        assert settings.revision is None or isinstance(settings.revision, str)
        for number in (settings.margin, settings.group_weight):
            assert number is None or (type(number) in (int, float) and math.isfinite(number))
        assert settings.margin is not None or "margin" not in config or config["margin"] is None
        assert type(settings.experts) is int and settings.experts >= 1
        assert settings.extra is None or isinstance(settings.extra, dict)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(config))
        try:
            load_model(str(folder))
        except GresError as e:  # ModelLoadError is one
            assert "\n" not in str(e).strip()


DEMO_MODEL = Path(__file__).resolve().parents[1] / "examples" / "demo-model"
# an ONNX export's config.json: the GRSer config, model_type grser-onnx and the graphs' names
ONNX_CONFIG = json.loads((DEMO_MODEL / "config.json").read_text()) | {
    "model_type": "grser-onnx",
    "onnx": {"graphs": {n: f"{n}.onnx" for n in ("text", "encode", "query")}, "opset": 17},
}


@given(config=mutated(ONNX_CONFIG))
# issue 24, found by the ci profile: a missing or null size was a KeyError/TypeError traceback,
# a graph named by a list an AttributeError; a graph outside the folder was opened
@example(config=_replaced(ONNX_CONFIG, ("swin_depths",), None))
@example(config={k: v for k, v in ONNX_CONFIG.items() if k != "experts"})
@example(config=_replaced(ONNX_CONFIG, ("onnx", "graphs", "text"), []))
@example(config=_replaced(ONNX_CONFIG, ("onnx", "graphs", "text"), "../text.onnx"))
def test_onnx_configs_load_or_fail_in_one_line(config: Any):
    """A folder laid out as an ONNX export (tokenizer files, graphs that are not real ONNX, so
    no example pays for an export) with a mutated config.json: loading it is one line of
    ModelLoadError, never a traceback, never a file read from outside the folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "onnx"
        folder.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            os.link(DEMO_MODEL / name, folder / name)
        for name in ("text", "encode", "query"):
            (folder / f"{name}.onnx").write_bytes(b"not onnx")
        (folder / "config.json").write_text(json.dumps(config))
        try:
            load_model(str(folder))
        except GresError as e:
            assert "\n" not in str(e).strip()
            assert "Traceback" not in str(e)


# --- the backends' group rule ---------------------------------------------------------------

FINITE = st.floats(-10, 10, allow_nan=False, width=32)


@st.composite
def image_group(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores b: N distinct values in [0, 1], embeddings e: N x D unit vectors), with the
    degenerate groups among them: all embeddings equal, or each opposite to the next."""
    n, d = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    scores = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    shape = draw(st.sampled_from(["any", "equal", "opposite"]))
    if shape == "any":
        rows = draw(st.lists(st.lists(FINITE, min_size=d, max_size=d), min_size=n, max_size=n))
    else:
        row = draw(st.lists(FINITE, min_size=d, max_size=d))
        sign = (lambda i: 1.0) if shape == "equal" else (lambda i: (-1.0) ** i)
        rows = [[sign(i) * v for v in row] for i in range(n)]
    embeddings = F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)
    return torch.tensor(scores, dtype=torch.float32) / 1000, embeddings


@given(
    group=image_group(),
    k=st.integers(1, 6),
    weight=st.floats(0, 10),
    margins=st.tuples(st.floats(-2, 2), st.floats(-2, 2)).map(sorted),
    order=st.randoms(use_true_random=False),
)
def test_group_rule_is_finite_permutation_equivariant_and_monotone_in_m(
    group: tuple, k: int, weight: float, margins: list[float], order: Any
):
    scores, embeddings = group
    proto = group_prototype(scores, embeddings, k)
    d_pos, d_neg = group_distances(scores, embeddings, proto, weight)
    assert torch.isfinite(proto.prototype).all() and torch.isfinite(proto.radius)
    assert torch.isfinite(d_pos).all() and torch.isfinite(d_neg).all()

    # the images' order is not information: permuting them permutes the answers
    perm = list(range(len(scores)))
    order.shuffle(perm)
    p_proto = group_prototype(scores[perm], embeddings[perm], k)
    p_pos, p_neg = group_distances(scores[perm], embeddings[perm], p_proto, weight)
    assert torch.allclose(p_pos, d_pos[perm], atol=1e-5)
    assert torch.allclose(p_neg, d_neg[perm], atol=1e-5)

    # a larger margin m never calls present an image a smaller one calls absent
    low, high = margins
    assert not (presence(d_pos, d_neg, high) & ~presence(d_pos, d_neg, low)).any()
