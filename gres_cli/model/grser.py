"""GRSer (Grouped Referring Segmenter): composes the encoders, TQM, hierarchizer and decoder.

For one expression and a group of N images:
    W, L, L_anti      = TextEncoder(text), TextEncoder("<no> " + text)
    F_1..F_4          = ImageEncoder(x_n, W)               (LAVT: Swin + PWAM + gate)
    V_n               = F_q                                 (the query stage, config.query_stage)
    M_l, p_n          = TQM(V_n, L)
    o_1..o_K          = Hierarchizer(p, L, L_anti)          (top-K experts, most reliable first)
    M_v[n, o_k]       = cos(V_n, p_{o_k})
    logits, e_n       = Decoder(F, concat(V_n, M_v[n, o_1..o_K]))
    d_pos = ||mean e_n - phi_l(L)||,  d_neg = ||mean e_n - phi_l(L_anti)||
    present_n         = d_pos + m < d_neg
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import Tensor, nn

from gres_cli.model import hub
from gres_cli.model.card import model_card
from gres_cli.model.config import GRSerConfig
from gres_cli.model.decision import presence
from gres_cli.model.decoder import MaskDecoder
from gres_cli.model.encoders import ImageEncoder, TextEncoder, TextFeatures
from gres_cli.model.hierarchizer import HeatmapHierarchizer, expert_order
from gres_cli.model.preprocess import preprocess, probability_to_original
from gres_cli.model.tqm import TriphasicQueryModule


@dataclass
class ExpertScores:
    """Pass 1 over M images: prototypes p (M x C_v), s_pos and s_neg (M)."""

    prototypes: Tensor
    s_pos: Tensor
    s_neg: Tensor

    @classmethod
    def cat(cls, parts: list[ExpertScores]) -> ExpertScores:
        """Join the scores of consecutive batches."""
        return cls(
            torch.cat([p.prototypes for p in parts]),
            torch.cat([p.s_pos for p in parts]),
            torch.cat([p.s_neg for p in parts]),
        )


@dataclass
class Encoded:
    """The image side of M images for one text: fused maps F_1..F_4, M_l and prototypes p.

    The encoder does not depend on the experts, so pass 1's `Encoded` can serve pass 2."""

    maps: list[Tensor]  # F_i: M x C_i x H_i x W_i
    language_heatmap: Tensor  # M_l: M x h x w
    prototypes: Tensor  # p: M x C_v

    def item(self, i: int) -> Encoded:
        return Encoded([m[i : i + 1] for m in self.maps], self.language_heatmap[i : i + 1],
                       self.prototypes[i : i + 1])  # fmt: skip

    @property
    def nbytes(self) -> int:
        tensors = [*self.maps, self.language_heatmap, self.prototypes]
        return sum(t.numel() * t.element_size() for t in tensors)

    @classmethod
    def cat(cls, parts: list[Encoded]) -> Encoded:
        return cls(
            [torch.cat([p.maps[k] for p in parts]) for k in range(len(parts[0].maps))],
            torch.cat([p.language_heatmap for p in parts]),
            torch.cat([p.prototypes for p in parts]),
        )


@dataclass
class GRSerOutput:
    """Model outputs for B groups of N images (shapes in the field comments)."""

    mask_logits: Tensor  # B x N x H x W, one logit per pixel at input resolution
    d_pos: Tensor  # B x N
    d_neg: Tensor  # B x N
    heatmaps: Tensor  # B x N x K x h x w, ordered expert heatmaps
    language_heatmap: Tensor  # B x N x h x w, M_l
    embedding: Tensor  # B x N x D, emb(z_n)
    pixel_embedding: Tensor  # B x N x D x h x w, e_n; attention-pooled -> embedding
    text_pos: Tensor  # B x D, L in the shared space
    text_neg: Tensor  # B x D, L_anti in the shared space
    expert_order: Tensor  # B x K', indices into the group, most reliable first
    s_pos: Tensor  # B x N, ||phi_v(p_n) - phi_l(L)|| (hierarchizer; trained by a prototype loss)
    s_neg: Tensor  # B x N, ||phi_v(p_n) - phi_l(L_anti)||


@dataclass
class Prediction:
    """One image's answer. mask: bool H x W at the original size, all False when absent."""

    present: bool
    d_pos: float
    d_neg: float
    score: float  # d_neg - d_pos
    mask: np.ndarray
    probability: float  # mean foreground probability inside the mask (0 when absent)


def expert_slots(experts: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """K' <= k ordered experts (... x K' x C) in k fixed slots: (... x k x C, zeros after the
    K' real ones; ... x k validity, 1 for a real expert, 0 for padding). `valid` (... x K'
    bool) marks real experts that must not count (a padded image of a batch). The decoder takes
    exactly k heatmap channels; fixed slots keep pass 2's shapes independent of K' (one
    exported graph for every group size)."""
    extra = k - experts.shape[-2]
    if extra < 0:
        raise ValueError(f"{experts.shape[-2]} experts for {k} slots")
    if valid is None:
        valid = torch.ones(experts.shape[:-1], dtype=experts.dtype, device=experts.device)
    valid = valid.to(experts.dtype)
    if extra:
        experts = F.pad(experts, (0, 0, 0, extra))
        valid = F.pad(valid, (0, extra))
    return experts, valid


class GRSer(nn.Module, PyTorchModelHubMixin):
    """The GRSer model. Build with a config or preset; load with `GRSer.from_pretrained`."""

    def __init__(self, config: GRSerConfig | dict | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        if config is None:
            config = GRSerConfig.preset("grser-tiny")
        elif isinstance(config, dict):
            config = GRSerConfig.from_dict(config)
        fresh_text = config.text_config is None
        self.config = config
        self.text_encoder = TextEncoder(config, tokenizer)
        self.image_encoder = ImageEncoder(config, self.text_encoder.dim)
        if config.swin_pretrained and fresh_text:
            self.image_encoder.load_timm_weights(config.swin_pretrained)
        self.tqm = TriphasicQueryModule(self.text_encoder.dim, config.vision_dim)
        self.hierarchizer = HeatmapHierarchizer(
            config.vision_dim, self.text_encoder.dim, config.embed_dim, config.normalize_embeddings
        )
        self.decoder = MaskDecoder(
            config.stage_dims,
            config.query_stage,
            config.experts,
            config.decoder_dim,
            config.embed_dim,
            self.text_encoder.dim if config.decoder_film else None,
        )

    @property
    def tokenizer(self) -> Any:
        return self.text_encoder.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the parts ------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> TextFeatures:
        """Encode expressions once (W, L, L_anti); reuse the result for every image batch."""
        return self.text_encoder(list(texts))

    def _encode(
        self, pixel_values: Tensor, text: TextFeatures
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """M images, M expressions -> (maps F_1..F_4, M_l: M x h x w, prototypes p: M x C_v)."""
        maps = self.image_encoder(pixel_values, text)
        v = maps[self.config.query_stage]
        m_l = self.tqm.language_heatmap(v, text.sentence)
        return maps, m_l, self.tqm.prototypes(v, m_l)

    def _decode(
        self,
        maps: list[Tensor],
        heatmaps: Tensor,
        sentence: Tensor,
        anti: Tensor,
        out_size: tuple[int, int],
    ) -> tuple[Tensor, ...]:
        """Decode M images from their K expert heatmaps and measure d_pos/d_neg (flat over M).

        heatmaps: M x K x h x w, always K channels (`expert_slots`); sentence, anti: M x C_l."""
        logits, pixel_embedding, emb = self.decoder(maps, heatmaps, out_size, sentence)
        if self.config.normalize_embeddings:
            emb = F.normalize(emb, dim=-1)
        t_pos = self.hierarchizer.embed_text(sentence)
        t_neg = self.hierarchizer.embed_text(anti)
        d_pos = torch.linalg.vector_norm(emb - t_pos, dim=-1)
        d_neg = torch.linalg.vector_norm(emb - t_neg, dim=-1)
        return logits, pixel_embedding, emb, t_pos, t_neg, d_pos, d_neg

    # ---- the paper's all-pairs group computation --------------------------------------------
    def forward(
        self,
        pixel_values: Tensor | list[Tensor],
        texts: list[str] | str | TextFeatures,
        image_mask: Tensor | None = None,
    ) -> GRSerOutput:
        """pixel_values: B x N x 3 x H x W (or N x 3 x H x W for one group); texts: B
        expressions (or one for all); image_mask: B x N bool, True for real images of padded
        groups (padding never serves as an expert). A list of 3 x H x W tensors is one group."""
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(0)
            image_mask = None if image_mask is None else image_mask.reshape(1, -1)
        b, n = pixel_values.shape[:2]
        if isinstance(texts, str):
            texts = [texts]
        text = texts if isinstance(texts, TextFeatures) else self.encode_text(texts)
        text = text.expand(b)
        flat_text = text.index(torch.arange(b, device=text.words.device).repeat_interleave(n))
        maps, m_l, protos = self._encode(pixel_values.flatten(0, 1), flat_text)
        v = maps[self.config.query_stage]
        protos = protos.view(b, n, -1)
        s_pos, s_neg = self.hierarchizer.scores(protos, text.sentence, text.anti)
        order = expert_order(s_pos, s_neg, image_mask)[:, : self.config.experts]  # B x K'
        experts = torch.gather(protos, 1, order.unsqueeze(-1).expand(-1, -1, protos.shape[-1]))
        # a padded image is never an expert
        valid = None if image_mask is None else torch.gather(image_mask, 1, order)
        slots, valid = expert_slots(experts, self.config.experts, valid)
        heat = self.tqm.visual_heatmaps(v.view(b, n, *v.shape[1:]), slots)  # B x N x K x h x w
        heat = heat * valid[:, None, :, None, None]
        logits, pix, emb, t_pos, t_neg, d_pos, d_neg = self._decode(
            maps, heat.flatten(0, 1), flat_text.sentence, flat_text.anti, pixel_values.shape[-2:]
        )
        return GRSerOutput(
            mask_logits=logits.view(b, n, *logits.shape[1:]),
            d_pos=d_pos.view(b, n),
            d_neg=d_neg.view(b, n),
            heatmaps=heat,
            language_heatmap=m_l.view(b, n, *m_l.shape[1:]),
            embedding=emb.view(b, n, -1),
            pixel_embedding=pix.view(b, n, *pix.shape[1:]),
            text_pos=t_pos.view(b, n, -1)[:, 0],
            text_neg=t_neg.view(b, n, -1)[:, 0],
            expert_order=order,
            s_pos=s_pos,
            s_neg=s_neg,
        )

    # ---- the two-pass API: cost per image flat in the folder size ----------------------------
    def encode(self, pixel_values: Tensor, text: TextFeatures) -> Encoded:
        """The image encoder with language fusion, M_l and prototypes of M images, one text."""
        maps, m_l, protos = self._encode(pixel_values, text.expand(pixel_values.shape[0]))
        return Encoded(maps, m_l, protos)

    def expert_scores(
        self, pixel_values: Tensor, text: TextFeatures, encoded: Encoded | None = None
    ) -> ExpertScores:
        """Pass 1: prototypes and hierarchizer scores of M images (M x 3 x H x W), one text
        (from `encoded` when given)."""
        enc = encoded if encoded is not None else self.encode(pixel_values, text)
        s_pos, s_neg = self.hierarchizer.scores(enc.prototypes, text.sentence[0], text.anti[0])
        return ExpertScores(enc.prototypes, s_pos, s_neg)

    def select_experts(self, scores: ExpertScores, k: int | None = None) -> Tensor:
        """Indices of the top-k experts (hierarchizer order); k defaults to the config's K."""
        k = self.config.experts if k is None else k
        return expert_order(scores.s_pos, scores.s_neg)[:k]

    def query(
        self,
        pixel_values: Tensor | None,
        text: TextFeatures,
        experts: Tensor,
        encoded: Encoded | None = None,
    ) -> GRSerOutput:
        """Pass 2: decode M images against given expert prototypes (K' x C_v, ordered, K' <= K);
        `encoded` (pass 1's encoder output for these images) skips the encoder, and then
        `pixel_values` may be None."""
        if encoded is None and pixel_values is None:
            raise ValueError("query needs pixel_values or encoded")
        enc = encoded if encoded is not None else self.encode(pixel_values, text)
        m = enc.prototypes.shape[0]
        text1 = text.expand(m)
        protos = enc.prototypes
        s_pos, s_neg = self.hierarchizer.scores(protos, text1.sentence[0], text1.anti[0])
        slots, valid = expert_slots(experts, self.config.experts)
        logits, pix, emb, t_pos, t_neg, d_pos, d_neg, heat = self.query_slots(
            enc.maps, text1.sentence, text1.anti, slots, valid
        )
        return GRSerOutput(
            mask_logits=logits[None],
            d_pos=d_pos[None],
            d_neg=d_neg[None],
            heatmaps=heat[None],
            language_heatmap=enc.language_heatmap[None],
            embedding=emb[None],
            pixel_embedding=pix[None],
            text_pos=t_pos[:1],
            text_neg=t_neg[:1],
            expert_order=torch.full((1, experts.shape[0]), -1, device=experts.device),
            s_pos=s_pos[None],
            s_neg=s_neg[None],
        )

    def query_slots(
        self,
        maps: list[Tensor],
        sentence: Tensor,
        anti: Tensor,
        experts: Tensor,
        expert_valid: Tensor,
    ) -> tuple[Tensor, ...]:
        """Pass 2 with shapes fixed by the config (what query.onnx runs): maps F_1..F_4 of M
        images, sentence/anti M x C_l, experts K x C_v in K slots, expert_valid K (1 real,
        0 padding) -> (mask logits M x S x S, e_n, emb, phi_l(L), phi_l(L_anti), d_pos, d_neg,
        heatmaps M x K x h x w)."""
        v = maps[self.config.query_stage]
        heat = self.tqm.visual_heatmaps(v.unsqueeze(0), experts.unsqueeze(0))[0]
        heat = heat * expert_valid.to(heat.dtype)[None, :, None, None]
        side = self.config.image_size
        return (*self._decode(maps, heat, sentence, anti, (side, side)), heat)

    # ---- the two passes, as the engine runs them (gres_cli.backends.grser adapts them) -------
    def first_pass(self, pixel_values: Tensor, text: TextFeatures) -> tuple[ExpertScores, Encoded]:
        """Pass 1 over M images: what the group step needs (prototypes, s_pos, s_neg) and the
        encoder output, which pass 2 reuses (it does not depend on the experts)."""
        encoded = self.encode(pixel_values, text)
        return self.expert_scores(pixel_values, text, encoded), encoded

    def top_experts(self, scores: ExpertScores, k: int | None = None) -> Tensor:
        """The group step: the K' x C_v prototypes of the top-k experts, most reliable first."""
        return scores.prototypes[self.select_experts(scores, k)]

    def second_pass(
        self,
        pixel_values: Tensor | None,
        text: TextFeatures,
        experts: Tensor,
        encoded: Encoded | None = None,
        group: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pass 2 over M images against the chosen experts: (d_pos M, d_neg M, mask logits
        M x S x S). `group=False`: each image against its own prototype only (the model without
        the group step; `experts` unused)."""
        if not group:
            enc = encoded if encoded is not None else self.encode(pixel_values, text)
            outs = [
                self.query(None, text, enc.prototypes[i : i + 1], enc.item(i))
                for i in range(enc.prototypes.shape[0])
            ]
            return (
                torch.cat([o.d_pos[0] for o in outs]),
                torch.cat([o.d_neg[0] for o in outs]),
                torch.cat([o.mask_logits[0] for o in outs]),
            )
        dtype = encoded.prototypes.dtype if encoded is not None else pixel_values.dtype
        out = self.query(pixel_values, text, experts.to(dtype), encoded)
        return out.d_pos[0], out.d_neg[0], out.mask_logits[0]

    @torch.inference_mode()
    def predict(
        self,
        images: list[Image.Image],
        text: str,
        margin: float | None = None,
        threshold: float = 0.5,
        batch_size: int = 16,
    ) -> list[Prediction]:
        """Segment `text` in a group of PIL images; masks at each image's original size.

        The engine's two passes (`first_pass`, `top_experts`, `second_pass`) over batches of
        `batch_size`, pass 1's encoder output kept for pass 2: the top-K experts of the whole
        group (for at most K images, the paper's all-pairs forward). For folders too large for
        memory, use the engine behind `gres segment` (`gres_cli.inference.engine.Segmenter`).
        """
        was_training = self.training
        self.eval()
        margin = self.config.margin if margin is None else margin
        pixels = preprocess(images, self.config.image_size).to(self.device)
        features = self.encode_text([text])
        passed = [self.first_pass(chunk, features) for chunk in pixels.split(batch_size)]
        experts = self.top_experts(ExpertScores.cat([scores for scores, _ in passed]))
        outs = [self.second_pass(None, features, experts, encoded) for _, encoded in passed]
        d_pos, d_neg, logits = (torch.cat(parts) for parts in zip(*outs, strict=True))
        self.train(was_training)
        present = presence(d_pos, d_neg, margin).tolist()
        preds = []
        for i, im in enumerate(images):
            mask, prob = np.zeros((im.size[1], im.size[0]), bool), 0.0
            if present[i]:  # one full-size map at a time
                full = probability_to_original(logits[i], im.size)
                inside = full > threshold
                mask = inside.cpu().numpy()
                prob = float(full[inside].mean()) if mask.any() else 0.0
            dp, dn = float(d_pos[i]), float(d_neg[i])
            preds.append(Prediction(present[i], dp, dn, dn - dp, mask, prob))
        return preds

    # ---- model folders and the Hub --------------------------------------------------------------
    def num_parameters(self) -> dict[str, int]:
        parts = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in self.named_children()
        }
        parts["total"] = sum(parts.values())
        return parts

    def _save_pretrained(self, save_directory: Path) -> None:
        import json

        save_directory = Path(save_directory)
        hub.save_state(self, save_directory / hub.WEIGHTS_FILE)
        self.tokenizer.save_pretrained(str(save_directory))
        (save_directory / hub.CONFIG_FILE).write_text(
            json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        )
        (save_directory / "README.md").write_text(
            model_card(
                self.config.to_dict(),
                self.num_parameters()["total"],
                self.config.extra.get("metrics"),
            )
        )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
    ) -> GRSer:
        """Load a model folder or Hub repo (config.json + model.safetensors + tokenizer).

        Strict: missing, unexpected or mis-shaped weights raise ModelLoadError naming them.
        HF_HUB_OFFLINE=1 makes it use the local Hub cache only.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        **_: Any,
    ) -> GRSer:
        try:  # the tokenizer.json saved with the model, read without consulting config.json
            from transformers import TokenizersBackend as FastTokenizer
        except ImportError:  # transformers 4
            from transformers import PreTrainedTokenizerFast as FastTokenizer

        folder = hub.resolve_model_dir(model_id, revision, cache_dir, local_files_only, token)
        config = GRSerConfig.from_folder(folder)
        tokenizer = FastTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = cls(config, tokenizer=tokenizer)
        hub.load_state_strict(model, folder / hub.WEIGHTS_FILE)
        model.eval()
        return model.to(map_location)
