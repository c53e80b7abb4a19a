"""GRD datasets on the Hugging Face Hub: pull (through the Hub cache) and push (with a card).

HF_HUB_OFFLINE=1 is honoured: pull then reads the local Hub cache only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from grd_tools.card import dataset_card
from grd_tools.errors import GRDError
from grd_tools.format import MANIFEST, load


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


def push(
    dataset_root: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a GRD dataset folder plus a generated dataset card; the local folder is untouched."""
    dataset = load(dataset_root)  # refuse what does not load
    from huggingface_hub import HfApi

    api = HfApi()
    message = commit_message or f"Upload GRD dataset {dataset.name or repo_id}"
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(dataset_root),
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message=message,
        )
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "README.md"
            card.write_text(dataset_card(dataset), encoding="utf-8")
            info = api.upload_file(
                path_or_fileobj=str(card),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                commit_message="Dataset card",
            )
    except Exception as e:  # network, auth, offline: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise GRDError(f"push to {repo_id} failed: {type(e).__name__}: {first}") from None
    return str(info)
