"""An ONNX export of SAM 3 (`gres model export SAM3 OUT --format onnx`) behind the engine's model
protocol, on onnxruntime: numpy, Pillow and `tokenizers`, no torch, no transformers.

The folder's contract is gres_cli.model.sam3_onnx_spec. The runtime is CLIPSeg's export's
(`clipseg_onnx`: settings, image processor twin, group rule, records) but for two steps, each
computing what the torch backend (`sam3.Sam3Backend`) computes:
  text     the expression's ids padded to 32 (`tokenizers`) -> text.onnx -> the projected
           token features and their mask, once per job;
  pass 1   forward.onnx -> the best query's mask logits, the score b_n and the FPN features;
           the region embedding e_n pooled from them in numpy (`group_rule.region_embedding_array`,
           `openvocab.region_embedding`'s twin: the TorchScript exporter cannot put that
           pooling in the graph).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gres_cli.backends.clipseg_onnx import CLIPSegOnnxModel, RegionItemArray
from gres_cli.backends.group_rule import region_embedding_array
from gres_cli.backends.protocol import FirstPass
from gres_cli.model import sam3_onnx_spec as spec


class Sam3OnnxModel(CLIPSegOnnxModel):
    """A SAM 3 ONNX folder as a `GroupModel` (runtime "numpy")."""

    kind = spec.MODEL_TYPE
    title = "SAM 3 ONNX export"
    onnx_spec: ClassVar[Any] = spec
    pad_tokens = True  # as Sam3Processor: every expression padded to the 32 positions

    def encode_text(self, expression: str) -> tuple[np.ndarray, np.ndarray]:
        """(token features 1 x 32 x D, attention mask 1 x 32), once per job."""
        ids, mask = self.tokens(expression)
        feeds = dict(zip(spec.TEXT_INPUTS, (ids, mask), strict=True))
        return self.sessions[spec.TEXT].run(None, feeds)[0], mask

    def first_pass(
        self, pixels: np.ndarray, text: tuple[np.ndarray, np.ndarray], alone: bool = False
    ) -> FirstPass:
        features, mask = text
        inputs = (pixels.astype(np.float32, copy=False), features, mask)
        feeds = dict(zip(spec.IMAGE_INPUTS, inputs, strict=True))
        logits, score, maps = self.sessions[spec.IMAGE].run(None, feeds)
        emb = region_embedding_array(maps, logits)
        items = [RegionItemArray(logits[i], score[i], emb[i]) for i in range(len(score))]
        return FirstPass({"score": score, "embedding": emb}, items)
