"""The ONNX folder of a SAM 3 export: the contract between `gres model export` (writes it, with
torch and transformers) and its onnxruntime backend (`gres_cli.backends.sam3_onnx`, reads it
with numpy, Pillow and `tokenizers` alone). Constants only, torch-free.

    OUT/config.json    "model_type": MODEL_TYPE; "image_size" (S), "max_tokens" (32: every
                       expression is padded to them, a longer one truncated), "experts",
                       "group_weight", "margin" (a gres-backend folder's when one was
                       exported, else the backend's defaults), "image_processor" (the numpy
                       twin's settings, `gres_cli.model.image_processor`), "sam3" (the
                       model's config), and "onnx": {"opset", "onnxruntime", "torch",
                       "transformers", "graphs", "max_abs_error": {graph: float}, "source"}
    OUT/tokenizer.json (+ tokenizer_config.json ...) the CLIP tokenizer
    OUT/text.onnx      input_ids, attention_mask  int64 [1, 32] (padded as Sam3Processor pads)
                       -> text_features  float32 [1, 32, D]  the projected token features
    OUT/forward.onnx   pixel_values float32 [B, 3, S, S] (the processor's output),
                       text_features [1, 32, D], attention_mask int64 [1, 32] (applied to all B)
                       -> mask_logits float32 [B, h, w]      the best query's mask logits
                          score       float32 [B]           b_n = max_q sigmoid(logit_q)
                                                            * sigmoid(presence)
                          features    float32 [B, C, h', w'] the FPN level the DETR encoder
                                                            reads
    OUT/README.md      model card
The region embedding e_n (the features pooled under sigmoid(mask_logits), unit length) and the
group rule run in numpy (`gres_cli.backends.group_rule`): the TorchScript exporter does not
translate the pooling (docs/onnx.md).
"""

from __future__ import annotations

MODEL_TYPE = "sam3-onnx"
CONFIG_KEY = "onnx"

TEXT, IMAGE = "text", "forward"
GRAPH_FILES = {TEXT: "text.onnx", IMAGE: "forward.onnx"}

TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_FEATURES = "text_features"
PIXELS = "pixel_values"
IMAGE_INPUTS = (PIXELS, TEXT_FEATURES, "attention_mask")
MASK_LOGITS, SCORE, FEATURES = "mask_logits", "score", "features"
IMAGE_OUTPUTS = (MASK_LOGITS, SCORE, FEATURES)
#: the inputs each graph declares (the runtime refuses a config.json naming other graphs)
GRAPH_INPUTS = {TEXT: TEXT_INPUTS, IMAGE: IMAGE_INPUTS}
#: what the self-check also compares: the runtime's numpy e_n against torch's
EMBEDDING = "embedding"
