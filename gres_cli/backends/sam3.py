"""SAM 3 (Meta, 2025) through transformers, with the group rule on top.

`facebook/sam3` (SAM licence, gated on the Hub; 1008 px, ~840 M parameters) segments every
instance of a short noun phrase and says itself whether the phrase is in the image at all: a
presence head (`presence_logits`) that scales the scores of its 200 object queries. It is a GPU
backend: one full-size image takes minutes on a CPU. A `sam3_video` config (the one the Hub repo
may ship) loads the same way: `Sam3Model` takes its image detector from it.

Per image: the checkpoint's own image processor (a plain resize to 1008 x 1008, run in the
loader's workers); the expression is tokenised as `Sam3Processor` does (padded to 32 tokens;
longer ones truncated, the text encoder has 32 positions) and encoded once per job
(`get_text_features`), then repeated over the image batch (the model does not broadcast it).
The vision encoder runs first, so that its feature maps are ours too:
    s_q   = sigmoid(pred_logits_q) * sigmoid(presence_logit): query q's score, exactly as the
            library's `post_process_instance_segmentation` computes it
    b_n   = max_q s_q; the best query q* (the first one on ties)
    R_n   = sigmoid(pred_masks_q*) (288 x 288 at full size)
    f_n   = the FPN level the DETR encoder reads (stride 14: 72 x 72 x 256 at full size), the
            image's own features, before the text meets them
Masks: sigmoid of q*'s mask logits, bilinear to the original size, > --threshold: what the
library's post-processing gives for that query at mask_threshold = --threshold.
t = 0.5 (SAM 3's own confidence threshold; `post_process_instance_segmentation` defaults to
0.3), so the default m = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from gres_cli.backends.openvocab import BackendOutput, OpenVocabModel, ProcessImage

MODEL_TYPE = "sam3"
#: the text encoder's positions; `Sam3Processor` pads every expression to this length
TEXT_TOKENS = 32


@dataclass
class Sam3Text:
    """One expression, encoded: the projected token features (1 x 32 x D) and their mask."""

    features: Tensor
    attention_mask: Tensor


class Sam3Backend(OpenVocabModel):
    kind = MODEL_TYPE
    threshold = 0.5

    def __init__(self, folder: Path, checkpoint: str, **settings: Any) -> None:
        from transformers import Sam3Model, Sam3Processor

        super().__init__(checkpoint, **settings)
        self.processor = Sam3Processor.from_pretrained(str(folder), local_files_only=True)
        self.net = Sam3Model.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        ).eval()
        self.input_size = int(self.processor.image_processor.size["height"])

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """`gres model export`: two graphs and the numpy twin of the image processor
        (gres_cli.backends.sam3_export)."""
        from gres_cli.backends.sam3_export import export_sam3_onnx

        return export_sam3_onnx(folder, checkpoint, revision, out, opset, overwrite)

    def preparer(self) -> Callable[[Image.Image], Tensor]:
        return ProcessImage(self.processor.image_processor)

    def encode_text(self, expression: str) -> Sam3Text:
        tokenizer = self.processor.tokenizer
        tokens = tokenizer(
            [expression],
            padding="max_length",
            max_length=self.text_length(tokenizer, expression, TEXT_TOKENS),
            truncation=True,
            return_tensors="pt",
        ).to(self.net.device)
        encoded = self.net.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return Sam3Text(encoded.pooler_output, tokens["attention_mask"])

    def forward(self, pixels: Tensor, text: Sam3Text) -> BackendOutput:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        m = pixels.shape[0]
        vision = self.net.get_vision_features(pixel_values=pixels)
        out = self.net(
            vision_embeds=vision,
            text_embeds=BaseModelOutputWithPooling(pooler_output=text.features.expand(m, -1, -1)),
            attention_mask=text.attention_mask.expand(m, -1),
        )
        scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()  # M x Q
        best = scores.argmax(1)
        rows = torch.arange(m, device=best.device)
        mask_logits = out.pred_masks[rows, best]
        # the last FPN level is not used by the model; the one before it feeds the DETR encoder
        features = vision.fpn_hidden_states[:-1][-1]
        return BackendOutput(
            mask_logits, scores[rows, best].float(), features, mask_logits.float().sigmoid()
        )
