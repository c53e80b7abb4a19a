"""The ONNX folder of a CLIPSeg export: the contract between `gres model export` (writes it,
with torch and transformers) and its onnxruntime backend (`gres_cli.backends.clipseg_onnx`,
reads it with numpy, Pillow and `tokenizers` alone). Constants only, torch-free.

    OUT/config.json    "model_type": MODEL_TYPE; "image_size" (S), "max_tokens" (the text
                       model's positions: an expression is truncated to them), "experts",
                       "group_weight", "margin" (the group rule's settings: a gres-backend
                       folder's when one was exported, else the backend's defaults),
                       "image_processor" (the numpy twin's settings,
                       `gres_cli.model.image_processor.ImageProcessorTwin.to_dict`),
                       "clipseg" (the checkpoint's own config.json), and
                       "onnx": {"opset", "onnxruntime", "torch", "transformers", "graphs",
                       "max_abs_error": {graph: float}, "source": {...}}
    OUT/tokenizer.json (+ tokenizer_config.json, vocab.json, merges.txt ...) the CLIP tokenizer
    OUT/text.onnx      input_ids, attention_mask  int64 [1, L] (L dynamic, <= max_tokens; no
                       padding: the expression alone, as the torch backend tokenizes it)
                       -> conditional  float32 [1, D]   CLIPSeg's conditional embedding
    OUT/image.onnx     pixel_values float32 [B, 3, S, S] (the processor's output), conditional
                       [1, D] (applied to all B)
                       -> mask_logits float32 [B, S, S]  the decoder's logits
                          score       float32 [B]        b_n = max sigmoid(mask_logits)
                          deep_tokens float32 [B, T, C]  the vision transformer's tokens after
                                                         the deepest layer the decoder reads
                                                         ("clipseg".extract_layers)
    OUT/region.onnx    deep_tokens, mask_logits of B images
                       -> embedding   float32 [B, C]     e_n: the vision transformer's layers
                                                         past the decoder's, its post-layernorm,
                                                         the patch tokens pooled under
                                                         sigmoid(mask_logits), unit length
                       Only the group step reads e_n: a lone image (one in its group, or
                       --no-group) skips this graph, and with it those layers.
    OUT/README.md      model card
The group rule (experts, prototype, radius, d_pos, d_neg) runs in numpy over score and
embedding (`gres_cli.backends.group_rule`), as the torch backend runs it in torch.
"""

from __future__ import annotations

MODEL_TYPE = "clipseg-onnx"
CONFIG_KEY = "onnx"

TEXT, IMAGE, REGION = "text", "image", "region"
GRAPH_FILES = {TEXT: "text.onnx", IMAGE: "image.onnx", REGION: "region.onnx"}

TEXT_INPUTS = ("input_ids", "attention_mask")
CONDITIONAL = "conditional"
PIXELS = "pixel_values"
IMAGE_INPUTS = (PIXELS, CONDITIONAL)
MASK_LOGITS, SCORE, DEEP_TOKENS = "mask_logits", "score", "deep_tokens"
IMAGE_OUTPUTS = (MASK_LOGITS, SCORE, DEEP_TOKENS)
REGION_INPUTS = (DEEP_TOKENS, MASK_LOGITS)
EMBEDDING = "embedding"
REGION_OUTPUTS = (EMBEDDING,)
#: the inputs each graph declares (the runtime refuses a config.json naming other graphs)
GRAPH_INPUTS = {TEXT: TEXT_INPUTS, IMAGE: IMAGE_INPUTS, REGION: REGION_INPUTS}
