"""What identifying a model's weights costs a run (settings.json's `weights_sha256`): the first
run reads every file of the model folder; later runs find each file's digest in the cache
(`~/.cache/gres/file-digests.json`, keyed by path, size and mtime). Prints both, side by side.

    python benchmarks/bench_weights_digest.py [--gib 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0, help="size of the weight file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRES_CACHE"] = str(Path(tmp) / "cache")  # a cold cache, not the user's
        from gres_cli.model import hub

        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        chunk = os.urandom(1 << 20)
        with (folder / "model.safetensors").open("wb") as f:
            for _ in range(int(args.gib * 1024)):
                f.write(chunk)
        started = time.perf_counter()
        first = hub.folder_digest(folder)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        again = hub.folder_digest(folder)
        warm = time.perf_counter() - started
        assert first == again
        print(
            f"{args.gib:g} GiB model folder: first run {cold:.2f} s, later runs "
            f"{warm * 1000:.1f} ms (cached by size and mtime): {cold / warm:.0f}x"
        )


if __name__ == "__main__":
    main()
