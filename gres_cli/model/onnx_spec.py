"""The ONNX model folder: the contract between `gres model export` (writes it, with torch) and
the onnxruntime backend (reads it, without torch). Constants only: importing this module imports
neither torch nor onnxruntime.

    OUT/config.json     GRSerConfig.to_dict() with "model_type": MODEL_TYPE, plus
                        "onnx": {"opset", "onnxruntime", "torch", "graphs": GRAPH_FILES,
                                 "max_abs_error": {graph: float}}
    OUT/tokenizer.json  (+ tokenizer_config.json ...) the tokenizer, as transformers saves it
    OUT/text.onnx       one expression -> the text features W, mask, L, L_anti
    OUT/encode.onnx     pass 1: B images + text features -> F_1..F_S, M_l, p, s_pos, s_neg
    OUT/query.onnx      pass 2: F_1..F_S of B images + L, L_anti + K expert slots -> mask logits,
                        d_pos, d_neg
    OUT/README.md       model card

Shapes (B dynamic; everything else fixed by the config: T = max_tokens, S = image_size,
C_l = text width, C_v = width of the query stage, K = experts, h x w = the query stage's map,
S_i = S / (patch_size * 2**i) the side of stage i's map):

text.onnx
    input_ids, attention_mask   int64 [2, T]: row 0 the expression, row 1 ANTI_PREFIX +
                                expression, each tokenized with padding to T and truncation at T
                                (as `TextEncoder.tokenize`: padding="max_length", truncation=True)
    -> words       float32 [1, T, C_l]   W of the expression
       word_mask   int64   [1, T]        its attention mask (row 0 of the input)
       sentence    float32 [1, C_l]      L
       anti        float32 [1, C_l]      L_anti
encode.onnx
    pixel_values   float32 [B, 3, S, S]  ImageNet-normalised (`gres_cli.model.preprocess`)
    words, word_mask, sentence, anti     as text.onnx gives them (batch 1, applied to all B)
    -> map_0 .. map_{stages-1}  float32 [B, C_i, S_i, S_i]   the fused maps F_1..F_4
       language_heatmap         float32 [B, h, w]            M_l
       prototypes               float32 [B, C_v]             p_n
       s_pos, s_neg             float32 [B]                  hierarchizer scores
query.onnx
    map_0 .. map_{stages-1}     as encode.onnx gives them, for the B images of a batch
    sentence, anti              batch 1, as text.onnx gives them
    experts        float32 [K, C_v]  the chosen prototypes, most reliable first, in slots 0..K'-1;
                                     slots K'..K-1 hold anything (zeros): they are masked out
    expert_valid   float32 [K]       1.0 for slots 0..K'-1, 0.0 for the padding slots
    -> mask_logits float32 [B, S, S]  at the model's input size (sigmoid -> probability)
       d_pos, d_neg float32 [B]       present iff d_pos + m < d_neg
"""

from __future__ import annotations

#: `model_type` of an ONNX model folder's config.json
MODEL_TYPE = "grser-onnx"
#: the config.json key holding the export's facts (opset, versions, graphs, measured errors)
CONFIG_KEY = "onnx"
#: the opset `gres model export` uses unless told otherwise
DEFAULT_OPSET = 17

TEXT, ENCODE, QUERY = "text", "encode", "query"
#: graph -> file name inside the folder (also written to config.json["onnx"]["graphs"])
GRAPH_FILES = {TEXT: "text.onnx", ENCODE: "encode.onnx", QUERY: "query.onnx"}

#: the anti-expression is the expression with this prefix (GRSer's `<no>` token and a space)
ANTI_PREFIX = "<no> "

TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_FEATURES = ("words", "word_mask", "sentence", "anti")
PIXELS = "pixel_values"
LANGUAGE_HEATMAP, PROTOTYPES, S_POS, S_NEG = "language_heatmap", "prototypes", "s_pos", "s_neg"
EXPERTS, EXPERT_VALID = "experts", "expert_valid"
MASK_LOGITS, D_POS, D_NEG = "mask_logits", "d_pos", "d_neg"

#: the pass-2 inputs that come from text.onnx (pass 2 needs no word features)
QUERY_TEXT = ("sentence", "anti")
QUERY_OUTPUTS = (MASK_LOGITS, D_POS, D_NEG)


def map_names(stages: int) -> tuple[str, ...]:
    """Names of the fused maps F_1..F_stages (`len(config["swin_depths"])` stages)."""
    return tuple(f"map_{i}" for i in range(stages))


def encode_inputs() -> tuple[str, ...]:
    return (PIXELS, *TEXT_FEATURES)


def encode_outputs(stages: int) -> tuple[str, ...]:
    return (*map_names(stages), LANGUAGE_HEATMAP, PROTOTYPES, S_POS, S_NEG)


def query_inputs(stages: int) -> tuple[str, ...]:
    return (*map_names(stages), *QUERY_TEXT, EXPERTS, EXPERT_VALID)
