"""GRSer behind the engine's model protocol (gres_cli.backends.protocol).

pass 1: the language-fused encoder output, prototypes p_n and hierarchizer scores s_pos, s_neg;
group:  the top-K experts of the whole group in hierarchizer order;
pass 2: every image decoded against those K prototypes: mask logits, d_pos, d_neg.
Without the group step (`group=False`: the single-image baseline), each image is its own group,
its own only expert.

torch is imported where a GRSer is loaded or run, not with this module: a Ray driver reads a
GRSer's facts off its config (`facts`) on a head node that need not hold torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from gres_cli.backends.protocol import Description, FirstPass, SecondPass, WithoutExtras
from gres_cli.backends.registry import ModelFacts, ModelKind
from gres_cli.model.config import GRSerConfig
from gres_cli.model.kinds import GRSER
from gres_cli.model.preprocess import image_to_pixels, normalize, probability_to_original

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from gres_cli.model.encoders import TextFeatures
    from gres_cli.model.grser import GRSer


class GRSerAdapter(WithoutExtras, ModelKind):
    """A loaded GRSer (`net`) as the engine's `GroupModel`."""

    kind = GRSER
    runtime = "torch"
    group_weight = None  # GRSer's group step is learnt, not weighed

    def __init__(self, net: GRSer, group: bool = True) -> None:
        self.net = net.eval()
        self.group = group
        self.input_size = net.config.image_size
        self.margin = net.config.margin
        self.experts = net.config.experts
        self.max_experts = net.config.experts  # the decoder takes K heatmap channels
        self.config = net.config.to_dict()

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
    ) -> GRSerAdapter:
        """The GRSer in `folder` (resolved already: `checkpoint` and `revision` named it)."""
        from gres_cli.model.grser import GRSer

        return cls(GRSer.from_pretrained(folder), group=group)

    @classmethod
    def facts(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
    ) -> ModelFacts:
        """K and m of config.json (as `__init__` reads them off the loaded config), no torch."""
        config = GRSerConfig.from_folder(folder)
        return ModelFacts(config.experts, config.experts, config.margin, cls.group_weight, group)

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        """`gres model push`: the folder loads as a GRSer."""
        from gres_cli.model.grser import GRSer

        GRSer.from_pretrained(folder)

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """`gres model export`: gres_cli.model.export."""
        from gres_cli.model.export import export_onnx

        return export_onnx(checkpoint, out, opset=opset, revision=revision, overwrite=overwrite)

    def describe(self) -> Description:
        c, params = self.net.config, self.net.num_parameters()
        rows = [
            ("preset", str(c.name)),
            ("input size", f"{c.image_size} px"),
            ("Swin", f"embed {c.swin_embed_dim}, depths {list(c.swin_depths)}"),
            ("text encoder", f"{c.text_config.get('model_type')} {self.net.text_encoder.dim}-d"),
            ("experts K", str(c.experts)),
            ("default margin m", str(c.margin)),
            *((f"parameters: {part}", f"{n:,}") for part, n in params.items()),
        ]
        return Description("GRSer", rows, {"config": c.to_dict(), "parameters": params})

    def to(self, device: torch.device) -> GRSerAdapter:
        self.net = self.net.to(device).eval()
        return self

    def preparer(self) -> Callable[[Image.Image], Tensor]:
        return functools.partial(image_to_pixels, size=self.input_size)

    def model_input(self, prepared: Tensor) -> Tensor:
        return normalize(prepared)

    def encode_text(self, expression: str) -> TextFeatures:
        return self.net.encode_text([expression])

    def first_pass(self, pixels: Tensor, text: TextFeatures, alone: bool = False) -> FirstPass:
        scores, encoded = self.net.first_pass(pixels, text)
        summary = {"prototypes": scores.prototypes, "s_pos": scores.s_pos, "s_neg": scores.s_neg}
        return FirstPass(
            {k: v.float() for k, v in summary.items()},
            [encoded.item(j) for j in range(pixels.shape[0])],
        )

    def choose_experts(self, summary: dict[str, Tensor], k: int) -> Tensor:
        """The K' x C_v prototypes of the top-k experts, most reliable first."""
        from gres_cli.model.grser import ExpertScores

        scores = ExpertScores(summary["prototypes"], summary["s_pos"], summary["s_neg"])
        return self.net.top_experts(scores, k)

    def second_pass(
        self, pixels: Tensor | None, text: TextFeatures, experts: Tensor, items: list[Any] | None
    ) -> SecondPass:
        from gres_cli.model.grser import Encoded

        encoded = Encoded.cat(items) if items else None
        d_pos, d_neg, logits = self.net.second_pass(pixels, text, experts, encoded, self.group)
        return SecondPass(d_pos.float(), d_neg.float(), logits)

    def probability_at(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        return probability_to_original(mask_logits, size)
