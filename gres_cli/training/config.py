"""Training configuration: one dataclass, named presets, YAML/JSON files with strict keys."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gres_cli.errors import GresError

if TYPE_CHECKING:
    from gres_cli.training.data import Sampling


@dataclass
class TrainConfig:
    """Every knob of `gres train`. Unknown keys in a config file are errors."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "grser-tiny"})
    init_from: str | None = None  # a model folder/Hub id to fine-tune instead of a fresh model
    steps: int = 1000
    groups_per_step: int = 4  # B expressions (each with its own group) per step
    # N images sampled from the expression's group: a number, or [lo, hi] to draw N uniformly
    # per expression (sizes below, at and above K, so padding at inference is not new)
    images_per_group: int | list[int] = 6
    min_negatives: int = 1  # per sampled group, when the group has negatives
    min_positives: int = 1
    lr: float = 1e-3
    text_lr: float | None = None  # learning rate of the text encoder (defaults to lr)
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine" or "poly" (LAVT: poly 0.9)
    grad_clip: float = 1.0
    accumulate: int = 1
    mask_weight: float = 1.0
    dice_weight: float = 1.0
    dice_negatives: bool = False  # Dice on negative images too (Σp / (Σp + 1)); ours, not LAVT's
    triplet_weight: float = 1.0
    prototype_weight: float = 0.5
    mirror_weight: float = 0.5
    triplet_margin: float = 0.3  # alpha of the triplet losses (not the inference margin m)
    positive_class_weight: float = 1.1  # LAVT's CE class weights [0.9, 1.1]
    negative_class_weight: float = 0.9
    workers: int = 2  # DataLoader processes reading images and masks (0: in the main process)
    preload: bool = False  # decode the whole split once (small sets: faster, memory grows)
    flip: bool = True  # horizontal flips, never when the expression says left/right
    train_split: str = "train"
    val_split: str | None = "val"
    val_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA)
    threads: int | None = None
    tensorboard: bool | None = None  # None: log TensorBoard events when the package is installed

    def __post_init__(self) -> None:
        sizes = self.images_per_group
        sizes = [sizes, sizes] if isinstance(sizes, int) else list(sizes)
        if len(sizes) != 2 or not 1 <= sizes[0] <= sizes[1]:
            raise GresError(
                f"training config: images_per_group must be N or [lo, hi] with 1 <= lo <= hi, "
                f"not {self.images_per_group!r}"
            )

    def sampling(self) -> Sampling:
        """How each training sample is drawn (gres_cli.training.data.Sampling)."""
        from gres_cli.training.data import Sampling

        sizes = self.images_per_group
        lo, hi = (sizes, sizes) if isinstance(sizes, int) else sizes
        return Sampling(lo, hi, self.min_positives, self.min_negatives, self.flip)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GresError(f"training config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML or JSON file; it may name a `preset` to start from."""
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            raise GresError(f"{path}: cannot read ({e.strerror})") from None
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise GresError(f"{path}: expected a mapping of settings")
        base = PRESETS.get(data.pop("preset", "tiny-synth"))
        if base is None:
            raise GresError(f"{path}: unknown preset (choose from {', '.join(PRESETS)})")
        return cls.from_dict({**base, **data})

    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        if name not in PRESETS:
            raise GresError(f"unknown training preset {name!r} (choose from {', '.join(PRESETS)})")
        return cls.from_dict(dict(PRESETS[name]))


#: tiny-synth: grser-tiny at 64 px on `gres grd synth --size 64` data, CPU-fast.
#: grser-base: LAVT's published recipe as the starting point (AdamW lr 5e-5, weight decay 1e-2,
#: polynomial decay, batch 32, 480 px, CE class weights [0.9, 1.1]); 40 epochs of RefCOCO is
#: about 52k steps at batch 32. GRSer's own values are not published.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-synth": {
        "model": {"preset": "grser-tiny", "image_size": 64, "swin_window_size": 4},
        "steps": 1500,
        "groups_per_step": 4,
        "images_per_group": [2, 8],  # K = 4: groups below, at and above K
        "lr": 1e-3,
        "warmup_steps": 50,
    },
    "grser-base": {
        "model": {"preset": "grser-base"},
        "steps": 52000,
        "groups_per_step": 2,
        "images_per_group": [2, 16],  # K = 8: below, at and above K; at most 32 images a step
        "lr": 5e-5,
        "weight_decay": 1e-2,
        "schedule": "poly",
        "warmup_steps": 0,
        "dice_weight": 0.0,
        "precision": "bf16",
    },
}
