"""Grounding DINO + SAM ("Grounded-SAM", Ren et al. 2024) through transformers, with the group
rule on top: Grounding DINO finds the box the expression names, SAM segments inside it.

A checkpoint of `model_type` "grounding-dino" (`IDEA-Research/grounding-dino-tiny`, Apache-2.0,
~170 M parameters) is loaded with a SAM checkpoint for the masks: `facebook/sam-vit-base`
(Apache-2.0, ~94 M parameters) unless a gres-backend settings folder names another with its
`sam` key (a Hub id or a local folder; `settings.py`). Both go through the Hub cache;
`--revision` is the detector's, the SAM checkpoint is read at its default revision.

The canvas. Grounding DINO's processor resizes each image to its own size (shortest side 800,
longest <= 1333) and pads a batch to its largest image; the engine needs one tensor shape per
image. Both models here read a fixed S x S canvas instead, S = SAM's pad size (1024): each
model's own image processor resizes the longest side to S (keeping the aspect ratio) and pads
bottom and right to S x S. `preparer` gives 8 channels: Grounding DINO's canvas (3) and its
pixel mask (1), SAM's canvas (3) and the area SAM's image covers in it (1). A 4:3 photo reaches
Grounding DINO at 1024 x 768 rather than its default 1067 x 800.

Per image (the expression tokenised once per job as the processor does, "the red umbrella" ->
"the red umbrella."; Grounding DINO's text encoder runs with every batch, its forward takes no
precomputed text features):
    s_q   = max over the text tokens of sigmoid(logits_q): box q's score, from the library's
            `post_process_grounded_object_detection` (every box kept), boxes in SAM's frame
    b_n   = max_q s_q; the best box q* (the first on ties). With no box above the customary
            threshold the best box is still used: the rule needs a number and a region
    mask  = SAM's single mask (`multimask_output=False`, Grounded-SAM's usage) for box q*
    R_n   = sigmoid(SAM's 256 x 256 low-resolution mask logits)
    f_n   = SAM's image embedding (64 x 64 x 256 at full size), text-independent
Masks: the library's `post_process_masks` (upscale to the canvas, crop SAM's image, bilinear to
the original size) without binarising, sigmoid, > --threshold (logit > 0 at the default 0.5,
SAM's own mask threshold). t = 0.35, Grounded-SAM's box threshold, so the default m = -0.3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from gres_cli.backends.openvocab import BackendOutput, OpenVocabModel
from gres_cli.errors import ModelLoadError

MODEL_TYPE = "grounding-dino"
DEFAULT_SAM = "facebook/sam-vit-base"
#: Grounded-SAM's customary thresholds on box and token scores
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25


class PrepareCanvases:
    """One decoded image -> 8 x S x S: Grounding DINO's canvas and pixel mask, SAM's canvas and
    the area its image covers, each from that model's own image processor (picklable)."""

    def __init__(self, detector_images: Any, sam_images: Any, side: int) -> None:
        self.detector_images, self.sam_images, self.side = detector_images, sam_images, side

    def __call__(self, image: Image.Image) -> Tensor:
        s = self.side
        detector = self.detector_images(
            images=image,
            size={"shortest_edge": s, "longest_edge": s},
            pad_size={"height": s, "width": s},
            return_tensors="pt",
        )
        sam = self.sam_images(images=image, return_tensors="pt")
        h, w = (int(v) for v in sam["reshaped_input_sizes"][0])
        covered = torch.zeros(1, s, s)
        covered[:, :h, :w] = 1
        return torch.cat(
            [
                detector["pixel_values"][0],
                detector["pixel_mask"][0][None].float(),
                sam["pixel_values"][0],
                covered,
            ]
        )


@dataclass
class GroundedSamSettings:
    """Grounding DINO's own setting: the SAM checkpoint that draws the masks."""

    sam: str | None = None  # a Hub id or local folder; None: DEFAULT_SAM

    def __post_init__(self) -> None:
        if self.sam is not None and (not isinstance(self.sam, str) or not self.sam):
            raise ValueError("sam must name a SAM checkpoint (a Hub id or folder)")


class GroundedSamBackend(OpenVocabModel):
    kind = MODEL_TYPE
    threshold = BOX_THRESHOLD
    Settings = GroundedSamSettings

    def __init__(
        self, folder: Path, checkpoint: str, sam: str | None = None, **settings: Any
    ) -> None:
        from transformers import (
            GroundingDinoForObjectDetection,
            GroundingDinoProcessor,
            SamModel,
            SamProcessor,
        )

        from gres_cli.model import hub

        super().__init__(checkpoint, **settings)
        sam = sam or DEFAULT_SAM
        self.config["sam"] = sam
        try:
            sam_folder = hub.resolve_model_dir(sam)
        except ModelLoadError as e:
            raise ModelLoadError(f"{checkpoint} pairs with the SAM checkpoint {e}") from None
        if hub.read_config(sam_folder).get("model_type") != "sam":
            raise ModelLoadError(f"{sam}: not a SAM checkpoint (model_type 'sam') for the masks")
        self.processor = GroundingDinoProcessor.from_pretrained(str(folder), local_files_only=True)
        self.detector = GroundingDinoForObjectDetection.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        ).eval()
        self.sam_processor = SamProcessor.from_pretrained(str(sam_folder), local_files_only=True)
        self.sam = SamModel.from_pretrained(
            str(sam_folder), local_files_only=True, use_safetensors=True
        ).eval()
        pad = self.sam_processor.image_processor.pad_size
        self.input_size = int(pad["height"])

    def networks(self) -> list[torch.nn.Module]:
        return [self.detector, self.sam]

    def to(self, device: torch.device) -> GroundedSamBackend:
        self.detector = self.detector.to(device).eval()
        self.sam = self.sam.to(device).eval()
        return self

    def preparer(self) -> Callable[[Image.Image], Tensor]:
        return PrepareCanvases(
            self.processor.image_processor, self.sam_processor.image_processor, self.input_size
        )

    def encode_text(self, expression: str) -> dict[str, Tensor]:
        """The tokens (1 x L), as the processor makes them for one candidate label."""
        config = self.detector.config
        positions = min(config.max_text_len, config.text_config.max_position_embeddings)
        length = self.text_length(self.processor.tokenizer, expression, positions)
        tokens = self.processor(
            text=[expression], truncation=True, max_length=length, return_tensors="pt"
        )
        return {k: v.to(self.detector.device) for k, v in tokens.items()}

    def forward(self, pixels: Tensor, text: dict[str, Tensor]) -> BackendOutput:
        m = pixels.shape[0]
        detected = self.detector(
            pixel_values=pixels[:, :3],
            pixel_mask=pixels[:, 3].round().long(),
            **{k: v.expand(m, -1) for k, v in text.items()},
        )
        covered = pixels[:, 7].round().bool()
        sam_sizes = [(int(c[:, 0].sum()), int(c[0].sum())) for c in covered]  # (h, w)
        boxes = self.processor.post_process_grounded_object_detection(
            detected,
            input_ids=text["input_ids"].expand(m, -1),
            threshold=-1.0,  # every box: b_n is needed where no box passes BOX_THRESHOLD too
            text_threshold=TEXT_THRESHOLD,
            target_sizes=sam_sizes,
        )
        best = [int(b["scores"].argmax()) for b in boxes]
        score = torch.stack([b["scores"][q] for b, q in zip(boxes, best, strict=True)])
        box = torch.stack([b["boxes"][q] for b, q in zip(boxes, best, strict=True)])
        embeddings = self.sam.get_image_embeddings(pixels[:, 4:7])
        masks = self.sam(
            image_embeddings=embeddings, input_boxes=box[:, None], multimask_output=False
        ).pred_masks[:, 0, 0]  # M x 256 x 256
        return BackendOutput(masks, score.float(), embeddings, masks.float().sigmoid())

    def probability_at(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        w, h = size
        images = self.sam_processor.image_processor
        # the size SAM's processor resized this image to: its own rule
        resized = images._get_preprocess_shape((h, w), images.size["longest_edge"])
        (logits,) = images.post_process_masks(
            [mask_logits.float()[None, None]], [(h, w)], [resized], binarize=False
        )
        return logits[0, 0].sigmoid()
