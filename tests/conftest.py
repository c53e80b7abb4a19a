"""Shared fixtures: small datasets built on the fly (no downloads, no network)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

# Test this checkout, also in subprocesses, even where an editable install points at another one
# (a git worktree beside the main checkout)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

# Hypothesis profiles (CONTRIBUTING.md). `ci`, the default, draws the same examples on every
# machine, from any folder, under any xdist worker and in any test order, so a red CI means a
# bug, not bad luck. `fuzz` explores: thousands of random examples per test, and the failures
# it finds are kept in an ignored folder and replayed first on the next fuzz run.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,  # examples seeded from the test's source, not from a clock
    database=None,  # nothing replayed from (or written to) a previous run
    deadline=None,  # the commands' speed depends on the machine; the examples must not
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("GRES_FUZZ_EXAMPLES", "5000")),
    derandomize=False,
    database=DirectoryBasedExampleDatabase(REPO / ".hypothesis-fuzz"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _no_local_constants_when_derandomized() -> None:
    """Hypothesis also draws, now and then, constants it finds in the source of the local
    modules loaded at that moment (not site-packages, not tests). Which modules are loaded
    depends on the tests run before in the same process (the xdist worker, the order, `-k`) and
    on how the project is installed (editable or not), so a derandomized run would still draw
    different examples on another machine. A derandomized run draws none of them; `fuzz` keeps
    them (they help it find bugs). Hypothesis has no setting for this, hence the wrapper; the
    same-examples check in tests/test_properties.py fails if a later Hypothesis breaks it."""
    from hypothesis.internal.conjecture import providers

    collect = providers._get_local_constants
    if getattr(collect, "gres_wrapped", False):
        return
    empty = providers.Constants()

    def local_constants() -> Any:
        return empty if settings.default.derandomize else collect()

    local_constants.gres_wrapped = True  # type: ignore[attr-defined]
    providers._get_local_constants = local_constants


_no_local_constants_when_derandomized()


def pytest_configure(config: pytest.Config) -> None:
    # `--hypothesis-profile NAME` wins over $HYPOTHESIS_PROFILE, whichever loads last
    name = config.getoption("hypothesis_profile", None)
    if name:
        settings.load_profile(name)


# GRES_HYPOTHESIS_TRACE=DIR: each process writes DIR/<worker>.json, {test: [examples, sha256 of
# the examples' reprs in order]}: runs that drew the same examples write the same digests.
# GRES_HYPOTHESIS_TRACE_ONLY=1 records the examples without running the tests' bodies (a test
# body does not steer what is drawn next unless it fails), for a quick comparison of runs.
_TRACE: dict[str, Any] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("GRES_HYPOTHESIS_TRACE"):
        return
    for item in items:
        hypothesis_handle = getattr(getattr(item, "obj", None), "hypothesis", None)
        if hypothesis_handle is not None:
            hypothesis_handle.inner_test = _traced(
                item.name, hypothesis_handle.inner_test, set(item.fixturenames)
            )


def _traced(name: str, test: Any, fixtures: set[str]) -> Any:
    def traced(*args: Any, **kwargs: Any) -> Any:
        drawn = {k: v for k, v in sorted(kwargs.items()) if k not in fixtures}
        count, digest = _TRACE.get(name, (0, hashlib.sha256()))
        digest.update(repr(drawn).encode())
        _TRACE[name] = (count + 1, digest)
        if os.environ.get("GRES_HYPOTHESIS_TRACE_ONLY"):
            return None
        return test(*args, **kwargs)

    return traced


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = os.environ.get("GRES_HYPOTHESIS_TRACE")
    if not folder or not _TRACE:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    digests = {name: [n, d.hexdigest()] for name, (n, d) in sorted(_TRACE.items())}
    (Path(folder) / f"{worker}.json").write_text(json.dumps(digests, indent=1))


def build_grd(
    root: Path,
    n_groups: int = 2,
    n_images: int = 3,
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> Path:
    """Write a small, valid GRD dataset at `root`: random RGB images, two expressions per group;
    expression e1 is present in every image but the last, e2 only in the first. Returns `root`.
    """
    from grd_tools import Expression, GRDDataset, Group, ImageRecord, save
    from grd_tools.imageio import write_mask

    rng = np.random.default_rng(seed)
    w, h = size
    groups = []
    for gi in range(n_groups):
        gid = f"group-{gi:02d}"
        images = []
        for ii in range(n_images):
            rel = f"images/{gid}/{ii:04d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / rel, quality=95)
            images.append(ImageRecord(f"{ii:04d}", rel, w, h))
        exprs = []
        for ei, present_in in (("e1", images[:-1]), ("e2", images[:1])):
            targets: dict[str, str | None] = {img.id: None for img in images}
            for img in present_in:
                mask = np.zeros((h, w), dtype=bool)
                x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
                mask[y0 : y0 + h // 3, x0 : x0 + w // 3] = True
                rel = f"masks/{gid}/{ei}/{img.id}.png"
                write_mask(root / rel, mask)
                targets[img.id] = rel
            exprs.append(Expression(ei, f"the object {ei} of {gid}", targets))
        groups.append(Group(gid, images, exprs, split="train" if gi % 2 == 0 else "test"))
    save(GRDDataset(groups, name="tiny", license="CC0-1.0"), root)
    return root


@pytest.fixture
def grd_dataset(tmp_path: Path) -> Path:
    """A small valid GRD dataset folder (2 groups x 3 images, 2 expressions each)."""
    return build_grd(tmp_path / "tiny-grd")


def gres(
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run `python -m gres_cli ARGS` in a subprocess, as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "gres_cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def segment_torch_free(
    model_dir: Path, photos: Path, expression: str, work: Path, repo_id: str = "gres-test/onnx"
) -> list[dict]:
    """`gres segment PHOTOS EXPRESSION --model REPO_ID` in a fresh interpreter, the ONNX model
    `model_dir` served as a Hub id from an offline cache under `work`; its records. Asserts the
    run succeeded and imported none of `HEAVY` (what `pip install "gres[onnx]"` leaves out)."""
    cache = work / "hub"
    populate_hub_cache(cache, repo_id, model_dir)
    args = ("segment", str(photos), expression, "--model", repo_id)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    args += ("--out", str(work / "out"), "--jsonl", "-")
    proc, heavy = gres_reporting_imports(*args, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert heavy == []
    return [json.loads(line) for line in proc.stdout.splitlines()]


#: what gres's torch-free paths never import
HEAVY = ("torch", "transformers", "timm", "torchvision", "datasets", "safetensors")


def gres_reporting_imports(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`gres ARGS` in a fresh interpreter: the process (its stdout without the last line) and
    which of `HEAVY` it had imported when the command ended."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['gres', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('gres_cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=cwd
    )
    *lines, last = proc.stdout.splitlines() or ["HEAVY None"]
    proc.stdout = "".join(line + "\n" for line in lines)
    return proc, ast.literal_eval(last.removeprefix("HEAVY "))


def gres_here(*args: str, stdin: str | None = None, cwd: Path | None = None):
    """Run `gres ARGS` in this process (faster than a subprocess: torch is imported once);
    returns click's Result (exit_code, stdout, stderr). Exceptions propagate to the test."""
    from typer.testing import CliRunner

    from gres_cli.cli import app

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    finally:
        os.chdir(here)


def noise_image(path: Path, seed: int) -> Path:
    """A 40x30 PNG of seeded random pixels at `path` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def read_jsonl(source: str | Path) -> list[dict]:
    """The records of a JSON-lines text, or of the file at a Path (blank lines ignored)."""
    text = source.read_text() if isinstance(source, Path) else source
    return [json.loads(line) for line in text.splitlines() if line.strip()]


DEMO_MODEL = REPO / "examples" / "demo-model"


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported once per test session by `gres model export --format onnx`."""
    out = tmp_path_factory.mktemp("onnx") / "demo-onnx"
    proc = gres("model", "export", str(DEMO_MODEL), str(out), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote ONNX export of {DEMO_MODEL}" in proc.stderr
    return out


def demo_group(root: Path, group: str = "synth-0003") -> Path:
    """One group of examples/synth-demo (8 images of 64 px, 3 expressions: 24 pairs) as a GRD
    dataset of its own at `root`, for runs of examples/demo-model with real answers."""
    import json

    demo = REPO / "examples" / "synth-demo"
    manifest = json.loads((demo / "grd.json").read_text())
    manifest["groups"] = [g for g in manifest["groups"] if g["id"] == group]
    for sub in ("images", "masks"):
        shutil.copytree(demo / sub / group, root / sub / group)
    (root / "grd.json").write_text(json.dumps(manifest))
    return root


def torchrun(*argv: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node P ARGV` (a script, or -m module ...) on a free local port (a
    fixed port can collide with another run on the same machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(processes),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def torchrun_gres(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node P -m gres_cli ARGS`."""
    return torchrun("-m", "gres_cli", *args, processes=processes)


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    """Lay a model folder out as huggingface_hub's cache does (blobs, refs, snapshots), so
    that loading `repo_id` with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache takes the real Hub
    code path."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def tiny_clip_tokenizer():
    """A valid CLIP tokenizer with no download: the 256 byte symbols, each also with `</w>`,
    the two special tokens, and no merges (character-level)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_tiny_clipseg(
    folder: Path, seed: int = 0, size: int = 64, extract_layers: tuple[int, ...] = (1, 2)
) -> Path:
    """A random 2-3 layer CLIPSeg (about 0.1 M parameters) with its processor, saved as
    `save_pretrained` writes it: the folder a user would pass to --model. The decoder reads
    the vision layers `extract_layers` (of 0, 1, 2)."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    tokenizer = tiny_clip_tokenizer()
    special = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    config = CLIPSegConfig(
        text_config={**text, "vocab_size": 514, "max_position_embeddings": 77, **special},
        vision_config={**vision, "image_size": size, "patch_size": 16},
        projection_dim=16,
        extract_layers=list(extract_layers),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    images = ViTImageProcessor(
        size={"height": size, "width": size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def build_tiny_grser(folder: Path, seed: int = 0, **overrides) -> Path:
    """A random grser-tiny at 64 px (window 4) saved as a model folder; `overrides` are config
    fields (e.g. margin=-5.0 calls every image present, so masks get written)."""
    import torch

    from gres_cli.model.config import GRSerConfig
    from gres_cli.model.grser import GRSer

    torch.manual_seed(seed)
    config = GRSerConfig.preset("grser-tiny", image_size=64, swin_window_size=4, **overrides)
    GRSer(config).save_pretrained(folder)
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every commit pushed, as {path in repo: bytes}; nothing leaves the machine."""
    from huggingface_hub import HfApi  # the Hub is unreachable here: its two writes are caught

    commits: list[dict] = []

    def create_commit(self, repo_id, operations, **kw):
        files = {}
        for op in operations:
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
        commits.append(files)
        return f"https://hub/{repo_id}/commit/{len(commits)}"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return commits
