"""GRD datasets on the Hugging Face Hub: pull (through the Hub cache) and push (with a card).

HF_HUB_OFFLINE=1 is honoured: pull then reads the local Hub cache only.
"""

from __future__ import annotations

import os
from pathlib import Path

from grd_tools.card import dataset_card
from grd_tools.errors import GRDError
from grd_tools.format import MANIFEST, load
from grd_tools.paths import resolve_inside


def pull(
    repo_id: str,
    revision: str | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Download a dataset repo into the Hub cache and copy it out to `out` (default: the repo's
    name in the working folder), as real files: the cache's snapshot is made of symlinks into
    its blob store, which the dataset tools rightly refuse as paths leaving the dataset.
    Returns `out`. Raises GRDError with a one-line reason."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                local_files_only=bool(constants.HF_HUB_OFFLINE),
            )
        )
    except LocalEntryNotFoundError:
        where = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise GRDError(
            f"{repo_id}: not in the local Hub cache and the Hub cannot be reached{where}"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise GRDError(f"{repo_id}: cannot download ({type(e).__name__}: {e})") from None
    if not (folder / MANIFEST).is_file():
        hint = (
            " (a `datasets` repo? try `gres grd convert`)" if any(folder.rglob("*.parquet")) else ""
        )
        raise GRDError(f"{repo_id}: not a GRD dataset (no {MANIFEST}){hint}")
    import shutil

    from grd_tools.fsutil import atomic_output_dir, refuse_overlap

    out = Path(out) if out is not None else Path(repo_id.split("/")[-1])
    refuse_overlap(folder, out, "--out")  # the Hub cache is the source here
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(folder, tmp, symlinks=False, dirs_exist_ok=True)
        load(tmp)  # a pulled dataset must at least load
    return out


#: file suffixes of Python pickles (a pickle runs code when loaded): never published
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib"}


def refuse_pickles(folder: str | os.PathLike[str]) -> None:
    """Raise GRDError naming the first pickle file under `folder`: a folder holding one (a
    training checkpoint's trainer_state.pt, a D³ pickle) is not something to publish."""
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
            raise GRDError(
                f"{p}: a pickle (Python code when loaded); push a folder without it "
                "(a model folder is config.json + model.safetensors + tokenizer + README.md)"
            )


def upload_files(
    repo_id: str,
    root: str | os.PathLike[str],
    files: list[str],
    *,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    message: str,
    generated: dict[str, bytes] | None = None,
) -> str:
    """Create `repo_id` if needed and upload exactly `files` (paths relative to `root`) plus
    `generated` ({path in repo: bytes}, e.g. a card) in ONE commit: an allow-list, so nothing
    else in the folder is published. Returns the commit's URL; GRDError in one line on failure."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    operations = [CommitOperationAdd(rel, str(Path(root) / rel)) for rel in files]
    operations += [CommitOperationAdd(rel, data) for rel, data in (generated or {}).items()]
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            repo_type=repo_type,
            revision=revision,
        )
    except Exception as e:  # network, auth, offline: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise GRDError(f"push to {repo_id} failed: {type(e).__name__}: {first}") from None
    return str(info)


def push(
    dataset_root: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a GRD dataset (grd.json, the images and masks it lists) plus a generated dataset
    card in one commit; nothing else in the folder, and the local folder is untouched."""
    dataset = load(dataset_root)  # refuse what does not load
    refuse_pickles(dataset_root)
    files = {MANIFEST}
    for g in dataset.groups:
        files.update(i.file for i in g.images)
        files.update(m for e in g.expressions for m in e.targets.values() if m is not None)
    for rel in files:
        resolve_inside(dataset_root, rel)  # never a file outside the dataset
    return upload_files(
        repo_id,
        dataset_root,
        sorted(files),
        repo_type="dataset",
        private=private,
        revision=revision,
        message=commit_message or f"Upload GRD dataset {dataset.name or repo_id}",
        generated={"README.md": dataset_card(dataset).encode("utf-8")},
    )
