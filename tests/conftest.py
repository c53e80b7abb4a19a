"""Shared fixtures: small datasets built on the fly (no downloads, no network)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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


def torchrun_gres(
    *args: str, processes: int = 2, program: tuple[str, ...] = ("-m", "gres_cli")
) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node P -m gres_cli ARGS` on a free local port (a fixed port can
    collide with another run on the same machine); `program` may name a script instead."""
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
            *program,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
