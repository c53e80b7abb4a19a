"""Which graphs of the SAM 3 and Grounding DINO + SAM backends export to ONNX, and whether
onnxruntime then gives torch's numbers (issue 22, "the other backends"; docs/onnx.md, "Other
backends: what exports and what blocks it").

Each backend is built as the tests build it (tests/test_backends_sam.py: tiny random configs,
no Hub), loaded through its gres class, and each graph a torch-free runtime would need is
exported with torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, which needs the
`onnxscript` package) and with the TorchScript-based one (`dynamo=False`, what gres's GRSer and
CLIPSeg exports use), batch axis dynamic, traced at batch 2. A graph that exports is run on
onnxruntime (CPU) against torch twice: on the inputs it was traced with, and on other inputs
(batch 3, other photos: another shape of image inside the canvas, another expression), where a
value the trace froze shows up. The tolerance is the export self-check's: 1e-3 x max(1, the
largest magnitude of the output).

    sam3/text              ids (1 x 32) -> the projected token features (`encode_text`)
    sam3/forward           B images + the text features -> the best query's mask logits, b_n
                           and the FPN features (`Sam3Backend.forward`)
    sam3/image             the same with e_n (`openvocab.region_embedding`) in the graph
    grounded-sam/detector  B canvases + the ids -> Grounding DINO's logits and boxes
    grounded-sam/sam-embed B SAM canvases -> SAM's image embeddings
    grounded-sam/sam-mask  SAM's embeddings + one box per image -> the mask logits
    grounded-sam/image     the backend's whole pass (`GroundedSamBackend.forward`, then
                           `region_embedding`): mask logits, b_n, e_n

Also: whether the numpy twin of CLIPSeg's image processor reproduces SAM 3's, and how Grounding
DINO's BERT reads its boolean phrase mask under SDPA and eager attention. `--attention eager`
switches each network to eager attention where torch's outputs stay within the tolerance.

    PYTHONPATH=$PWD python benchmarks/probe_onnx_backends.py [--out DIR] [--only sam3]
        [--exporter dynamo] [--attention eager] [--static] [--graph NAME]

Prints one line a graph and exporter (the first line of the innermost error where one fails;
the whole traceback goes to DIR/NAME.EXPORTER.txt) and the library versions. The TorchScript
exporter also dumps the graph of a failed export on the output: the probe's own lines start
with a graph's or a network's name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

EXPRESSIONS = ("the red umbrella", "a red umbrella on the left")
TRACE_SIZES = ((70, 50), (64, 64))  # (width, height) of the photos traced on
OTHER_SIZES = ((90, 40), (33, 77), (100, 80))  # and of the photos checked after
TOLERANCE = 1e-3
STATIC = False  # --static: every axis as traced (batch 2), to tell dynamic-shape failures apart
VERSIONS = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx-ir")


@dataclass
class Graph:
    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    trace: tuple[Tensor, ...]
    other: tuple[Tensor, ...]
    batched: tuple[str, ...]  # inputs and outputs whose axis 0 is the batch


def photos(sizes: tuple[tuple[int, int], ...], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def pixels(prepare: Callable[[Image.Image], Tensor], sizes, seed: int) -> Tensor:
    return torch.stack([prepare(image) for image in photos(sizes, seed)])


# ---- SAM 3 ------------------------------------------------------------------------------------


class Sam3TextGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.net = backend.net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.net.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output


class Sam3ImageGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.backend, self.net = backend, backend.net

    def forward(self, images: Tensor, text: Tensor, attention_mask: Tensor):
        from gres_cli.backends.openvocab import region_embedding
        from gres_cli.backends.sam3 import Sam3Text

        out = self.backend.forward(images, Sam3Text(text, attention_mask))
        return out.mask_logits, out.score, region_embedding(out.features, out.region)


class Sam3ForwardGraph(nn.Module):
    """The backend's pass without gres's pooling: the model and its own glue alone."""

    def __init__(self, backend) -> None:
        super().__init__()
        self.backend, self.net = backend, backend.net

    def forward(self, images: Tensor, text: Tensor, attention_mask: Tensor):
        from gres_cli.backends.sam3 import Sam3Text

        out = self.backend.forward(images, Sam3Text(text, attention_mask))
        return out.mask_logits, out.score, out.features


def sam3_graphs(root: Path) -> tuple[list[Graph], dict[str, nn.Module]]:
    from test_backends_sam import build_tiny_sam3

    from gres_cli.backends.sam3 import Sam3Backend

    folder = build_tiny_sam3(root / "tiny-sam3")
    backend = Sam3Backend(folder, str(folder))
    with torch.no_grad():
        texts = [backend.encode_text(e) for e in EXPRESSIONS]
    tokens = [
        backend.processor.tokenizer(
            [e], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
        )
        for e in EXPRESSIONS
    ]
    ids = [(t["input_ids"], t["attention_mask"]) for t in tokens]
    prepare = backend.preparer()
    images = (
        (pixels(prepare, TRACE_SIZES, 0), texts[0].features, texts[0].attention_mask),
        (pixels(prepare, OTHER_SIZES, 1), texts[1].features, texts[1].attention_mask),
    )
    graphs = [
        Graph("sam3/text", Sam3TextGraph(backend), ("input_ids", "attention_mask"), ("text",),
              ids[0], ids[1], ()),
        Graph("sam3/forward", Sam3ForwardGraph(backend), ("images", "text", "attention_mask"),
              ("mask_logits", "score", "features"), *images,
              ("images", "mask_logits", "score", "features")),
        Graph("sam3/image", Sam3ImageGraph(backend), ("images", "text", "attention_mask"),
              ("mask_logits", "score", "embedding"), *images,
              ("images", "mask_logits", "score", "embedding")),
    ]  # fmt: skip
    return graphs, {"sam3": backend.net}


# ---- Grounding DINO + SAM ---------------------------------------------------------------------


class DetectorGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.net = backend.detector

    def forward(self, canvases: Tensor, input_ids: Tensor, attention_mask: Tensor, types: Tensor):
        m = canvases.shape[0]
        out = self.net(
            pixel_values=canvases[:, :3], pixel_mask=canvases[:, 3].round().long(),
            input_ids=input_ids.expand(m, -1), attention_mask=attention_mask.expand(m, -1),
            token_type_ids=types.expand(m, -1),
        )  # fmt: skip
        return out.logits, out.pred_boxes


class SamEmbedGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.net = backend.sam

    def forward(self, canvases: Tensor) -> Tensor:
        return self.net.get_image_embeddings(canvases[:, 4:7])


class SamMaskGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.net = backend.sam

    def forward(self, embeddings: Tensor, boxes: Tensor) -> Tensor:
        out = self.net(image_embeddings=embeddings, input_boxes=boxes[:, None])
        return out.pred_masks[:, 0, 0]


class GroundedSamImageGraph(nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.backend, self.detector, self.sam = backend, backend.detector, backend.sam

    def forward(self, canvases: Tensor, input_ids: Tensor, attention_mask: Tensor, types: Tensor):
        from gres_cli.backends.openvocab import region_embedding

        text = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": types}
        out = self.backend.forward(canvases, text)
        return out.mask_logits, out.score, region_embedding(out.features, out.region)


def grounded_sam_graphs(root: Path) -> tuple[list[Graph], dict[str, nn.Module]]:
    from test_backends_sam import build_tiny_grounding_dino, build_tiny_sam

    from gres_cli.backends.grounded_sam import GroundedSamBackend

    detector = build_tiny_grounding_dino(root / "tiny-gdino")
    sam = build_tiny_sam(root / "tiny-sam")
    backend = GroundedSamBackend(detector, str(detector), sam=str(sam))
    texts = [backend.encode_text(e) for e in EXPRESSIONS]
    ids = [(t["input_ids"], t["attention_mask"], t["token_type_ids"]) for t in texts]
    prepare = backend.preparer()
    trace, other = pixels(prepare, TRACE_SIZES, 0), pixels(prepare, OTHER_SIZES, 1)
    with torch.no_grad():
        embeddings = [backend.sam.get_image_embeddings(p[:, 4:7]) for p in (trace, other)]
    boxes = (  # x0, y0, x1, y1 in SAM's frame, one per image
        torch.tensor([[5.0, 8.0, 60.0, 40.0], [0.0, 0.0, 64.0, 64.0]]),
        torch.tensor([[10.0, 2.0, 80.0, 30.0], [3.0, 9.0, 30.0, 70.0], [0, 0, 99.0, 79.0]]),
    )
    text_names = ("input_ids", "attention_mask", "token_type_ids")
    graphs = [
        Graph("grounded-sam/detector", DetectorGraph(backend), ("canvases", *text_names),
              ("logits", "boxes"), (trace, *ids[0]), (other, *ids[1]),
              ("canvases", "logits", "boxes")),
        Graph("grounded-sam/sam-embed", SamEmbedGraph(backend), ("canvases",), ("embeddings",),
              (trace,), (other,), ("canvases", "embeddings")),
        Graph("grounded-sam/sam-mask", SamMaskGraph(backend), ("embeddings", "boxes"),
              ("mask_logits",), (embeddings[0], boxes[0]), (embeddings[1], boxes[1]),
              ("embeddings", "boxes", "mask_logits")),
        Graph("grounded-sam/image", GroundedSamImageGraph(backend), ("canvases", *text_names),
              ("mask_logits", "score", "embedding"), (trace, *ids[0]), (other, *ids[1]),
              ("canvases", "mask_logits", "score", "embedding")),
    ]  # fmt: skip
    detector = backend.detector.model
    return graphs, {
        "grounding-dino swin": detector.backbone.conv_encoder.model,
        "grounding-dino bert": detector.text_backbone,
        "sam": backend.sam,
    }


# ---- export and compare -----------------------------------------------------------------------


def key_line(error: BaseException) -> str:
    """The innermost cause's type and first line: the exporters wrap the real failure."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    first = next((line for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}"


def export(graph: Graph, path: Path, dynamo: bool) -> None:
    graph.module.eval()
    axes = {name: {0: "batch"} for name in graph.batched if not STATIC}
    # the text may be batch 1 against a batch of images: only the named axes are dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module, graph.trace, str(path), input_names=list(graph.inputs),
            output_names=list(graph.outputs), dynamic_axes=axes, opset_version=17 if not dynamo
            else 18, dynamo=dynamo, **({"external_data": False} if dynamo else {}),
        )  # fmt: skip


def torch_outputs(graph: Graph, args: tuple[Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = graph.module(*args)
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def relative_gap(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The largest |got - want| over the outputs, relative to max(1, |want|)."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"shape {g.shape} against {w.shape}")
        worst = max(worst, float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max())))
    return worst


def worst_error(session, graph: Graph, args: tuple[Tensor, ...]) -> float:
    """onnxruntime against torch on `args`: `relative_gap`."""
    wanted = {i.name for i in session.get_inputs()}  # an input the graph ignores is dropped
    feed = {n: a.numpy() for n, a in zip(graph.inputs, args, strict=True) if n in wanted}
    return relative_gap(session.run(None, feed), torch_outputs(graph, args))


def attempt(graph: Graph, out: Path, dynamo: bool) -> str:
    import onnx
    import onnxruntime as ort

    exporter = "dynamo" if dynamo else "torchscript"
    path = out / f"{graph.name.replace('/', '.')}.{exporter}.onnx"
    log = path.with_suffix(".txt")
    start = time.perf_counter()
    step = "export"
    try:
        export(graph, path, dynamo)
        seconds = time.perf_counter() - start
        model = onnx.load(str(path))
        ops = len(model.graph.node)
        step = "onnxruntime load"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        step = "run on the traced inputs"
        traced = worst_error(session, graph, graph.trace)
        step = "run on other inputs"
        other_args = graph.other
        if STATIC:  # the traced batch: other photos, as many as traced
            other_args = tuple(
                o[: len(t)] if n in graph.batched else o
                for n, t, o in zip(graph.inputs, graph.trace, graph.other, strict=True)
            )
        other = worst_error(session, graph, other_args)
    except Exception as e:  # a probe: every failure is a finding
        log.write_text(traceback.format_exc())
        return f"FAILS at {step}: {key_line(e)}"
    verdict = "equal" if max(traced, other) <= TOLERANCE else "DIFFERS"
    return (
        f"exports ({seconds:.1f} s, {ops} nodes); onnxruntime {verdict}: worst relative error "
        f"{traced:.1e} on the traced inputs, {other:.1e} on other inputs"
    )


def sam3_processor_twin() -> str:
    """Whether CLIPSeg's export's numpy twin of the image processor reproduces SAM 3's (the
    default 1008 px one) on photos of odd sizes: a SAM 3 runtime without torch needs one."""
    from transformers import Sam3ImageProcessor

    from gres_cli.backends.openvocab_export import processor_twin

    processor = Sam3ImageProcessor()
    try:
        twin = processor_twin(processor)
    except Exception as e:  # a probe: a refusal is a finding
        return f"refused: {key_line(e)}"
    gap = 0.0
    for image in photos(((53, 37), (640, 480), (300, 7), (77, 1000)), 2):
        want = processor(images=image, return_tensors="pt")["pixel_values"][0].numpy()
        gap = max(gap, float(np.abs(twin(image) - want).max()))
    return f"max |twin - Sam3ImageProcessor| {gap:g} at {processor.size.height} px, 4 photos"


def bert_phrase_mask(graph: Graph, bert: nn.Module) -> str:
    """How Grounding DINO's BERT reads the model's 4-D boolean phrase mask under SDPA and eager
    attention: against the same mask as an additive 0 / -inf one, run eagerly."""
    from transformers.models.grounding_dino import modeling_grounding_dino as gd

    ids, types = graph.trace[1], graph.trace[3]
    masks, positions = gd.generate_masks_with_special_tokens_and_transfer_map(
        ids, graph.module.net.model.special_tokens
    )
    boolean = masks[:, None]  # as GroundingDinoModel.forward passes it
    additive = torch.zeros(boolean.shape).masked_fill(~boolean, torch.finfo(torch.float32).min)
    default = bert.config._attn_implementation

    def run(kind: str, mask: Tensor) -> Tensor:
        bert.set_attn_implementation(kind)
        with torch.no_grad():
            return bert(
                input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=positions
            ).last_hidden_state

    want = run("eager", additive)
    sdpa, eager = run("sdpa", boolean), run("eager", boolean)
    bert.set_attn_implementation(default)
    gaps = [float((got - want).abs().max()) for got in (sdpa, eager)]
    return (
        "against eager attention with the mask as additive 0 / -inf: sdpa with the boolean "
        f"mask {gaps[0]:.1e}, eager with it {gaps[1]:.1e}"
    )


def switch_attention(graphs: list[Graph], networks: dict[str, nn.Module], kind: str) -> None:
    """Each network to `kind` attention where that keeps torch's outputs (within TOLERANCE of
    the library's default, over every graph); one printed line a network."""
    before = [torch_outputs(g, g.trace) for g in graphs]
    for name, net in networks.items():
        default = net.config._attn_implementation
        net.set_attn_implementation(kind)
        after = [torch_outputs(g, g.trace) for g in graphs]
        gap = max(relative_gap(a, b) for a, b in zip(after, before, strict=True))
        kept = gap <= TOLERANCE
        if kept:
            before = after  # the next network's gap: its own
        else:
            net.set_attn_implementation(default)
        print(
            f"{name:24} torch, {kind} attention against {default}: worst relative gap "
            f"{gap:.1e}: {'switched' if kept else f'NOT the same outputs, kept on {default}'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the graphs and tracebacks here")
    parser.add_argument("--only", choices=("sam3", "grounded-sam"))
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"))
    parser.add_argument("--graph", help="only the graphs whose name contains this")
    parser.add_argument("--static", action="store_true", help="no dynamic batch axis")
    parser.add_argument(
        "--attention", choices=("sdpa", "eager"), help="the models' attention implementation"
    )
    args = parser.parse_args()
    global STATIC
    STATIC = args.static
    torch.set_num_threads(1)
    for name in VERSIONS:
        try:
            print(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"{name} not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        builders = {"sam3": sam3_graphs, "grounded-sam": grounded_sam_graphs}
        for key, build in builders.items():
            if args.only not in (None, key):
                continue
            graphs, networks = build(Path(tmp))
            if key == "sam3":
                print(f"{'sam3/image-processor':24} {sam3_processor_twin()}", flush=True)
            else:
                line = bert_phrase_mask(graphs[0], networks["grounding-dino bert"])
                print(f"{'grounding-dino bert':24} {line}", flush=True)
            if args.attention:
                switch_attention(graphs, networks, args.attention)
            for graph in graphs:
                if args.graph and args.graph not in graph.name:
                    continue
                for dynamo in (True, False):
                    exporter = "dynamo" if dynamo else "torchscript"
                    if args.exporter not in (None, exporter):
                        continue
                    print(f"{graph.name:24} {exporter:11} {attempt(graph, out, dynamo)}",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
