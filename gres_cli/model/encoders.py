"""The two encoders of GRSer: BERT for the expression, a LAVT-style Swin for the images.

Text: word features W (B x T x C_l) and the sentence feature L (B x C_l); the anti-expression
"<no> " + text gives L_anti the same way (the `<no>` token is added to the vocabulary and its
embedding trains with the rest).

Images: a timm Swin run stage by stage; after each stage LAVT's pixel-word attention module
(PWAM) fuses the words into the pixels, and a language gate adds the fused map back:
    F_i = PWAM(X_i, W)                                (multi-scale map passed to the decoder)
    X_i <- X_i + tanh(Linear(ReLU(Linear(F_i)))) * F_i   (input of stage i + 1)
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gres_cli.model.config import LANGUAGE_GATES, GRSerConfig

NEGATION_TOKEN = "<no>"

# Words the built-in tiny vocabulary always covers (the synthetic dataset's language and common
# referring-expression words); anything else falls back to characters.
_BASE_WORDS = (
    "the a an of on in at to and with without not no is are this that one two left right top "
    "bottom middle center centre upper lower near far next behind front above below small "
    "large big tiny little huge medium red green blue yellow purple orange white black gray "
    "grey pink brown cyan magenta circle square triangle star cross ring diamond rectangle "
    "object thing shape person man woman dog cat car umbrella"
).split()


def build_tiny_tokenizer(words: list[str] | None = None) -> Any:
    """A WordPiece tokenizer built in code (no file): special tokens, characters, word list.

    Uses `grd_tools.synth.VOCABULARY` when that module provides it, so the synthetic dataset's
    words are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if words is None:
        words = list(_BASE_WORDS)
        try:
            from grd_tools.synth import VOCABULARY

            words += [w.lower() for w in VOCABULARY]
        except (ImportError, AttributeError):
            pass
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab: dict[str, int] = {}
    for token in special + chars + pieces + sorted(set(words)):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@dataclass
class TextFeatures:
    """Encoded expressions, computed once and reused across image batches.

    words: B x T x C_l word features W; word_mask: B x T (1 = real token);
    sentence: B x C_l, L;  anti: B x C_l, L_anti (from "<no> " + text).
    """

    words: Tensor
    word_mask: Tensor
    sentence: Tensor
    anti: Tensor

    def __len__(self) -> int:
        return self.words.shape[0]

    def expand(self, n: int) -> TextFeatures:
        """Repeat a single expression n times along the batch."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand {len(self)} expressions to {n}")
        return TextFeatures(*(t.expand(n, *t.shape[1:]) for t in self._tensors()))

    def index(self, i: Tensor) -> TextFeatures:
        return TextFeatures(*(t[i] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.words, self.word_mask, self.sentence, self.anti)


class TextEncoder(nn.Module):
    """BERT-family encoder: texts -> (W, L) and "<no> " + texts -> L_anti."""

    def __init__(self, config: GRSerConfig, tokenizer: Any | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.max_tokens = config.max_tokens
        self.pooling = config.pooling
        if config.text_config is None and config.text_model:
            # A fresh model from a pretrained encoder (Hub id or folder); HF_HUB_OFFLINE honoured.
            local = _offline()
            self.bert = AutoModel.from_pretrained(config.text_model, local_files_only=local)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(config.text_model, local_files_only=local)
            config.text_config = _plain_text_config(self.bert.config.to_dict())
        else:
            if tokenizer is None:
                tokenizer = build_tiny_tokenizer()
            text_config = dict(config.text_config or {})
            model_type = text_config.pop("model_type", "bert")
            if NEGATION_TOKEN not in tokenizer.get_vocab():
                tokenizer.add_tokens([NEGATION_TOKEN])
            text_config.setdefault("vocab_size", len(tokenizer))
            self.bert = AutoModel.from_config(AutoConfig.for_model(model_type, **text_config))
            config.text_config = _plain_text_config(self.bert.config.to_dict())
        if NEGATION_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([NEGATION_TOKEN])
        if self.bert.get_input_embeddings().num_embeddings < len(tokenizer):
            self.bert.resize_token_embeddings(len(tokenizer))
            config.text_config["vocab_size"] = len(tokenizer)
        self.tokenizer = tokenizer
        self.dim = self.bert.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        device = next(self.parameters()).device
        enc = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self.features(enc["input_ids"], enc["attention_mask"])

    def features(self, input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids and attention mask (B x T) -> (W: B x T x C_l, the mask, L: B x C_l)."""
        words = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            sentence = words[:, 0]
        else:
            m = mask.unsqueeze(-1).to(words.dtype)
            sentence = (words * m).sum(1) / m.sum(1).clamp(min=1.0)
        return words, mask, sentence

    def forward(self, texts: list[str]) -> TextFeatures:
        words, mask, sentence = self._encode(texts)
        _, _, anti = self._encode([f"{NEGATION_TOKEN} {t}" for t in texts])
        return TextFeatures(words, mask, sentence, anti)


def _plain_text_config(d: dict[str, Any]) -> dict[str, Any]:
    """The fields of a transformers config that rebuild the architecture (JSON-safe)."""
    keep = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
    )
    return {k: d[k] for k in keep if k in d}


def coordinates(x: Tensor) -> Tensor:
    """B x 2 x H x W maps of the normalised column and row, in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # 2 x H x W
    return grid.unsqueeze(0).expand(b, -1, -1, -1)


class PWAM(nn.Module):
    """LAVT's pixel-word attention module on one stage's map.

    X: B x C x H x W pixels; W: B x T x C_l words (padding masked); P: 2 coordinate maps.
        V = GELU(conv1x1([X, P]))
        A = softmax_T(q([X, P]) . k(W) / sqrt(d)) v(W)       (pixels attend over words)
        F = GELU(conv1x1(V * out(A)))
    P is optional (`fusion_coords`, off by default as in LAVT): Swin has only window-relative
    positions, so words like "left" or "bottom" have little to match; see docs/model.md for why
    it stays off.
    """

    def __init__(self, dim: int, text_dim: int, key_dim: int, coords: bool = True) -> None:
        super().__init__()
        self.coords = coords
        cin = dim + 2 if coords else dim
        self.vis = nn.Sequential(nn.Conv2d(cin, dim, 1), nn.GELU())
        self.query = nn.Sequential(nn.Conv2d(cin, key_dim, 1), nn.InstanceNorm2d(key_dim))
        self.key = nn.Linear(text_dim, key_dim)
        self.value = nn.Linear(text_dim, key_dim)
        self.out = nn.Sequential(nn.Conv2d(key_dim, dim, 1), nn.InstanceNorm2d(dim))
        self.project = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU())
        self.scale = key_dim**-0.5

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        b, _, h, w = x.shape
        pixels = torch.cat([x, coordinates(x)], dim=1) if self.coords else x
        q = self.query(pixels).flatten(2).transpose(1, 2)  # B x HW x d
        k, v = self.key(words), self.value(words)  # B x T x d
        logits = torch.bmm(q, k.transpose(1, 2)) * self.scale  # B x HW x T
        logits = logits.masked_fill(word_mask[:, None, :] == 0, torch.finfo(logits.dtype).min)
        att = torch.bmm(logits.softmax(-1), v)  # B x HW x d
        lang = self.out(att.transpose(1, 2).reshape(b, -1, h, w))
        return self.project(self.vis(pixels) * lang)


class LanguageGate(nn.Module):
    """gamma = tanh(W_2 ReLU(W_1 F)), per pixel and channel (LAVT's language gate).

    `kind` sets the second Linear's bias and the initialisation:
    - "lavt": LAVT's exactly: no bias, W_1 = W_2 = 0. The gate starts closed (gamma = 0) and
      stays closed: dL/dW_2 = g relu(W_1 F)^T = 0 and dL/dW_1 = (W_2^T g * relu') F^T = 0, so
      the Swin stream never receives the language; only the decoder sees the fused maps.
    - "lavt-open": no bias, W_2 = 0, W_1 random: starts closed (a pretrained Swin starts
      undisturbed) and can open, since dL/dW_2 = g relu(W_1 F)^T is not zero.
    - "random": a bias on W_2 and PyTorch's default initialisation (open from step 0; the
      shipped demo model's gate).
    """

    def __init__(self, dim: int, kind: str = "random") -> None:
        super().__init__()
        if kind not in LANGUAGE_GATES:
            raise ValueError(f"language gate {kind!r}: choose from {', '.join(LANGUAGE_GATES)}")
        first = nn.Linear(dim, dim, bias=False)  # built first: the random draws stay as before
        second = nn.Linear(dim, dim, bias=kind == "random")
        self.net = nn.Sequential(first, nn.ReLU(), second)
        if kind in ("lavt", "lavt-open"):
            nn.init.zeros_(second.weight)
        if kind == "lavt":
            nn.init.zeros_(first.weight)

    def forward(self, fused: Tensor) -> Tensor:  # B x H x W x C (channels last)
        return torch.tanh(self.net(fused))


class ImageEncoder(nn.Module):
    """LAVT-style encoder: timm Swin stages with word fusion after each stage.

    Returns the list of fused maps F_1..F_4 (B x C_i x H/s_i x W/s_i, s = 4, 8, 16, 32), each
    after a LayerNorm, as LAVT passes them to its decoder.
    """

    def __init__(self, config: GRSerConfig, text_dim: int) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.swin = SwinTransformer(
            img_size=config.image_size,
            patch_size=config.swin_patch_size,
            embed_dim=config.swin_embed_dim,
            depths=config.swin_depths,
            num_heads=config.swin_num_heads,
            window_size=config.swin_window_size,
            drop_path_rate=config.swin_drop_path,
            num_classes=0,
        )
        # The classification head's norm is not used: each stage has its own norm below.
        self.swin.norm = nn.Identity()
        dims = config.stage_dims
        self.fusions = nn.ModuleList(
            PWAM(d, text_dim, key_dim, config.fusion_coords)
            for d, key_dim in zip(dims, config.fusion_dims, strict=True)
        )
        # the last stage's gated residual would feed no further stage: LAVT's is unused, so omitted
        self.gates = nn.ModuleList(LanguageGate(d, config.language_gate) for d in dims[:-1])
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def load_timm_weights(self, name: str) -> None:
        """Initialise the Swin from a timm checkpoint (needs the Hub or its cache)."""
        import timm

        source = timm.create_model(name, pretrained=True, num_classes=0)
        missing, _ = self.swin.load_state_dict(source.state_dict(), strict=False)
        if [k for k in missing if not k.startswith("norm")]:
            raise RuntimeError(f"timm weights {name} do not fit: missing {missing[:5]}")

    def forward(self, pixel_values: Tensor, text: TextFeatures) -> list[Tensor]:
        x = self.swin.patch_embed(pixel_values)  # B x H x W x C (timm Swin is channels-last)
        maps = []
        for i, (stage, fuse, norm) in enumerate(
            zip(self.swin.layers, self.fusions, self.norms, strict=True)
        ):
            x = stage(x)
            fused = fuse(x.permute(0, 3, 1, 2), text.words, text.word_mask)
            fused = fused.permute(0, 2, 3, 1)
            if i < len(self.gates):
                x = x + self.gates[i](fused) * fused
            maps.append(norm(fused).permute(0, 3, 1, 2).contiguous())
        return maps
