"""CLIPSeg (Lüddecke & Ecker, CVPR 2022) through transformers, with the group rule on top.

`CIDAS/clipseg-rd64-refined` (Apache-2.0, not gated, 352 px, ~150 M parameters) is gres's
default model: the backend practical on a CPU. CLIPSeg has no presence output; its score b_n
is the highest pixel probability, so at the default m = 0 (t = 0.5) the backend alone calls an
image present exactly when its mask at the default --threshold 0.5 is not empty.

Per image: CLIP's vision transformer reads the 352 x 352 image (the library's own image
processor, run in the loader's workers), the expression is encoded once per job
(`get_conditional_embeddings`), the decoder gives 352 x 352 logits; the region embedding pools
the vision transformer's last patch tokens (after its post-layernorm) under sigmoid(logits).
Masks: sigmoid, bilinear to the original size, > --threshold (the library's usage).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from gres_cli.backends.openvocab import BackendOutput, OpenVocabModel, ProcessImage

MODEL_TYPE = "clipseg"
DEFAULT_CHECKPOINT = "CIDAS/clipseg-rd64-refined"


class CLIPSegBackend(OpenVocabModel):
    kind = MODEL_TYPE
    threshold = 0.5

    def __init__(self, folder: Path, checkpoint: str, **settings: Any) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        super().__init__(checkpoint, **settings)
        self.processor = CLIPSegProcessor.from_pretrained(str(folder), local_files_only=True)
        self.net = CLIPSegForImageSegmentation.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        ).eval()
        size = self.processor.image_processor.size
        self.input_size = int(size.get("height") or size.get("shortest_edge") or 352)

    @classmethod
    def export_onnx(
        cls, folder: Path, checkpoint: str, revision: str | None, out: Path, opset: int,
        overwrite: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """`gres model export`: two graphs and the numpy twin of the image processor
        (gres_cli.backends.clipseg_export)."""
        from gres_cli.backends.clipseg_export import export_clipseg_onnx

        return export_clipseg_onnx(folder, checkpoint, revision, out, opset, overwrite)

    def preparer(self) -> Callable[[Image.Image], Tensor]:
        return ProcessImage(self.processor.image_processor)

    def encode_text(self, expression: str) -> Tensor:
        """The conditional embedding (1 x projection_dim), once per job."""
        tokenizer = self.processor.tokenizer
        positions = self.net.config.text_config.max_position_embeddings
        length = self.text_length(tokenizer, expression, positions)
        tokens = tokenizer(
            [expression], padding=True, truncation=True, max_length=length, return_tensors="pt"
        ).to(self.net.device)
        return self.net.get_conditional_embeddings(
            batch_size=1, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )

    def forward(self, pixels: Tensor, text: Tensor) -> BackendOutput:
        logits, vision = self.decode(pixels, text)
        prob = torch.sigmoid(logits.float())
        features = self.region_features(vision.last_hidden_state)
        return BackendOutput(logits, best_pixel(prob), features, prob)

    def decode(self, pixels: Tensor, text: Tensor) -> tuple[Tensor, Any]:
        """Mask logits (M x S x S) and the vision transformer's output: `last_hidden_state`,
        and `hidden_states` (its input, then each layer's output; transformers keeps only
        those of `config.extract_layers`, the layers the decoder reads, the rest None)."""
        m = pixels.shape[0]
        out = self.net(pixel_values=pixels, conditional_embeddings=text.expand(m, -1))
        logits = out.logits.reshape(m, *out.logits.shape[-2:])  # one image: kept as a batch
        return logits, out.vision_model_output

    def region_features(self, last_hidden: Tensor) -> Tensor:
        """The vision transformer's last patch tokens, after its post-layernorm, as a grid
        (M x C x h' x w'): what the region embedding pools."""
        tokens = self.net.clip.vision_model.post_layernorm(last_hidden[:, 1:])
        side = int(tokens.shape[1] ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


def best_pixel(prob: Tensor) -> Tensor:
    """b_n: the highest pixel probability of each image (M x S x S -> M)."""
    return prob.flatten(1).amax(1)
