"""`gres model export CLIPSEG OUT --format onnx`: a CLIPSeg checkpoint (or a gres-backend
settings folder over one, whose settings the export keeps) as two ONNX graphs, its tokenizer
and the settings of the numpy twin of its image processor: the folder
`gres_cli.model.clipseg_onnx_spec` describes, which `gres segment --model OUT` runs on
onnxruntime without torch or transformers (`gres_cli.backends.clipseg_onnx`).

    text.onnx    the expression's ids (unpadded, truncated at the text model's positions)
                 -> the conditional embedding
    image.onnx   B processed images + the conditional embedding -> mask logits, the score b_n
                 and the vision tokens after the deepest layer the decoder reads
    region.onnx  those tokens and the mask logits -> the region embedding e_n of each image:
                 the vision transformer's remaining layers (2 of rd64's 12, 14% of an image
                 pass), which only the group step needs: a lone image skips them

The graphs wrap the code the torch backend runs (`get_conditional_embeddings`;
`CLIPSegBackend.decode`, `region_features`, `openvocab.region_embedding`), the vision
transformer cut in two after the decoder's deepest layer; the self-check holds the two halves
together against the backend's whole `forward`. The group rule is numpy in both runtimes'
reach (`group_rule`). The export checks itself as the GRSer export does (onnxruntime
against torch, onnx's checker, the tokenizer and the image processor's twin against
transformers') before OUT appears; a failed export leaves nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gres_cli.backends.clipseg import MODEL_TYPE as CLIPSEG
from gres_cli.backends.clipseg import CLIPSegBackend, best_pixel
from gres_cli.backends.openvocab import region_embedding
from gres_cli.backends.openvocab_export import (
    BackendExport,
    check_twin,
    export_backend_onnx,
)
from gres_cli.errors import GresError
from gres_cli.model import clipseg_onnx_spec as spec
from gres_cli.model.export import (
    checked_sessions,
    export_graph,
    worst_error,
)
from gres_cli.model.image_processor import ImageProcessorTwin
from gres_cli.model.onnx_tokenizer import Tokenizer

#: the self-check's inputs: expressions (one past 77 tokens: truncated), batch sizes and the
#: seed of its random images
CHECK_EXPRESSIONS = (
    "the small red circle",
    "a dog without a leash on the left",
    " ".join(["the big old wooden table next to a window"] * 10),
)
CHECK_BATCHES = (1, 3)
CHECK_SEED = 0


class TextGraph(nn.Module):
    """text.onnx: one expression's ids (1 x L) -> its conditional embedding (1 x D)."""

    def __init__(self, backend: CLIPSegBackend) -> None:
        super().__init__()
        self.net = backend.net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.net.get_conditional_embeddings(
            batch_size=1, input_ids=input_ids, attention_mask=attention_mask
        )


def deep_layer(backend: CLIPSegBackend) -> int:
    """The index, among the vision transformer's hidden states (its input, then each layer's
    output), of the deepest one the decoder reads: image.onnx stops there."""
    return max(backend.net.config.extract_layers) + 1


class ImageGraph(nn.Module):
    """image.onnx: B images against one conditional embedding -> logits, b_n, deep tokens (the
    layers past the decoder's deepest are left out of the trace: nothing here reads them)."""

    def __init__(self, backend: CLIPSegBackend) -> None:
        super().__init__()
        self.backend = backend
        self.net = backend.net  # registered: the exporter puts it in eval mode

    def forward(self, pixels: Tensor, conditional: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, vision = self.backend.decode(pixels, conditional)
        deep = vision.hidden_states[deep_layer(self.backend)]
        return logits, best_pixel(torch.sigmoid(logits.float())), deep


class RegionGraph(nn.Module):
    """region.onnx: deep tokens and mask logits of B images -> e_n, through the vision
    transformer's remaining layers (as its encoder runs them: no attention mask)."""

    def __init__(self, backend: CLIPSegBackend) -> None:
        super().__init__()
        self.backend = backend
        self.net = backend.net

    def forward(self, deep_tokens: Tensor, mask_logits: Tensor) -> Tensor:
        hidden = deep_tokens
        for layer in self.net.clip.vision_model.encoder.layers[deep_layer(self.backend) :]:
            hidden = layer(hidden, None)
        features = self.backend.region_features(hidden)
        return region_embedding(features, torch.sigmoid(mask_logits.float()))


def _ids(backend: CLIPSegBackend, expression: str) -> dict[str, Tensor]:
    """The ids the torch backend feeds its text model (`CLIPSegBackend.encode_text`)."""
    positions = backend.net.config.text_config.max_position_embeddings
    return backend.processor.tokenizer(
        [expression], padding=True, truncation=True, max_length=positions, return_tensors="pt"
    )


def export_graphs(backend: CLIPSegBackend, folder: Path, opset: int) -> None:
    ids = _ids(backend, CHECK_EXPRESSIONS[1])
    text_args = (ids["input_ids"], ids["attention_mask"])
    with torch.no_grad():
        conditional = TextGraph(backend)(*text_args)
    tokens = {name: {1: "tokens"} for name in spec.TEXT_INPUTS}
    export_graph(TextGraph(backend), text_args, folder / spec.GRAPH_FILES[spec.TEXT],
            spec.TEXT_INPUTS, (spec.CONDITIONAL,), (), opset, axes=tokens)  # fmt: skip
    s = backend.input_size
    pixels = torch.zeros(2, 3, s, s)  # batch 2: a batch of 1 would hide where it broadcasts
    with torch.no_grad():
        logits, _, deep = ImageGraph(backend)(pixels, conditional)
    export_graph(ImageGraph(backend), (pixels, conditional), folder / spec.GRAPH_FILES[spec.IMAGE],
            spec.IMAGE_INPUTS, spec.IMAGE_OUTPUTS, (spec.PIXELS, *spec.IMAGE_OUTPUTS),
            opset)  # fmt: skip
    export_graph(RegionGraph(backend), (deep, logits), folder / spec.GRAPH_FILES[spec.REGION],
            spec.REGION_INPUTS, spec.REGION_OUTPUTS, (*spec.REGION_INPUTS, *spec.REGION_OUTPUTS),
            opset)  # fmt: skip


def self_check(backend: CLIPSegBackend, twin: ImageProcessorTwin, folder: Path) -> dict:
    """Each graph valid ONNX, onnxruntime against torch (text: every check expression, one
    truncated; image: random images, B = 1 and 3, against each expression's embedding; region:
    on what the runtime's image graph gave, against e_n of the backend's whole `forward`); the
    folder's tokenizer through `tokenizers` alone gives transformers' ids; the numpy twin of
    the image processor gives transformers' pixels on photos of odd sizes. The worst error of
    each (the twin's is 0: equal bit for bit, or the check fails)."""
    sessions = checked_sessions(folder, spec.GRAPH_FILES)
    errors = dict.fromkeys(spec.GRAPH_FILES, 0.0) | {"image_processor": check_twin(backend, twin)}
    positions = backend.net.config.text_config.max_position_embeddings
    tokenize = Tokenizer(folder, positions, pad=False)
    s = backend.input_size
    generator = torch.Generator().manual_seed(CHECK_SEED)
    pixels = torch.randn(max(CHECK_BATCHES), 3, s, s, generator=generator)
    with torch.no_grad():
        for expression in CHECK_EXPRESSIONS:
            want_ids = _ids(backend, expression)
            ids, mask = tokenize([expression])
            if ids.tolist() != want_ids["input_ids"].tolist() or (
                mask.tolist() != want_ids["attention_mask"].tolist()
            ):
                raise GresError(
                    f"self-check failed: tokenizer.json read by tokenizers tokenizes "
                    f"{expression[:40]!r} differently from the checkpoint's tokenizer"
                )
            want = TextGraph(backend)(want_ids["input_ids"], want_ids["attention_mask"])
            feeds = dict(zip(spec.TEXT_INPUTS, (ids, mask), strict=True))
            got = sessions[spec.TEXT].run(None, feeds)
            errors[spec.TEXT] = max(
                errors[spec.TEXT], worst_error(got, (want,), (spec.CONDITIONAL,))
            )
            conditional = torch.from_numpy(got[0])  # what the runtime has
            image = ImageGraph(backend)(pixels, conditional)
            whole = backend.forward(pixels, conditional)
            embedding = region_embedding(whole.features, whole.region)
            for b in CHECK_BATCHES:
                feeds = {spec.PIXELS: pixels[:b].numpy(), spec.CONDITIONAL: got[0]}
                out = sessions[spec.IMAGE].run(None, feeds)
                want = tuple(t[:b] for t in image)
                errors[spec.IMAGE] = max(
                    errors[spec.IMAGE], worst_error(out, want, spec.IMAGE_OUTPUTS)
                )
                feeds = dict(zip(spec.REGION_INPUTS, (out[2], out[0]), strict=True))
                region = sessions[spec.REGION].run(None, feeds)
                errors[spec.REGION] = max(
                    errors[spec.REGION],
                    worst_error(region, (embedding[:b],), spec.REGION_OUTPUTS),
                )
    return errors


CLIPSEG_EXPORT = BackendExport(
    spec=spec,
    backend=CLIPSegBackend,
    kinds=(CLIPSEG,),
    name="CLIPSeg",
    tag="clipseg",
    about="CLIPSeg is Lüddecke & Ecker, CVPR 2022; gres adds its group rule "
    "(docs/backends.md) for group-wise referring expression segmentation.",
    max_tokens=lambda backend: backend.net.config.text_config.max_position_embeddings,
    export_graphs=export_graphs,
    self_check=self_check,
)


def export_clipseg_onnx(
    folder: Path, model_id: str, revision: str | None, out: Path, opset: int,
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Export the CLIPSeg in (or named by) `folder` to an ONNX folder `out` (see the module)."""
    return export_backend_onnx(CLIPSEG_EXPORT, folder, model_id, revision, out, opset, overwrite)
