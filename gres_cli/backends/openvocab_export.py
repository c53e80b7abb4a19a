"""What the ONNX exports of the open-vocabulary backends share (`gres model export` of a
CLIPSeg or a SAM 3 checkpoint, or of a gres-backend settings folder over one): the backend a
folder holds or names, the numpy twin of its image processor and its check, and the export
itself (`export_backend_onnx`): graphs, tokenizer, config.json, card, written beside OUT and
moved into place once the self-check passed. What differs per backend is a `BackendExport`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from gres_cli.backends import registry
from gres_cli.backends.openvocab import OpenVocabModel
from gres_cli.backends.settings import MODEL_TYPE as SETTINGS
from gres_cli.backends.settings import BackendSettings
from gres_cli.errors import GresError
from gres_cli.model import hub
from gres_cli.model.export import CHECK_TOLERANCE, check_target, require_onnx
from gres_cli.model.image_processor import ImageProcessorTwin
from gres_cli.model.onnx_sessions import graphs_line

#: the photo sizes (height, width) the image processor's twin is checked on, and their seed
CHECK_PHOTOS = ((37, 53), (480, 640), (7, 300), (1000, 77))
CHECK_SEED = 0


@dataclass(frozen=True)
class BackendExport:
    """What one backend's export is made of."""

    spec: ModuleType  # the folder's contract (MODEL_TYPE, GRAPH_FILES, CONFIG_KEY)
    backend: type[OpenVocabModel]  # the torch backend it exports
    kinds: tuple[str, ...]  # the checkpoints' model_types it reads
    name: str  # "CLIPSeg": in the card
    tag: str  # "clipseg": the card's tag and config.json's key for the checkpoint's config
    about: str  # the card's sentence on the model (its paper, its licence)
    max_tokens: Callable[[Any], int]  # backend -> the tokens its text graph takes
    export_graphs: Callable[[Any, Path, int], None]  # backend, folder, opset
    self_check: Callable[[Any, ImageProcessorTwin, Path], dict[str, float]]


def load_backend(
    folder: Path,
    model_id: str,
    revision: str | None,
    backend_class: type[OpenVocabModel],
    kinds: tuple[str, ...],
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


def backend_card(how: BackendExport, source: dict, config: dict[str, Any]) -> str:
    """The export's README.md (a Hub model card)."""
    facts = config[how.spec.CONFIG_KEY]
    errors = ", ".join(f"{g} {e:.2g}" for g, e in facts["max_abs_error"].items())
    named = source.get("backend") or source["model"]
    settings = f" with the settings of `{source['model']}`" if source.get("backend") else ""
    return "\n".join(
        [
            "---",
            "library_name: gres",
            "pipeline_tag: image-segmentation",
            f"tags: [gres, {how.tag}, onnx, group-wise-referring-segmentation]",
            "---",
            "",
            f"# {how.name} with gres's group rule, ONNX export",
            "",
            f"An ONNX export of the {how.name} checkpoint `{named}`{settings}, made by `gres "
            f"model export` (opset {facts['opset']}, torch {facts['torch']}, transformers "
            f"{facts['transformers']}). {how.about}",
            "",
            graphs_line(facts["graphs"]),
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


def export_backend_onnx(
    how: BackendExport,
    folder: Path,
    model_id: str,
    revision: str | None,
    out: Path,
    opset: int,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the backend in (or named by) `folder` to an ONNX folder `out`; config.json's
    "onnx" facts. Written beside `out`, moved into place after the self-check passed."""
    import transformers

    from grd_tools.fsutil import atomic_output_dir

    _, ort = require_onnx()
    spec = how.spec
    overwrite = check_target(out, opset, overwrite)
    backend, source = load_backend(folder, model_id, revision, how.backend, how.kinds)
    twin = processor_twin(backend.processor.image_processor)
    if (twin.height, twin.width) != (backend.input_size, backend.input_size):
        raise GresError(f"{model_id}: the image processor's size is not square")
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        how.export_graphs(backend, tmp, opset)
        backend.processor.tokenizer.save_pretrained(str(tmp))
        errors = how.self_check(backend, twin, tmp)
        config = {
            "model_type": spec.MODEL_TYPE,
            "image_size": backend.input_size,
            "max_tokens": how.max_tokens(backend),
            "experts": backend.experts,
            "group_weight": backend.group_weight,
            "margin": backend.margin,
            "image_processor": twin.to_dict(),
            how.tag: backend.net.config.to_dict(),
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
        (tmp / "README.md").write_text(backend_card(how, source, config))
    return config[spec.CONFIG_KEY]
