"""`gres model export SAM3 OUT --format onnx`: a SAM 3 checkpoint (or a gres-backend settings
folder over one, whose settings the export keeps) as two ONNX graphs, its tokenizer and the
settings of the numpy twin of its image processor: the folder `gres_cli.model.sam3_onnx_spec`
describes, which `gres segment --model OUT` runs on onnxruntime without torch or transformers
(`gres_cli.backends.sam3_onnx`).

    text.onnx     the expression's ids (padded to 32) -> the projected token features
    forward.onnx  B processed images + the token features -> the best query's mask logits,
                  the score b_n and the FPN features of each image

Each graph wraps the very code the torch backend runs (`get_text_features`;
`Sam3Backend.forward`). The region embedding e_n stays out of the graphs (the TorchScript
exporter does not translate its `adaptive_avg_pool2d` on an input of unknown size; docs/onnx.md):
the runtime pools it in numpy, and the self-check compares that numpy e_n with
`openvocab.region_embedding`. Otherwise the export checks itself as CLIPSeg's does; a failed
export leaves nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gres_cli.backends.group_rule import region_embedding_array
from gres_cli.backends.openvocab import region_embedding
from gres_cli.backends.openvocab_export import BackendExport, check_twin, export_backend_onnx
from gres_cli.backends.sam3 import TEXT_TOKENS, Sam3Backend, Sam3Text
from gres_cli.errors import GresError
from gres_cli.model import sam3_onnx_spec as spec
from gres_cli.model.export import (
    checked_sessions,
    export_graph,
    worst_error,
)
from gres_cli.model.onnx_tokenizer import Tokenizer

#: the self-check's inputs: expressions (one past 32 tokens: truncated), batch sizes and the
#: seed of its random images
CHECK_EXPRESSIONS = (
    "the small red circle",
    "a dog without a leash on the left",
    " ".join(["the big old wooden table next to a window"] * 3),
)
CHECK_BATCHES = (1, 3)
CHECK_SEED = 0
#: the checkpoints' model_types this export reads (facebook/sam3 ships a sam3_video config)
KINDS = ("sam3", "sam3_video")


class TextGraph(nn.Module):
    """text.onnx: one expression's ids (1 x 32) -> its token features (1 x 32 x D)."""

    def __init__(self, backend: Sam3Backend) -> None:
        super().__init__()
        self.net = backend.net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.net.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output


class ForwardGraph(nn.Module):
    """forward.onnx: B images against one expression -> mask logits, b_n, FPN features."""

    def __init__(self, backend: Sam3Backend) -> None:
        super().__init__()
        self.backend = backend
        self.net = backend.net  # registered: the exporter puts it in eval mode

    def forward(
        self, pixels: Tensor, text: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.backend.forward(pixels, Sam3Text(text, attention_mask))
        return out.mask_logits, out.score, out.features


def _ids(backend: Sam3Backend, expression: str) -> dict[str, Tensor]:
    """The ids the torch backend feeds its text model (`Sam3Backend.encode_text`)."""
    return backend.processor.tokenizer(
        [expression], padding="max_length", max_length=TEXT_TOKENS, truncation=True,
        return_tensors="pt",
    )  # fmt: skip


def export_graphs(backend: Sam3Backend, folder: Path, opset: int) -> None:
    ids = _ids(backend, CHECK_EXPRESSIONS[1])
    text_args = (ids["input_ids"], ids["attention_mask"])
    with torch.no_grad():
        features = TextGraph(backend)(*text_args)
    export_graph(TextGraph(backend), text_args, folder / spec.GRAPH_FILES[spec.TEXT],
            spec.TEXT_INPUTS, (spec.TEXT_FEATURES,), (), opset)  # fmt: skip
    s = backend.input_size
    pixels = torch.zeros(2, 3, s, s)  # batch 2: a batch of 1 would hide where it broadcasts
    export_graph(ForwardGraph(backend), (pixels, features, ids["attention_mask"]),
            folder / spec.GRAPH_FILES[spec.IMAGE], spec.IMAGE_INPUTS, spec.IMAGE_OUTPUTS,
            (spec.PIXELS, *spec.IMAGE_OUTPUTS), opset)  # fmt: skip


def self_check(backend: Sam3Backend, twin: Any, folder: Path) -> dict[str, float]:
    """Each graph valid ONNX, onnxruntime against torch (text: every check expression, one
    truncated; forward: random images, B = 1 and 3, against each expression's features); the
    runtime's numpy e_n against `openvocab.region_embedding` on torch's outputs; the folder's
    tokenizer through `tokenizers` alone gives transformers' ids; the numpy twin of the image
    processor gives transformers' pixels bit for bit. The worst error of each."""
    sessions = checked_sessions(folder, spec.GRAPH_FILES)
    errors = {spec.TEXT: 0.0, spec.IMAGE: 0.0, spec.EMBEDDING: 0.0}
    errors["image_processor"] = check_twin(backend, twin)
    tokenize = Tokenizer(folder, TEXT_TOKENS, pad=True)
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
                errors[spec.TEXT], worst_error(got, (want,), (spec.TEXT_FEATURES,))
            )
            text = torch.from_numpy(got[0])  # what the runtime has
            everything = ForwardGraph(backend)(pixels, text, want_ids["attention_mask"])
            for b in CHECK_BATCHES:
                inputs = (pixels[:b].numpy(), got[0], mask)
                feeds = dict(zip(spec.IMAGE_INPUTS, inputs, strict=True))
                out = sessions[spec.IMAGE].run(None, feeds)
                want = tuple(t[:b] for t in everything)
                errors[spec.IMAGE] = max(
                    errors[spec.IMAGE], worst_error(out, want, spec.IMAGE_OUTPUTS)
                )
                logits, features = want[0], want[2]
                embedding = region_embedding(features, logits.float().sigmoid())
                numpy_embedding = region_embedding_array(features.numpy(), logits.numpy())
                error = worst_error([numpy_embedding], (embedding,), (spec.EMBEDDING,))
                errors[spec.EMBEDDING] = max(errors[spec.EMBEDDING], error)
    return errors


SAM3_EXPORT = BackendExport(
    spec=spec,
    backend=Sam3Backend,
    kinds=KINDS,
    name="SAM 3",
    tag="sam3",
    about="SAM 3 is Meta's (SAM licence: the checkpoint's terms carry over to this export); "
    "gres adds its group rule (docs/backends.md) for group-wise referring expression "
    "segmentation.",
    max_tokens=lambda backend: TEXT_TOKENS,
    export_graphs=export_graphs,
    self_check=self_check,
)


def export_sam3_onnx(
    folder: Path, model_id: str, revision: str | None, out: Path, opset: int,
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Export the SAM 3 in (or named by) `folder` to an ONNX folder `out` (see the module)."""
    return export_backend_onnx(SAM3_EXPORT, folder, model_id, revision, out, opset, overwrite)
