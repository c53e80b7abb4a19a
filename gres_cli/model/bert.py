"""BERT's encoder for inference, without importing transformers' modeling code.

`transformers.models.bert.modeling_bert` pulls in transformers' whole modeling stack (losses
that import scipy.optimize, torch._dynamo through the hub kernels, image utilities that import
torchvision): about half of `gres segment`'s start-up on a saved GRSer (docs/segment.md). A saved
GRSer's text encoder is a plain BERT whose weights all come from model.safetensors, so loading
one builds this module instead: the same parameter names (`embeddings.word_embeddings.weight`,
`encoder.layer.0.attention.self.query.weight`, ... `pooler.dense.weight`) and the same
arithmetic as transformers' BertModel in eval mode (word + token type + position embeddings,
LayerNorm; per layer scaled-dot-product self-attention with the padding masked, residual
LayerNorms, GELU feed-forward; dropout where transformers has it, in training mode). Tested equal
to transformers' BertModel on the same weights. Fresh models and `gres train` keep transformers'
BertModel (its initialisation, resizing, and the random streams an exact --resume replays).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# text_config fields (GRSerConfig.text_config) this module reproduces, with the values it needs
SUPPORTED = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
SIZES = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
}


def supports(text_config: dict[str, Any]) -> bool:
    """Whether `text_config` describes a BERT this module computes as transformers does (any
    field it does not know, e.g. relative positions or a decoder, leaves it to transformers)."""
    known = set(text_config) <= SIZES | set(SUPPORTED)
    return known and all(text_config.get(k, v) == v for k, v in SUPPORTED.items())


class _Embeddings(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(
            torch.zeros_like(input_ids)
        )  # one segment: token type 0, as transformers fills it in
        return self.dropout(self.LayerNorm(x + self.position_embeddings(positions)[None]))


class _Dense(nn.Module):
    """`dense`, dropout, `LayerNorm` of the sum with the residual: the names transformers
    saves."""

    def __init__(self, c: SimpleNamespace, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.dropout = c.attention_probs_dropout_prob
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, t, _ = x.shape

        def heads(y: Tensor) -> Tensor:  # B x heads x T x d
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return out.transpose(1, 2).reshape(b, t, -1)


class _Attention(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Dense(c, c.hidden_size, c.hidden_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Dense(c, c.intermediate_size, c.hidden_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):  # saved with every BertModel; GRSer pools the words itself
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class BertEncoder(nn.Module):
    """transformers' BertModel(config), for the calls TextEncoder makes:
    `bert(input_ids=..., attention_mask=...).last_hidden_state`."""

    def __init__(self, text_config: dict[str, Any]) -> None:
        super().__init__()
        if not supports(text_config):
            raise ValueError(f"not a plain BERT config: {text_config}")
        defaults = {"pad_token_id": 0, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
        defaults |= {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
        self.config = SimpleNamespace(**(defaults | dict(text_config)))
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Encoder(self.config)
        self.pooler = _Pooler(self.config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> SimpleNamespace:
        x = self.embeddings(input_ids)
        keep = attention_mask.bool()[:, None, None, :]  # B x 1 x 1 x T: padding never attended
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return SimpleNamespace(last_hidden_state=x)
