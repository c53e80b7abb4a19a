"""The group-wise presence rule on top of any open-vocabulary segmenter (CLIPSeg, SAM 3,
Grounding DINO + SAM), and the base class the backends share.

A per-image segmenter says "present" whenever something looks like the words. GRSer's idea
(docs/model.md) is that the group knows better: images that really hold the referent agree
with one another. For backends that were never trained for it, we apply that idea without
training (docs/backends.md, "The group rule"):

pass 1, per image n:
    b_n            the backend's own presence score in [0, 1] (its best region's score)
    R_n            its best region, a probability map
    e_n            = normalise(sum_x R_n(x) f_n(x) / sum_x R_n(x)): the backbone features f_n
                   pooled under R_n (the whole image when R_n is empty)
group (once per job, O(K^2)):
    E              the top-K images of the group by b_n (ties: earlier image first)
    a_k            = mean_{j in E, j != k} cos(e_k, e_j): how much expert k agrees with the rest
    w_k            = max(a_k, 0), or 1 for all when every a_k <= 0
    P              = normalise(sum_k w_k e_k): the experts' prototype of the referent
    rho            = sum_k w_k ||e_k - P_{-k}|| / sum_k w_k, P_{-k} the prototype without k:
                   how far a genuine match lies from the prototype (leave-one-out)
pass 2, per image n (gamma = the group weight; 0 without the group step):
    d_pos          = (1 - b_n) + gamma * ||e_n - P||
    d_neg          = b_n + gamma * rho
    present_n      = d_pos + m < d_neg
                   <=> (2 b_n - 1) + gamma * (rho - ||e_n - P||) > m
With gamma = 0 the rule is the backend alone at threshold b_n > (1 + m) / 2, so each backend's
default m is 2 t - 1 for its customary threshold t, and `--no-group` at the default m gives the
backend's own answers. With fewer than two experts there is no agreement to measure and the
group term is 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from gres_cli.backends import registry
from gres_cli.backends.group_rule import (  # noqa: F401  (re-exported)
    GroupRuleExtras,
    NoExtraSettings,
    reweighted_score,
)
from gres_cli.backends.protocol import Description, FirstPass, SecondPass
from gres_cli.backends.registry import ModelFacts, ModelKind
from gres_cli.errors import ModelLoadError
from gres_cli.model.preprocess import probability_to_original


@dataclass
class RegionItem:
    """What pass 1 keeps of one image for pass 2: its mask logits (h x w), score b and region
    embedding e (D)."""

    mask_logits: Tensor
    score: Tensor
    embedding: Tensor


@dataclass
class GroupPrototype:
    """The experts' prototype P (D), the match radius rho, and whether the group term applies."""

    prototype: Tensor
    radius: Tensor
    active: bool


@dataclass
class BackendOutput:
    """One forward of a backend over M images."""

    mask_logits: Tensor  # M x h x w, the best region's logits
    score: Tensor  # M, b_n in [0, 1]
    features: Tensor  # M x C x h' x w', backbone features
    region: Tensor  # M x h x w, R_n in [0, 1] (resized to the features' grid here)


def region_embedding(features: Tensor, region: Tensor) -> Tensor:
    """e_n: features (M x C x h' x w') pooled under region (M x h x w, in [0, 1]), unit length.
    An empty region pools the whole image."""
    grid = tuple(int(n) for n in features.shape[-2:])  # ints: a constant of an ONNX graph
    weights = F.adaptive_avg_pool2d(region[:, None].float(), grid)[:, 0]
    empty = weights.flatten(1).sum(1) <= 1e-6
    weights = torch.where(empty[:, None, None], torch.ones_like(weights), weights)
    pooled = (features.float() * weights[:, None]).flatten(2).sum(-1)
    return F.normalize(pooled / weights.flatten(1).sum(1, keepdim=True), dim=-1)


def expert_weights(experts: Tensor) -> Tensor:
    """w_k = max(a_k, 0), a_k the mean cosine of expert k with the other experts (K x D unit
    vectors); all ones when no expert agrees with any other."""
    k = experts.shape[0]
    cos = experts @ experts.T
    agreement = (cos.sum(1) - cos.diagonal()) / (k - 1)
    weights = agreement.clamp(min=0)
    return weights if weights.sum() > 0 else torch.ones_like(weights)


def group_prototype(scores: Tensor, embeddings: Tensor, k: int) -> GroupPrototype:
    """The group step over a job's N images (scores b: N, embeddings e: N x D unit vectors)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:k]
    experts = embeddings[order].float()
    if len(order) < 2:
        return GroupPrototype(experts.mean(0), experts.new_zeros(()), active=False)
    w = expert_weights(experts)
    prototype = F.normalize((w[:, None] * experts).sum(0), dim=0)
    leave_one_out = F.normalize((w[:, None] * experts).sum(0) - w[:, None] * experts, dim=-1)
    gaps = torch.linalg.vector_norm(experts - leave_one_out, dim=-1)
    return GroupPrototype(prototype, (w * gaps).sum() / w.sum(), active=True)


def group_distances(
    scores: Tensor, embeddings: Tensor, group: GroupPrototype | None, weight: float
) -> tuple[Tensor, Tensor]:
    """(d_pos, d_neg) of M images: d_pos = (1 - b) + gamma ||e - P||, d_neg = b + gamma rho;
    gamma = `weight`, or 0 without a group (None) or with an inactive one."""
    scores = scores.float()
    d_pos, d_neg = 1.0 - scores, scores.clone()
    if group is not None and group.active and weight:
        dist = torch.linalg.vector_norm(embeddings.float() - group.prototype, dim=-1)
        d_pos = d_pos + weight * dist
        d_neg = d_neg + weight * group.radius
    return d_pos, d_neg


class ProcessImage:
    """The checkpoint's own image processor on one decoded image (picklable, for workers)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class OpenVocabModel(GroupRuleExtras, ModelKind):
    """A backend as a `GroupModel`: subclasses load the checkpoint in `__init__(folder,
    checkpoint, **settings)` and implement `forward` (and `preparer`, `model_input`,
    `encode_text`); the group rule, the loading path and the description are shared."""

    kind = "open-vocabulary"
    runtime = "torch"
    #: the backend's customary threshold t on its own score; the default m is 2 t - 1
    threshold = 0.5
    #: the backend's own settings beyond experts, group weight and margin, as a dataclass its
    #: constructor takes by keyword (a settings folder's extra keys fill it)
    Settings: ClassVar[type] = NoExtraSettings

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        experts: int = 4,
        group_weight: float = 1.0,
        margin: float | None = None,
        **extra: Any,
    ) -> OpenVocabModel:
        """The checkpoint in `folder` (resolved already) with gres's settings and the backend's
        own (`extra`, checked against its `Settings`)."""
        from transformers.utils import logging as hf_logging

        options = cls._own_settings(checkpoint, extra)
        hf_logging.disable_progress_bar()  # stderr holds gres's own progress and one-line errors
        shared = {"experts": experts, "group_weight": group_weight, "margin": margin}
        try:
            model = cls(folder, checkpoint, group=group, **shared, **asdict(options))
        except (OSError, ValueError, KeyError) as e:  # transformers' loading faults
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{checkpoint}: cannot load as {cls.kind} ({first})") from None
        model.config["revision"] = revision
        return model

    @classmethod
    def facts(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        experts: int = 4,
        group_weight: float = 1.0,
        margin: float | None = None,
        **extra: Any,
    ) -> ModelFacts:
        """What `from_folder` with these settings gives, without the checkpoint's weights."""
        cls._own_settings(checkpoint, extra)
        return ModelFacts(experts, None, cls.default_margin(margin), group_weight, group)

    @classmethod
    def _own_settings(cls, checkpoint: str, extra: dict[str, Any]) -> Any:
        """The backend's own settings (`Settings`) of a settings folder's extra keys, or
        ModelLoadError naming a key it does not take."""
        unknown = sorted(set(extra) - {f.name for f in fields(cls.Settings)})
        if unknown:
            owners = backends_taking(unknown[0]) or ["no backend"]
            raise ModelLoadError(
                f"{checkpoint}: a {unknown[0]} setting pairs with {', '.join(owners)} only"
            )
        try:
            return cls.Settings(**extra)
        except ValueError as e:
            raise ModelLoadError(f"{checkpoint}: {e}") from None

    @classmethod
    def default_margin(cls, margin: float | None) -> float:
        """m = 2 t - 1 from the backend's threshold t, unless given."""
        return 2 * cls.threshold - 1 if margin is None else margin

    def networks(self) -> list[torch.nn.Module]:
        """The backend's networks (one, `self.net`, unless a backend overrides this)."""
        return [self.net]

    def describe(self) -> Description:
        params = sum(p.numel() for net in self.networks() for p in net.parameters())
        rows = [
            ("checkpoint", str(self.config["checkpoint"])),
            ("input size", f"{self.input_size} px"),
            ("experts K", str(self.experts)),
            ("group weight", f"{self.group_weight:g}"),
            ("default margin m", f"{self.margin:g}"),
            ("parameters", f"{params:,}"),
        ]
        facts = {"config": self.config, "parameters": {"total": params}}
        return Description(f"{self.kind} backend", rows, facts)

    def __init__(
        self,
        checkpoint: str,
        group: bool = True,
        experts: int = 4,
        group_weight: float = 1.0,
        margin: float | None = None,
    ) -> None:
        self.group = group
        self.experts = experts
        self.max_experts = None  # the rule takes any K
        self.group_weight = group_weight
        self.margin = self.default_margin(margin)
        self._truncated: set[str] = set()  # expressions already said to be cut
        self.config = {
            "model_type": self.kind,
            "checkpoint": checkpoint,
            "experts": experts,
            "group_weight": group_weight,
            "margin": self.margin,
        }

    # ---- what each backend provides ------------------------------------------------------
    def forward(self, pixels: Tensor, text: Any) -> BackendOutput:
        raise NotImplementedError

    def preparer(self) -> Callable[[Image.Image], Tensor]:
        raise NotImplementedError

    def model_input(self, prepared: Tensor) -> Tensor:
        return prepared

    def encode_text(self, expression: str) -> Any:
        raise NotImplementedError

    def text_length(self, tokenizer: Any, expression: str, positions: int) -> int:
        """The `max_length` to tokenize `expression` at: the text model's own `positions`. A
        checkpoint's tokenizer may not know them (no model_max_length), and a longer input
        fails inside the model, so every backend truncates here; a cut expression is said
        once on stderr."""
        tokens = len(tokenizer(expression)["input_ids"])
        if tokens > positions and expression not in self._truncated:
            self._truncated.add(expression)
            shown = expression if len(expression) <= 60 else expression[:57] + "..."
            print(
                f"gres: warning: the expression {shown!r} has {tokens} tokens; the "
                f"{self.kind} text model reads {positions}: truncated to them",
                file=sys.stderr,
            )
        return positions

    def to(self, device: torch.device) -> OpenVocabModel:
        """Moves `self.net` (a backend with more than one network overrides this)."""
        self.net = self.net.to(device).eval()
        return self

    def probability_at(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        return probability_to_original(mask_logits, size)

    # ---- the protocol, shared --------------------------------------------------------------
    def first_pass(self, pixels: Tensor, text: Any, alone: bool = False) -> FirstPass:
        out = self.forward(pixels, text)
        emb = region_embedding(out.features, out.region)
        score = out.score.float()
        items = [RegionItem(out.mask_logits[i], score[i], emb[i]) for i in range(len(score))]
        return FirstPass({"score": score, "embedding": emb}, items)

    def choose_experts(self, summary: dict[str, Tensor], k: int) -> GroupPrototype | None:
        if not self.group:
            return None
        return group_prototype(summary["score"], summary["embedding"], k)

    def second_pass(
        self, pixels: Tensor | None, text: Any, experts: Any, items: list[Any] | None
    ) -> SecondPass:
        if items is None:
            items = self.first_pass(pixels, text).items
        scores = torch.stack([it.score for it in items])
        emb = torch.stack([it.embedding for it in items])
        d_pos, d_neg = group_distances(scores, emb, experts, self.group_weight)
        alone_pos, alone_neg = group_distances(scores, emb, None, 0.0)
        extras = {"backend_score": scores, "alone_d_pos": alone_pos, "alone_d_neg": alone_neg}
        return SecondPass(d_pos, d_neg, torch.stack([it.mask_logits for it in items]), extras)


def backends_taking(setting: str) -> list[str]:
    """The registered open-vocabulary kinds whose own settings include `setting`."""
    return [
        name
        for name in registry.open_vocabulary_types()
        if setting
        in {f.name for f in fields(registry.model_type(name, name).model_class().Settings)}
    ]
