"""Model folders and the Hugging Face Hub: config.json + model.safetensors + tokenizer files.

Loading is strict: a missing or unexpected weight, or one of the wrong shape, is an error naming
the keys. Weights are read from safetensors only. HF_HUB_OFFLINE=1 is honoured everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gres_cli.errors import ModelLoadError
from gres_cli.model.clipseg_onnx_spec import GRAPH_FILES as CLIPSEG_GRAPH_FILES
from gres_cli.model.onnx_sessions import weights_file
from gres_cli.model.onnx_spec import GRAPH_FILES
from gres_cli.model.sam3_onnx_spec import GRAPH_FILES as SAM3_GRAPH_FILES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: what a model repo's snapshot fetches: an ONNX export's graphs, and their weights, by their
#: own names only (many repos also hold large onnx/ folders a torch model does not need)
MODEL_FILES = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "README.md",
    *dict.fromkeys(
        file
        for graphs in (GRAPH_FILES, CLIPSEG_GRAPH_FILES, SAM3_GRAPH_FILES)
        for graph in graphs.values()
        for file in (graph, weights_file(graph))
    ),
]


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_model_dir(
    model_id: str | os.PathLike[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local folder as is; a Hub repo id through the Hub cache (snapshot_download)."""
    path = Path(model_id)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ModelLoadError(f"{path}: not a model folder (no {CONFIG_FILE})")
        return path
    if path.exists() or str(model_id).startswith((".", "/", "~")) or str(model_id).count("/") > 1:
        raise ModelLoadError(f"{model_id}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id=str(model_id),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only or offline(),
            allow_patterns=MODEL_FILES,
            token=token,
        )
    except LocalEntryNotFoundError:
        where = " (HF_HUB_OFFLINE is set)" if offline() else ""
        raise ModelLoadError(
            f"{model_id}: not in the local Hub cache and the Hub cannot be reached{where}; "
            "run once with the Hub reachable to cache it, or pass a local folder"
        ) from None
    except GatedRepoError:
        raise ModelLoadError(
            f"{model_id}: gated on the Hub: accept its licence at "
            f"https://huggingface.co/{model_id} and log in (`hf auth login` or HF_TOKEN), "
            "or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{model_id}: no such model on the Hub (or it is private: log in with "
            "`hf auth login`), and no such local folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"{model_id}: cannot download ({type(e).__name__}: {e})") from None
    return Path(folder)


def model_identity(model_id: str | os.PathLike[str], revision: str | None = None) -> dict[str, Any]:
    """What names a model in a run's settings, by what it is, not how it was typed:

    - `model`: a local folder as its absolute path (`onnx` and `./onnx/` are one model), a Hub
      id as the id, with `commit`, the commit the revision resolved to;
    - `config_sha256` and, for a local folder, `weights_sha256`: a digest of its files (a
      folder retrained or re-exported in place is another model). A settings folder
      (gres-backend) adds the identity of the backend it names (`backend_identity`).
    """
    import hashlib

    folder = resolve_model_dir(model_id, revision)
    config = folder / CONFIG_FILE
    try:
        data = config.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{config}: cannot read ({e.strerror})") from None
    local = Path(model_id).is_dir()
    identity: dict[str, Any] = {
        "model": os.path.abspath(model_id) if local else str(model_id),
        "revision": revision,
        "config_sha256": hashlib.sha256(data).hexdigest(),
    }
    if local:
        identity["weights_sha256"] = folder_digest(folder)
    else:  # the Hub cache keeps a snapshot per commit: its folder is named after it
        identity["commit"] = folder.name
    named = read_config(folder)
    if named.get("model_type") == "gres-backend" and isinstance(named.get("backend"), str):
        # the backend as the settings folder's loader finds it (backends/settings.py)
        identity["backend_identity"] = model_identity(named["backend"], named.get("revision"))
    return identity


def folder_digest(folder: Path) -> str:
    """SHA-256 over a model folder's files (names and contents; the card README.md and hidden
    files left out). Each file's digest is cached by (path, size, mtime) in the user's cache
    (`DigestCache`), so a multi-GB checkpoint is read once, not on every run."""
    import hashlib

    cache = DigestCache()
    total = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == "README.md" or any(part.startswith(".") for part in name.split("/")):
            continue
        total.update(f"{name}\0{cache.sha256(path)}\n".encode())
    cache.save()
    return total.hexdigest()


def digest_cache() -> Path:
    """Where file digests are cached: $GRES_CACHE, else $XDG_CACHE_HOME/gres, else
    ~/.cache/gres."""
    if os.environ.get("GRES_CACHE"):
        return Path(os.environ["GRES_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gres"


class DigestCache:
    """Files' SHA-256 keyed by absolute path, size and mtime (a rewrite changes the mtime, so a
    changed file is hashed again), read from `file-digests.json` once and written back once by
    `save` (an unwritable cache only costs the re-read next time)."""

    def __init__(self) -> None:
        self.file = digest_cache() / "file-digests.json"
        try:
            entries = json.loads(self.file.read_text("utf-8"))
        except (OSError, ValueError):
            entries = {}
        self.entries: dict[str, Any] = entries if isinstance(entries, dict) else {}
        self.changed = False

    def sha256(self, path: Path) -> str:
        import hashlib

        stat = path.stat()
        key = os.path.abspath(path)
        stamp = [stat.st_size, stat.st_mtime_ns]
        hit = self.entries.get(key)
        if isinstance(hit, list) and hit[:2] == stamp and len(hit) == 3:
            return str(hit[2])
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        self.entries[key] = [*stamp, digest.hexdigest()]
        self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        try:
            from grd_tools.fsutil import atomic_write_text

            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.file, json.dumps(self.entries))
        except OSError:
            pass  # a read-only home: the digest is only recomputed next time


def file_sha256(path: Path) -> str:
    """SHA-256 of one file, through the digest cache (`DigestCache`)."""
    cache = DigestCache()
    digest = cache.sha256(path)
    cache.save()
    return digest


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text("utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{folder / CONFIG_FILE}: cannot read ({e})") from None
    if not isinstance(config, dict):  # every reader looks keys up in it (issue 24)
        raise ModelLoadError(f"{folder / CONFIG_FILE}: not a JSON object")
    return config


def load_state_strict(model: Any, weights: Path) -> None:
    """Load safetensors weights into `model`; any missing/unexpected/mis-shaped key is an error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        raise ModelLoadError(f"{weights}: missing (a model folder holds {WEIGHTS_FILE})")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    faults = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mis_shaped),
    ):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            faults.append(f"{label} weights: {', '.join(keys[:5])}{more}")
    if faults:
        raise ModelLoadError(f"{weights}: does not fit the model: {'; '.join(faults)}")
    model.load_state_dict(state, strict=True)


def save_state(model: Any, weights: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
