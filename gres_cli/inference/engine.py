"""The group-wise inference engine behind `gres segment`.

Two passes per group keep the cost per image flat however large the folder, and memory bounded
by the batch, not the folder:
  1. every image is encoded once; only its prototype p_n and hierarchizer scores are kept;
  2. the top-K experts of the WHOLE folder are chosen, and each image is encoded again and
     decoded against those K prototypes.
For a group of at most K images this equals the paper's all-pairs computation (tested).
A DataLoader decodes images ahead of the model (workers, pinned memory on CUDA).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from grd_tools.errors import GRDError
from grd_tools.imageio import open_image, open_image_reduced
from gres_cli.errors import GresError
from gres_cli.inference.inputs import ImageGroup
from gres_cli.model.grser import Encoded, ExpertScores, GRSer, presence
from gres_cli.model.preprocess import image_to_pixels, normalize, probabilities_to_original


class DecodedImages(Dataset):
    """Decodes image i: (i, uint8 pixels, original (width, height), error, photo or None)."""

    def __init__(self, paths: list[Path], size: int, keep_photo: bool = False) -> None:
        self.paths, self.size, self.keep_photo = paths, size, keep_photo

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, tuple[int, int], str, Any]:
        blank = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        try:
            if self.keep_photo:
                img = open_image(self.paths[i])
                size = img.size
            else:  # only the model input is needed: decode JPEGs at a reduced scale
                img, size = open_image_reduced(self.paths[i], self.size)
        except GRDError as e:
            return i, blank, (0, 0), str(e), None
        except Exception as e:  # any decoder failure is this image's error, never the run's
            return i, blank, (0, 0), f"{self.paths[i]}: {e}", None
        return i, image_to_pixels(img, self.size), size, "", img if self.keep_photo else None


def _collate(items: list) -> tuple[list[int], torch.Tensor, list, list[str], list]:
    idx, tensors, sizes, errors, photos = zip(*items, strict=True)
    return list(idx), torch.stack(tensors), list(sizes), list(errors), list(photos)


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else MPS, else CPU. Under torchrun, `auto` and a bare `cuda` mean this
    process's own GPU, cuda:$LOCAL_RANK."""
    local = os.environ.get("LOCAL_RANK")
    if name in ("auto", "cuda") and local is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GresError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GresError(f"--device {name}: CUDA is not available on this machine")
    return device


@dataclass
class ImageResult:
    index: int
    path: Path
    error: str | None
    present: bool = False
    d_pos: float = float("nan")
    d_neg: float = float("nan")
    # the decoder's mask (bool, original size, before presence); computed for present images
    # only, unless the Segmenter keeps all masks: upsampling is most of the work past the model
    mask: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    photo: Image.Image | None = None
    saliency: np.ndarray | None = None  # uint8 probability x 255, original size, with the mask


class Segmenter:
    """Runs a GRSer over groups of image files with the two-pass group-wise step."""

    def __init__(
        self,
        model: GRSer,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 16,
        workers: int = 0,
        experts: int | None = None,
        margin: float | None = None,
        threshold: float = 0.5,
        cache_bytes: int = 1 << 30,
        keep_saliency: bool = False,
        all_masks: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        # pass 1 keeps decoded tensors for pass 2 up to this many bytes per group; past it,
        # pass 2 decodes again, so memory stays bounded however large the folder
        self.cache_bytes = cache_bytes
        if precision not in ("fp32", "bf16", "fp16"):
            raise GresError(f"--precision {precision!r}: expected fp32, bf16 or fp16")
        if precision != "fp32" and self.device.type != "cuda":
            raise GresError(
                f"--precision {precision} needs a CUDA device (this run: {self.device})"
            )
        if batch_size < 1:
            raise GresError("--batch-size must be >= 1")
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.batch_size, self.workers = batch_size, workers
        self.experts = experts or model.config.experts
        self.margin = model.config.margin if margin is None else margin
        self.threshold = threshold
        self.keep_saliency = keep_saliency  # grey-level maps for the co-SOD metrics
        self.all_masks = all_masks  # masks of absent images too (a margin sweep needs them)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, paths: list[Path], keep_photo: bool = False) -> Iterator[tuple]:
        loader = DataLoader(
            DecodedImages(paths, self.model.config.image_size, keep_photo),
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for idx, pixels, sizes, errors, photos in loader:
            # bytes travel to the device; normalised there
            yield idx, pixels.to(self.device, non_blocking=True), sizes, errors, photos, None

    def _cached_batches(self, todo: list[int], cache: dict[int, tuple]) -> Iterator[tuple]:
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            pixels = torch.stack([cache[i][0] for i in chunk])
            sizes = [cache[i][1] for i in chunk]
            encoded = Encoded.cat([cache[i][2] for i in chunk])
            idx = list(range(start, start + len(chunk)))
            yield idx, pixels, sizes, [], [None] * len(chunk), encoded

    @torch.inference_mode()
    def run_group(
        self,
        group: ImageGroup,
        expression: str,
        skip: set[int] | None = None,
        keep_photo: bool = False,
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> list[ImageResult]:
        """Segment `expression` in every image of `group` (indices in `skip` are not decoded
        again in pass 2 and get no result)."""
        skip = skip or set()
        text = self.model.encode_text([expression])
        results: list[ImageResult] = []
        scores, ok = [], []
        cache: dict[int, tuple[torch.Tensor, tuple[int, int], Encoded]] = {}
        budget = 0 if keep_photo else self.cache_bytes
        # pass 1: prototypes and hierarchizer scores of every readable image
        for idx, raw, sizes, errors, _, _ in self._batches(group.images):
            good = [k for k, e in enumerate(errors) if not e]
            for k, err in enumerate(errors):
                if err and idx[k] not in skip:
                    res = ImageResult(idx[k], group.images[idx[k]], err)
                    results.append(res)
                    if on_result:
                        on_result(res)
            if good:
                pixels = normalize(raw[good])
                with self._autocast():
                    enc = self.model.encode(pixels, text)
                    s = self.model.expert_scores(pixels, text, enc)
                scores.append(ExpertScores(s.prototypes.float(), s.s_pos.float(), s.s_neg.float()))
                ok += [idx[k] for k in good]
                for j, k in enumerate(good):
                    # pass 2 reuses this image's encoder output (it does not depend on the
                    # experts) while the budget lasts; past it, pass 2 decodes and encodes again
                    item = enc.item(j)
                    cost = raw[k].nbytes + item.nbytes
                    if idx[k] not in skip and budget >= cost:
                        budget -= cost
                        cache[idx[k]] = (raw[k], sizes[k], item)
        if not ok:
            return results
        merged = ExpertScores.cat(scores)
        experts = merged.prototypes[self.model.select_experts(merged, self.experts)]
        # pass 2: decode every image against the folder's top-K experts
        todo = [i for i in ok if i not in skip]
        paths = [group.images[i] for i in todo]
        if all(i in cache for i in todo):
            batches = self._cached_batches(todo, cache)
        else:
            batches = self._batches(paths, keep_photo)
        for idx, raw, sizes, _, photos, encoded in batches:
            pixels = normalize(raw)
            with self._autocast():
                out = self.model.query(pixels, text, experts.to(pixels.dtype), encoded)
            d_pos, d_neg = out.d_pos[0].float(), out.d_neg[0].float()
            decided = presence(d_pos, d_neg, self.margin).tolist()
            keep = [k for k in range(len(idx)) if decided[k] or self.all_masks]
            maps = probabilities_to_original(out.mask_logits[0][keep], [sizes[k] for k in keep])
            probs = dict(zip(keep, maps, strict=True))
            for k, (i, dp, dn) in enumerate(zip(idx, d_pos.tolist(), d_neg.tolist(), strict=True)):
                prob = probs.get(k)
                res = ImageResult(
                    todo[i], paths[i], None, decided[k], dp, dn, size=sizes[k], photo=photos[k]
                )
                if prob is not None:
                    res.mask = (prob > self.threshold).cpu().numpy()
                    if self.keep_saliency:
                        res.saliency = (prob * 255).round().byte().cpu().numpy()
                results.append(res)
                if on_result:
                    on_result(res)
        return results
