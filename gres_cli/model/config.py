"""GRSer's configuration: one JSON-serialisable dataclass and a table of named presets.

Presets are data, not subclasses (as segment-anything's `build_sam` registry): every size builds
the same classes with different numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gres_cli.errors import GresError

#: `model_type` in a GRSer folder's config.json (how `gres_cli.backends.load_model` knows it)
MODEL_TYPE = "grser"
#: The language gate kinds (gres_cli.model.encoders.LanguageGate says what each one does).
LANGUAGE_GATES = ("random", "lavt", "lavt-open")


@dataclass
class GRSerConfig:
    """Everything needed to build a GRSer. Saved as the model folder's `config.json`.

    Image encoder (LAVT-style Swin, timm): `swin_*`. `swin_pretrained` names a timm checkpoint
    to initialise from when a fresh model is built (needs the Hub; never used when loading a
    saved model, whose weights are in `model.safetensors`).
    Text encoder (BERT family, transformers): `text_model` is a Hub id or local folder used to
    initialise a fresh model; `text_config` is the transformers config dict that rebuilds the
    encoder offline (filled in from `text_model` at first build). When both are empty a small
    BERT with a built-in WordPiece vocabulary is made (no file needed).
    """

    image_size: int = 96
    swin_embed_dim: int = 32
    swin_depths: tuple[int, ...] = (1, 1, 2, 1)
    swin_num_heads: tuple[int, ...] = (1, 2, 4, 8)
    swin_window_size: int = 6
    swin_patch_size: int = 4
    swin_drop_path: float = 0.0
    swin_pretrained: str | None = None
    text_model: str | None = None
    text_config: dict[str, Any] | None = None
    max_tokens: int = 20
    pooling: str = "mean"  # sentence feature L from word features: "mean" (masked) or "cls"
    query_stage: int = 1  # which encoder stage gives V_n (0-based; 1 = stride 8)
    embed_dim: int = 64  # D, the shared embedding space of prototypes, z_n, L and L_anti
    fusion_dim: int | None = 64  # PWAM key/value width, min(stage width, this); None: LAVT's
    language_gate: str = "random"  # "random" | "lavt" | "lavt-open" (encoders.LanguageGate)
    fusion_coords: bool = False  # give PWAM pixel coordinates (Swin has no absolute position)
    decoder_dim: int = 32  # hidden width of the mask decoder (LAVT: 512)
    decoder_film: bool = False  # ours: FiLM each decoder block by L (LAVT's decoder has no text)
    experts: int = 4  # K, ordered expert heatmaps stacked into z_n
    margin: float = 0.0  # default m of the presence rule d_pos + m < d_neg
    normalize_embeddings: bool = True  # L2-normalise vectors in the shared space
    name: str | None = None  # the preset this config came from, if any
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (training recipe...)

    def __post_init__(self) -> None:
        self.swin_depths = tuple(self.swin_depths)
        self.swin_num_heads = tuple(self.swin_num_heads)
        stages = len(self.swin_depths)
        if len(self.swin_num_heads) != stages:
            raise GresError("config: swin_depths and swin_num_heads must have the same length")
        if not 0 <= self.query_stage < stages:
            raise GresError(f"config: query_stage must be in [0, {stages - 1}]")
        stride = self.swin_patch_size * 2 ** (stages - 1)
        if self.image_size % stride:
            raise GresError(f"config: image_size {self.image_size} must be a multiple of {stride}")
        if self.pooling not in ("mean", "cls"):
            raise GresError(f"config: pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if self.language_gate not in LANGUAGE_GATES:
            raise GresError(
                f"config: language_gate must be one of {', '.join(LANGUAGE_GATES)}, "
                f"not {self.language_gate!r}"
            )
        if self.experts < 1:
            raise GresError("config: experts (K) must be >= 1")

    @property
    def stage_dims(self) -> list[int]:
        """Channel width of each encoder stage (Swin doubles it at each stage)."""
        return [self.swin_embed_dim * 2**i for i in range(len(self.swin_depths))]

    @property
    def fusion_dims(self) -> list[int]:
        """PWAM key/value width per stage: the stage's own width (LAVT) when `fusion_dim` is
        None, else min(stage width, fusion_dim)."""
        if self.fusion_dim is None:
            return self.stage_dims
        return [min(d, self.fusion_dim) for d in self.stage_dims]

    @property
    def vision_dim(self) -> int:
        """C_v, the width of V_n."""
        return self.stage_dims[self.query_stage]

    def to_dict(self) -> dict[str, Any]:
        d = {"model_type": MODEL_TYPE, **asdict(self)}
        d["swin_depths"] = list(self.swin_depths)
        d["swin_num_heads"] = list(self.swin_num_heads)
        return d

    @classmethod
    def from_folder(cls, folder: Path) -> GRSerConfig:
        """The config.json of a GRSer folder (resolved), as loading it reads it: ModelLoadError
        when it lacks the text encoder's config."""
        from gres_cli.model import hub

        config = cls.from_dict(hub.read_config(folder))
        if config.text_config is None:
            raise hub.ModelLoadError(f"{folder}: config.json lacks text_config")
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GRSerConfig:
        data = dict(data)
        kind = data.pop("model_type", MODEL_TYPE)  # absent in folders written before backends
        if kind != MODEL_TYPE:
            raise GresError(f"config: model_type {kind!r} is not a GRSer")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GresError(f"config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GRSerConfig:
        """A named preset (see PRESETS), with optional field overrides."""
        if name not in PRESETS:
            raise GresError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})


#: Named sizes. grser-base follows the paper: LAVT's Swin-B (ImageNet-22K, 384 px, window 12)
#: and BERT-base at 480 px; decoder width 512 as LAVT. grser-tiny is a CPU-fast model for tests,
#: demos and the shipped demo model (about 2 M parameters, 96 px).
PRESETS: dict[str, dict[str, Any]] = {
    "grser-tiny": {
        "image_size": 96,
        "swin_embed_dim": 32,
        "swin_depths": [1, 1, 2, 1],
        "swin_num_heads": [1, 2, 4, 8],
        "swin_window_size": 6,
        "query_stage": 1,
        "embed_dim": 64,
        "fusion_dim": 64,
        "decoder_dim": 32,
        "experts": 4,
        "text_config": {
            "model_type": "bert",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
        },
    },
    "grser-base": {
        "image_size": 480,
        "swin_embed_dim": 128,
        "swin_depths": [2, 2, 18, 2],
        "swin_num_heads": [4, 8, 16, 32],
        "swin_window_size": 12,
        "swin_drop_path": 0.3,
        "swin_pretrained": "swin_base_patch4_window12_384.ms_in22k",
        "text_model": "bert-base-uncased",
        "query_stage": 2,
        "embed_dim": 256,
        "fusion_dim": None,
        "language_gate": "lavt-open",
        "decoder_dim": 512,
        "experts": 8,
    },
}
