"""`gres model export CLIPSEG OUT --format onnx`: a CLIPSeg checkpoint (or a gres-backend
settings folder over one, whose settings the export keeps) as two ONNX graphs, its tokenizer
and the settings of the numpy twin of its image processor: the folder
`gres_cli.model.clipseg_onnx_spec` describes, which `gres segment --model OUT` runs on
onnxruntime without torch or transformers (`gres_cli.backends.clipseg_onnx`).

    text.onnx   the expression's ids (unpadded, truncated at the text model's positions)
                -> the conditional embedding
    image.onnx  B processed images + the conditional embedding -> mask logits, the score b_n
                and the region embedding e_n of each image

Each graph wraps the very code the torch backend runs (`get_conditional_embeddings`;
`CLIPSegBackend.forward` then `openvocab.region_embedding`); the group rule is numpy in both
runtimes' reach (`group_rule`). The export checks itself as the GRSer export does (onnxruntime
against torch, onnx's checker, the tokenizer and the image processor's twin against
transformers') before OUT appears; a failed export leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gres_cli.backends import registry
from gres_cli.backends.clipseg import MODEL_TYPE as CLIPSEG
from gres_cli.backends.clipseg import CLIPSegBackend
from gres_cli.backends.openvocab import OpenVocabModel, region_embedding
from gres_cli.backends.settings import MODEL_TYPE as SETTINGS
from gres_cli.backends.settings import BackendSettings
from gres_cli.errors import GresError
from gres_cli.model import clipseg_onnx_spec as spec
from gres_cli.model import hub
from gres_cli.model.export import (
    CHECK_TOLERANCE,
    check_target,
    checked_sessions,
    export_graph,
    require_onnx,
    worst_error,
)
from gres_cli.model.image_processor import ImageProcessorTwin
from gres_cli.model.onnx_tokenizer import Tokenizer

#: the self-check's inputs: expressions (one past 77 tokens: truncated), batch sizes, the seed
#: of its random images, and the sizes (height, width) of the photos the twin is checked on
CHECK_EXPRESSIONS = (
    "the small red circle",
    "a dog without a leash on the left",
    " ".join(["the big old wooden table next to a window"] * 10),
)
CHECK_BATCHES = (1, 3)
CHECK_SEED = 0
CHECK_PHOTOS = ((37, 53), (480, 640), (7, 300), (1000, 77))


class TextGraph(nn.Module):
    """text.onnx: one expression's ids (1 x L) -> its conditional embedding (1 x D)."""

    def __init__(self, backend: CLIPSegBackend) -> None:
        super().__init__()
        self.net = backend.net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.net.get_conditional_embeddings(
            batch_size=1, input_ids=input_ids, attention_mask=attention_mask
        )


class ImageGraph(nn.Module):
    """image.onnx: B images against one conditional embedding -> logits, b_n, e_n."""

    def __init__(self, backend: CLIPSegBackend) -> None:
        super().__init__()
        self.backend = backend
        self.net = backend.net  # registered: the exporter puts it in eval mode

    def forward(self, pixels: Tensor, conditional: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.backend.forward(pixels, conditional)
        return out.mask_logits, out.score, region_embedding(out.features, out.region)


def load_backend(
    folder: Path,
    model_id: str,
    revision: str | None,
    backend_class: type[OpenVocabModel] = CLIPSegBackend,
    kinds: tuple[str, ...] = (CLIPSEG,),
) -> tuple[Any, dict]:
    """The backend (`backend_class`, of one of `kinds`) that `folder` holds or names (a
    gres-backend folder: with its settings), and the export's `source` facts; any other kind
    is a one-line GresError."""
    config = hub.read_config(folder)
    source: dict[str, Any] = {"model": model_id, "revision": revision}
    if config.get("model_type") == SETTINGS:
        settings = BackendSettings.from_dict(config, folder / hub.CONFIG_FILE)
        kind, backend = registry.open_vocabulary_folder(settings.backend, settings.revision)
        if kind not in kinds:
            raise GresError(
                f"{model_id}: settings for a {kind} backend; ONNX export supports "
                f"{registry.EXPORTABLE}"
            )
        source |= {"backend": settings.backend, "backend_revision": settings.revision}
        model = backend_class.from_folder(
            backend, settings.backend, settings.revision, experts=settings.experts,
            group_weight=settings.group_weight, margin=settings.margin, **settings.options,
        )  # fmt: skip
    else:
        model = backend_class.from_folder(folder, model_id, revision)
    return model, source


def processor_twin(image_processor: Any) -> ImageProcessorTwin:
    """The numpy twin of the checkpoint's image processor, or a one-line GresError naming the
    setting it does not reproduce."""
    ip = image_processor
    backend = getattr(ip, "backend", None)
    if backend != "torchvision":
        raise GresError(
            f"the checkpoint's image processor ({type(ip).__name__}, backend {backend}) is not "
            "one the ONNX runtime reproduces (transformers' torchvision ViTImageProcessor)"
        )
    size = ip.size if isinstance(ip.size, dict) else vars(ip.size)
    height, width = size.get("height"), size.get("width")
    refusals = {
        "size": not (height and width),
        "resample": ip.do_resize and int(getattr(ip, "resample", 2)) != 2,  # BILINEAR
        "do_center_crop": bool(getattr(ip, "do_center_crop", False)),
        "do_pad": bool(getattr(ip, "do_pad", False)),
    }
    for name, refused in refusals.items():
        if refused:
            raise GresError(
                f"the checkpoint's image processor sets {name}={getattr(ip, name, None)!r}: "
                "not reproduced by the ONNX runtime"
            )
    return ImageProcessorTwin(
        int(height), int(width), tuple(ip.image_mean), tuple(ip.image_std),  # type: ignore[arg-type]
        float(ip.rescale_factor), bool(ip.do_resize), bool(ip.do_rescale),
        bool(ip.do_normalize),
    )  # fmt: skip


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
    export_graph(ImageGraph(backend), (pixels, conditional), folder / spec.GRAPH_FILES[spec.IMAGE],
            spec.IMAGE_INPUTS, spec.IMAGE_OUTPUTS, (spec.PIXELS, *spec.IMAGE_OUTPUTS),
            opset)  # fmt: skip


def self_check(backend: CLIPSegBackend, twin: ImageProcessorTwin, folder: Path) -> dict:
    """Each graph valid ONNX, onnxruntime against torch (text: every check expression, one
    truncated; image: random images, B = 1 and 3, against each expression's embedding); the
    folder's tokenizer through `tokenizers` alone gives transformers' ids; the numpy twin of
    the image processor gives transformers' pixels on photos of odd sizes. The worst error of
    each (the twin's is 0: equal bit for bit, or the check fails)."""
    sessions = checked_sessions(folder, spec.GRAPH_FILES)
    errors = {spec.TEXT: 0.0, spec.IMAGE: 0.0, "image_processor": check_twin(backend, twin)}
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
            everything = ImageGraph(backend)(pixels, conditional)
            for b in CHECK_BATCHES:
                feeds = {spec.PIXELS: pixels[:b].numpy(), spec.CONDITIONAL: got[0]}
                out = sessions[spec.IMAGE].run(None, feeds)
                want = tuple(t[:b] for t in everything)
                errors[spec.IMAGE] = max(
                    errors[spec.IMAGE], worst_error(out, want, spec.IMAGE_OUTPUTS)
                )
    return errors


def check_twin(backend: OpenVocabModel, twin: ImageProcessorTwin) -> float:
    """The twin's pixels against the processor's on random photos of CHECK_PHOTOS' sizes."""
    from PIL import Image

    rng = np.random.default_rng(CHECK_SEED)
    for shape in CHECK_PHOTOS:
        photo = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        want = backend.preparer()(photo).numpy()
        got = twin(photo)
        if got.shape != want.shape or not np.array_equal(got, want):
            err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            raise GresError(
                f"self-check failed: the numpy image processor differs from the checkpoint's "
                f"on a {shape[1]} x {shape[0]} photo (by {err:.3g})"
            )
    return 0.0


def onnx_card(source: dict, config: dict[str, Any]) -> str:
    facts = config[spec.CONFIG_KEY]
    errors = ", ".join(f"{g} {e:.2g}" for g, e in facts["max_abs_error"].items())
    named = source.get("backend") or source["model"]
    settings = f" with the settings of `{source['model']}`" if source.get("backend") else ""
    return "\n".join(
        [
            "---",
            "library_name: gres",
            "pipeline_tag: image-segmentation",
            "tags: [gres, clipseg, onnx, group-wise-referring-segmentation]",
            "---",
            "",
            "# CLIPSeg with gres's group rule, ONNX export",
            "",
            f"An ONNX export of the CLIPSeg checkpoint `{named}`{settings}, made by `gres model "
            f"export` (opset {facts['opset']}, torch {facts['torch']}, transformers "
            f"{facts['transformers']}). CLIPSeg is Lüddecke & Ecker, CVPR 2022; gres adds its "
            "group rule (docs/backends.md) for group-wise referring expression segmentation.",
            "",
            "- graphs: " + ", ".join(f"`{f}`" for f in facts["graphs"].values()),
            f"- input size: {config['image_size']} px; experts K = {config['experts']}; group "
            f"weight {config['group_weight']:g}; default margin m = {config['margin']:g}",
            f"- self-check (onnxruntime {facts['onnxruntime']} against torch, worst absolute "
            f"error): {errors}",
            "",
            "```bash",
            'pip install "gres[onnx]"',
            'gres segment ./photos "the red umbrella" --model <this folder>',
            "```",
            "",
        ]
    )


def export_clipseg_onnx(
    folder: Path,
    model_id: str,
    revision: str | None,
    out: Path,
    opset: int,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the CLIPSeg in (or named by) `folder` to an ONNX folder `out`; config.json's
    "onnx" facts. Written beside `out`, moved into place after the self-check passed."""
    import transformers

    from grd_tools.fsutil import atomic_output_dir

    _, ort = require_onnx()
    overwrite = check_target(out, opset, overwrite)
    backend, source = load_backend(folder, model_id, revision)
    twin = processor_twin(backend.processor.image_processor)
    if (twin.height, twin.width) != (backend.input_size, backend.input_size):
        raise GresError(f"{model_id}: the image processor's size is not square")
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        export_graphs(backend, tmp, opset)
        backend.processor.tokenizer.save_pretrained(str(tmp))
        errors = self_check(backend, twin, tmp)
        config = {
            "model_type": spec.MODEL_TYPE,
            "image_size": backend.input_size,
            "max_tokens": backend.net.config.text_config.max_position_embeddings,
            "experts": backend.experts,
            "group_weight": backend.group_weight,
            "margin": backend.margin,
            "image_processor": twin.to_dict(),
            "clipseg": backend.net.config.to_dict(),
            spec.CONFIG_KEY: {
                "opset": opset,
                "onnxruntime": ort.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "graphs": dict(spec.GRAPH_FILES),
                "max_abs_error": errors,
                "tolerance": CHECK_TOLERANCE,
                "source": source,
            },
        }
        (tmp / hub.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(onnx_card(source, config))
    return config[spec.CONFIG_KEY]
