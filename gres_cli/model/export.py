"""`gres model export MODEL OUT --format onnx`: a GRSer as three ONNX graphs that cover the
two-pass engine, plus its tokenizer and config (the folder `gres_cli.model.onnx_spec` describes).

    text.onnx    ids of (expression, "<no> " + expression) -> W, mask, L, L_anti
    encode.onnx  pass 1: pixels + text features -> F_1..F_4, M_l, p, s_pos, s_neg
    query.onnx   pass 2: F_1..F_4 + L, L_anti + K expert slots and their validity -> mask
                 logits, d_pos, d_neg

Each graph wraps the very torch method the torch runtime calls (`TextEncoder.features`,
`GRSer.encode` / `expert_scores`, `GRSer.query_slots`), so the two runtimes share one
definition of the model. Pass 2 always takes K expert slots (`grser.expert_slots`): the graph's
shapes do not depend on the group size. The export checks itself before it reports success:
onnxruntime against torch on a few inputs, the worst error of each graph written to config.json.
onnx and onnxruntime are optional (`pip install "gres[onnx]"`), imported only here.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gres_cli.errors import GresError
from gres_cli.model import hub
from gres_cli.model import onnx_spec as spec
from gres_cli.model.encoders import NEGATION_TOKEN, TextFeatures
from gres_cli.model.grser import GRSer, expert_slots
from gres_cli.model.kinds import GRSER, GRSER_ONNX, model_kind
from gres_cli.model.onnx_sessions import graphs_line, weights_file
from gres_cli.model.onnx_tokenizer import Tokenizer

#: the self-check's inputs: expressions, batch sizes, and the seed of its random images
CHECK_EXPRESSIONS = ("the small red circle", "a dog without a leash on the left")
CHECK_BATCHES = (1, 3)
CHECK_SEED = 0
#: the opsets this export supports: scaled_dot_product_attention (BERT) needs 14; torch's
#: TorchScript-based exporter goes up to its own maximum
MIN_OPSET = 14


def max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


#: the self-check fails when a graph's worst error exceeds this, relative to max(1, max |torch|)
CHECK_TOLERANCE = 1e-3

if f"{NEGATION_TOKEN} " != spec.ANTI_PREFIX:  # the runtime builds L_anti's text from the spec
    raise RuntimeError("onnx_spec.ANTI_PREFIX disagrees with the model's negation token")


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or a one-line GresError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise GresError(
            f"ONNX export needs onnx and onnxruntime ({e.name} is missing): "
            'pip install "gres[onnx]"'
        ) from None
    return onnx, onnxruntime


class TextGraph(nn.Module):
    """text.onnx: ids and masks of (expression, anti-expression), 2 x T -> W, mask, L, L_anti."""

    def __init__(self, net: GRSer) -> None:
        super().__init__()
        self.text_encoder = net.text_encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        words, mask, sentence = self.text_encoder.features(input_ids[:1], attention_mask[:1])
        _, _, anti = self.text_encoder.features(input_ids[1:], attention_mask[1:])
        return words, mask, sentence, anti


class EncodeGraph(nn.Module):
    """encode.onnx: pass 1 of B images for one expression."""

    def __init__(self, net: GRSer) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: Tensor, *text: Tensor) -> tuple[Tensor, ...]:
        b = pixel_values.shape[0]
        features = TextFeatures(*(t.expand(b, *t.shape[1:]) for t in text))
        enc = self.net.encode(pixel_values, features)
        scores = self.net.expert_scores(pixel_values, features, enc)
        return (*enc.maps, enc.language_heatmap, enc.prototypes, scores.s_pos, scores.s_neg)


class QueryGraph(nn.Module):
    """query.onnx: pass 2 of B images against K expert slots."""

    def __init__(self, net: GRSer) -> None:
        super().__init__()
        self.net = net
        self.stages = len(net.config.swin_depths)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        maps, (sentence, anti, experts, expert_valid) = inputs[: self.stages], inputs[self.stages :]
        b = maps[0].shape[0]
        logits, *_, d_pos, d_neg, _ = self.net.query_slots(
            list(maps), sentence.expand(b, -1), anti.expand(b, -1), experts, expert_valid
        )
        return logits, d_pos, d_neg


def load_grser(model_id: str, revision: str | None = None) -> GRSer:
    """The GRSer at `model_id` (folder or Hub id); any other kind of model is a one-line error."""
    folder = hub.resolve_model_dir(model_id, revision)
    kind = model_kind(hub.read_config(folder))
    if kind == GRSER_ONNX:
        raise GresError(f"{model_id}: already an ONNX export")
    if kind != GRSER:
        raise GresError(f"{model_id}: a {kind} model, not a GRSer (gres model export takes it)")
    return GRSer.from_pretrained(folder)


def _tokenize(net: GRSer, expression: str) -> dict[str, Tensor]:
    """What text.onnx takes: row 0 the expression, row 1 its anti-expression."""
    return net.text_encoder.tokenize([expression, spec.ANTI_PREFIX + expression])


def export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    batched: tuple[str, ...],
    opset: int,
    axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Trace `module` on `args` into `path` (then `simplify` it): axis 0 of the `batched`
    names dynamic ("batch"), and the axes `axes` names (e.g. a text's length)."""
    import warnings

    # eval first: the exporter restores the wrapper's mode afterwards, and a fresh module is in
    # training mode, which would switch the model's dropout on for the self-check
    module.eval()
    with warnings.catch_warnings():  # the tracer's notes on Python ints are not the user's
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in batched} | (axes or {}),
                opset_version=opset,
                dynamo=False,
            )
        except (torch.onnx.errors.OnnxExporterError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GresError(f"torch cannot export {path.name} at opset {opset}: {first}") from None
    simplify(path)


def simplify(path: Path) -> None:
    """Rewrite the graph at `path` as onnxruntime's basic optimisations leave it: constants
    folded, redundant nodes removed, half the nodes of torch's trace (encode.onnx of the demo
    model: 1886 -> 912). Basic rewrites keep to standard ONNX ops (any runtime runs the graph);
    each load then skips that work: loading the demo export's three graphs took 210 ms
    instead of 330 (median of 5, this 2-core CPU), of a one-image `gres segment` call's 1.1 s.

    The weights go beside the graph as ONNX external data (`weights_file`), which onnxruntime
    maps into memory instead of parsing and copying them: CLIPSeg's two graphs (573 MiB) opened
    in 0.41 s instead of 0.75 s, 0.15 s without pre-packing (`open_sessions`). It also keeps
    a graph under protobuf's 2 GiB limit whatever the model's size."""
    onnx, ort = require_onnx()
    from onnx.external_data_helper import set_external_data

    rewritten = path.with_suffix(".basic.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(rewritten)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(rewritten))
    # onnxruntime declares every domain it knows; keep those the graph uses (ai.onnx: "")
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    weights = path.with_name(weights_file(path.name))
    weights.unlink(missing_ok=True)  # onnx appends to an existing file
    # the main graph's weights only: onnxruntime checks a subgraph's (an If branch's) with
    # onnx's checker, which refuses a weights file that is a symbolic link, as the Hugging
    # Face cache's files are
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) >= 1024:
            set_external_data(tensor, location=weights.name)
    onnx.save(model, str(path))
    if weights.exists():  # none for a graph without large weights (a region graph of no layers)
        weights.chmod(stat.S_IMODE(path.stat().st_mode))  # onnx makes it private; as the graph
    rewritten.unlink()


def export_graphs(net: GRSer, folder: Path, opset: int) -> None:
    """Write text.onnx, encode.onnx and query.onnx of `net` into `folder`."""
    c = net.config
    stages = len(c.swin_depths)
    maps = spec.map_names(stages)
    ids = _tokenize(net, CHECK_EXPRESSIONS[0])
    text_args = (ids["input_ids"], ids["attention_mask"])
    with torch.no_grad():
        features = TextGraph(net)(*text_args)
        # traced at batch 2: a batch of 1 would hide where the batch must be broadcast
        pixels = torch.zeros(2, 3, c.image_size, c.image_size)
        encoded = EncodeGraph(net)(pixels, *features)
    files = {k: folder / v for k, v in spec.GRAPH_FILES.items()}
    export_graph(TextGraph(net), text_args, files[spec.TEXT], spec.TEXT_INPUTS, spec.TEXT_FEATURES,
            (), opset)  # fmt: skip
    outputs = spec.encode_outputs(stages)
    export_graph(EncodeGraph(net), (pixels, *features), files[spec.ENCODE], spec.encode_inputs(),
            outputs, (spec.PIXELS, *outputs), opset)  # fmt: skip
    slots, valid = expert_slots(encoded[stages + 1][:1], c.experts)
    query_args = (*encoded[:stages], features[2], features[3], slots, valid)
    export_graph(QueryGraph(net), query_args, files[spec.QUERY], spec.query_inputs(stages),
            spec.QUERY_OUTPUTS, (*maps, *spec.QUERY_OUTPUTS), opset)  # fmt: skip


def checked_sessions(folder: Path, files: dict[str, str]) -> dict[str, Any]:
    """The self-check's first step, shared by every export: each graph (name -> file in
    `folder`) passes onnx's full checker (GresError naming it otherwise) and opens in
    onnxruntime, as the runtime will open it."""
    from gres_cli.model.onnx_sessions import open_sessions

    onnx, _ = require_onnx()
    for file in files.values():
        try:
            onnx.checker.check_model(str(folder / file), full_check=True)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0]
            raise GresError(f"self-check failed: {file} is not valid ONNX ({first})") from None
    return open_sessions({name: folder / file for name, file in files.items()})


def worst_error(ort_out: list[Any], torch_out: tuple[Tensor, ...], names: tuple[str, ...]) -> float:
    """The largest |onnxruntime - torch| over the outputs; a GresError when it is too large."""
    worst = 0.0
    for name, got, want in zip(names, ort_out, torch_out, strict=True):
        want = want.detach().float().numpy()
        if got.shape != want.shape:
            raise GresError(f"self-check: {name} has shape {got.shape}, torch {want.shape}")
        err = float(abs(got.astype("float64") - want).max()) if want.size else 0.0
        scale = max(1.0, float(abs(want).max()) if want.size else 0.0)
        if not err <= CHECK_TOLERANCE * scale:  # NaN fails too
            raise GresError(
                f"self-check failed: onnxruntime's {name} differs from torch by {err:.3g} "
                f"(tolerance {CHECK_TOLERANCE * scale:.3g})"
            )
        worst = max(worst, err)
    return worst


def self_check(net: GRSer, folder: Path) -> dict[str, float]:
    """Validate the graphs in `folder` (onnx's checker, with shape inference), run them on
    onnxruntime and torch; the worst error of each graph.

    text: each of CHECK_EXPRESSIONS; encode: random images, B in CHECK_BATCHES; query: those
    images' maps against the top-K' experts of a pool of max(K, 3) images, K' = 1 and K, each B.
    Also: `tokenizers` alone, reading the folder's tokenizer.json, gives the ids transformers
    gives (what the torch-free runtime feeds text.onnx)."""
    c = net.config
    stages = len(c.swin_depths)
    sessions = checked_sessions(folder, spec.GRAPH_FILES)
    errors = dict.fromkeys(spec.GRAPH_FILES, 0.0)
    _check_tokenizer(net, folder)
    generator = torch.Generator().manual_seed(CHECK_SEED)
    pool = max(c.experts, *CHECK_BATCHES)
    pixels = torch.randn(pool, 3, c.image_size, c.image_size, generator=generator)
    with torch.no_grad():
        for expression in CHECK_EXPRESSIONS:
            ids = {k: v.numpy() for k, v in _tokenize(net, expression).items()}
            want = net.encode_text([expression])
            got = sessions[spec.TEXT].run(list(spec.TEXT_FEATURES), ids)
            errors[spec.TEXT] = max(
                errors[spec.TEXT], worst_error(got, want._tensors(), spec.TEXT_FEATURES)
            )
            text = TextFeatures(*(torch.from_numpy(t) for t in got))  # what the runtime has
            feeds = dict(zip(spec.TEXT_FEATURES, got, strict=True))
            enc = net.encode(pixels, text)
            scores = net.expert_scores(pixels, text, enc)
            everything = (*enc.maps, enc.language_heatmap, enc.prototypes, scores.s_pos,
                          scores.s_neg)  # fmt: skip
            names = spec.encode_outputs(stages)
            for b in CHECK_BATCHES:
                got = sessions[spec.ENCODE].run(
                    list(names), {spec.PIXELS: pixels[:b].numpy(), **feeds}
                )
                want = tuple(t[:b] for t in everything)
                errors[spec.ENCODE] = max(errors[spec.ENCODE], worst_error(got, want, names))
            for k in sorted({1, c.experts}):
                slots, valid = expert_slots(scores.prototypes[net.select_experts(scores, k)],
                                            c.experts)  # fmt: skip
                for b in CHECK_BATCHES:
                    maps = [m[:b] for m in enc.maps]
                    out = net.query_slots(
                        maps, text.sentence.expand(b, -1), text.anti.expand(b, -1), slots, valid
                    )
                    want = (out[0], out[5], out[6])
                    query_feeds = {
                        **{n: m.numpy() for n, m in zip(spec.map_names(stages), maps, strict=True)},
                        "sentence": feeds["sentence"],
                        "anti": feeds["anti"],
                        spec.EXPERTS: slots.numpy(),
                        spec.EXPERT_VALID: valid.numpy(),
                    }
                    got = sessions[spec.QUERY].run(list(spec.QUERY_OUTPUTS), query_feeds)
                    errors[spec.QUERY] = max(
                        errors[spec.QUERY], worst_error(got, want, spec.QUERY_OUTPUTS)
                    )
    return errors


def _check_tokenizer(net: GRSer, folder: Path) -> None:
    """The folder's tokenizer.json read by the torch-free runtime's own `Tokenizer`
    (`tokenizers` alone, padding and truncation at T) gives transformers' ids for every check
    expression and its anti-expression."""
    tokenize = Tokenizer(folder, net.config.max_tokens)
    for expression in CHECK_EXPRESSIONS:
        want = _tokenize(net, expression)
        texts = [expression, spec.ANTI_PREFIX + expression]
        ids, mask = tokenize(texts)
        for row, text in enumerate(texts):
            if ids[row].tolist() != want["input_ids"][row].tolist() or (
                mask[row].tolist() != want["attention_mask"][row].tolist()
            ):
                raise GresError(
                    f"self-check failed: tokenizer.json read by tokenizers tokenizes {text!r} "
                    "differently from the model's tokenizer"
                )


def onnx_card(source: str, config: dict[str, Any]) -> str:
    """README.md of an ONNX model folder."""
    facts = config[spec.CONFIG_KEY]
    errors = ", ".join(f"{g} {e:.2g}" for g, e in facts["max_abs_error"].items())
    return "\n".join(
        [
            "---",
            "library_name: gres",
            "pipeline_tag: image-segmentation",
            "tags: [gres, grser, onnx, group-wise-referring-segmentation]",
            "---",
            "",
            f"# GRSer ({config.get('name') or 'custom'}), ONNX export",
            "",
            f"An ONNX export of the GRSer model `{source}` made by `gres model export` (opset "
            f"{facts['opset']}, torch {facts['torch']}). GRSer is the model of *Advancing "
            "Referring Expression Segmentation Beyond Single Image* (Wu et al., ICCV 2023); "
            "GRES here means GROUP-wise referring expression segmentation.",
            "",
            graphs_line(facts["graphs"]),
            f"- input size: {config.get('image_size')} px; experts K = {config.get('experts')}; "
            f"default margin m = {config.get('margin')}",
            f"- self-check (onnxruntime {facts['onnxruntime']} against torch, worst absolute "
            f"error per graph): {errors}",
            "",
            "```bash",
            'pip install "gres[onnx]"',
            'gres segment ./photos "the red umbrella" --model <this folder>',
            "```",
            "",
        ]
    )


def check_target(out: Path, opset: int, overwrite: bool) -> bool:
    """Refuse (GresError, one line) an opset the export does not support and an `out` that
    holds something, unless `overwrite`; whether `out` is to be replaced (an empty folder
    holds nothing to lose)."""
    if not MIN_OPSET <= opset <= max_opset():
        raise GresError(f"--opset {opset}: the export supports opsets {MIN_OPSET} to {max_opset()}")
    if out.is_dir() and not any(out.iterdir()):
        return True
    if out.exists() and not overwrite:
        raise GresError(f"{out}: already exists (pass --overwrite to replace it)")
    return overwrite


def export_onnx(
    model_id: str,
    out: Path,
    opset: int = spec.DEFAULT_OPSET,
    revision: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export `model_id` to an ONNX model folder `out`; returns config.json's "onnx" facts.

    Written into a temporary folder beside `out` and moved into place only after the self-check
    passed: a failed export leaves nothing. An existing non-empty `out` is refused unless
    `overwrite`."""
    from grd_tools.fsutil import atomic_output_dir

    _, ort = require_onnx()
    overwrite = check_target(out, opset, overwrite)
    net = load_grser(model_id, revision).eval()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        export_graphs(net, tmp, opset)
        net.tokenizer.save_pretrained(str(tmp))
        errors = self_check(net, tmp)
        config = net.config.to_dict()
        config["model_type"] = spec.MODEL_TYPE
        config[spec.CONFIG_KEY] = {
            "opset": opset,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "graphs": dict(spec.GRAPH_FILES),
            "max_abs_error": errors,
            "source": {"model": model_id, "revision": revision},
        }
        (tmp / hub.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(onnx_card(model_id, config))
    return config[spec.CONFIG_KEY]
