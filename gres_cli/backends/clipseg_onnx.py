"""An ONNX export of CLIPSeg (`gres model export CLIPSEG OUT --format onnx`) behind the engine's
model protocol, on onnxruntime: numpy, Pillow and `tokenizers`, no torch, no transformers.

The folder's contract is gres_cli.model.clipseg_onnx_spec. Each step computes what the torch
backend (`clipseg.CLIPSegBackend` with `openvocab.OpenVocabModel`'s group rule) computes:
  text     the expression's ids (`tokenizers`, truncated at the text model's positions) ->
           text.onnx -> the conditional embedding, once per job;
  images   the checkpoint's image processor's numpy twin (`model.image_processor`), in the
           loader's threads;
  pass 1   image.onnx -> mask logits, the score b_n, the vision tokens the decoder read last;
           region.onnx -> the region embedding e_n, unless the image is alone (the only one
           of its group, or --no-group: the group step never reads e_n, and the vision
           transformer's last layers are skipped);
  group    the experts' prototype and radius (`group_rule`, numpy);
  pass 2   d_pos, d_neg from the cached b_n and e_n; the backend's own score and call in
           every record (backend_score, backend_present), as the torch backend writes them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gres_cli.backends.group_rule import (
    GroupPrototypeArray,
    GroupRuleExtras,
    NoExtraSettings,
    group_distances_array,
    group_prototype_array,
)
from gres_cli.backends.protocol import Description, FirstPass, SecondPass
from gres_cli.backends.registry import OnnxExportKind
from gres_cli.errors import ModelLoadError
from gres_cli.model import clipseg_onnx_spec as spec
from gres_cli.model import hub
from gres_cli.model.image_processor import ImageProcessorTwin
from gres_cli.model.onnx_sessions import open_sessions
from gres_cli.model.onnx_tokenizer import Tokenizer
from gres_cli.model.preprocess import probability_to_original_array

EXTRA = "gres[onnx]"
REEXPORT = "re-export the model (gres model export) or restore its config.json"


@dataclass
class RegionItemArray:
    """What pass 1 keeps of one image for pass 2: mask logits (S x S), score b, embedding e."""

    mask_logits: np.ndarray
    score: np.ndarray
    embedding: np.ndarray


def _number(config: dict[str, Any], key: str, where: Path, integer: bool = False) -> Any:
    value = config.get(key)
    if integer:
        if type(value) is not int or value < 1:
            raise ModelLoadError(f"{where}: {key} must be an integer >= 1")
    elif type(value) not in (int, float) or not np.isfinite(value):
        raise ModelLoadError(f"{where}: {key} must be a finite number")
    return value


class CLIPSegOnnxModel(GroupRuleExtras, OnnxExportKind):
    """A CLIPSeg ONNX folder as a `GroupModel` (runtime "numpy"). The base of SAM 3's
    (`sam3_onnx`), which differs in its folder's graphs, its tokens and its first pass."""

    kind = spec.MODEL_TYPE
    title = "CLIPSeg ONNX export"
    onnx_spec: ClassVar[Any] = spec  # the folder's contract
    pad_tokens = False  # CLIPSeg's backend tokenizes one expression unpadded
    runtime = "numpy"
    threshold = 0.5  # CLIPSeg's customary threshold t on b_n: the default m is 2 t - 1 = 0
    Settings: ClassVar[type] = NoExtraSettings

    def __init__(
        self,
        folder: Path,
        group: bool = True,
        experts: int | None = None,
        group_weight: float | None = None,
        margin: float | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401  (here: a missing extra is one line, below)
        except ImportError:
            raise ModelLoadError(
                f'{folder}: an ONNX model needs onnxruntime: pip install "{EXTRA}"'
            ) from None
        config = hub.read_config(folder)
        where = folder / hub.CONFIG_FILE
        self.input_size = _number(config, "image_size", where, integer=True)
        self.max_tokens = _number(config, "max_tokens", where, integer=True)
        self.group = group
        if experts is None:
            experts = _number(config, "experts", where, integer=True)
        self.experts = experts
        self.max_experts = None  # the rule takes any K
        if group_weight is None:
            group_weight = _number(config, "group_weight", where)
        self.group_weight = float(group_weight)
        self.margin = float(_number(config, "margin", where) if margin is None else margin)
        try:
            self.twin = ImageProcessorTwin.from_dict(config.get("image_processor"))
        except ValueError as e:
            raise ModelLoadError(f"{where}: {e}") from None
        self.tokenize = Tokenizer(folder, self.max_tokens, pad=self.pad_tokens)
        self._truncated: set[str] = set()
        self.facts = config
        self.config = {
            "model_type": self.kind,
            "checkpoint": str(folder),
            "experts": self.experts,
            "group_weight": self.group_weight,
            "margin": self.margin,
        }
        contract = self.onnx_spec
        graphs = (config.get(contract.CONFIG_KEY) or {}).get("graphs") or contract.GRAPH_FILES
        files = {}
        for name in contract.GRAPH_FILES:
            file = graphs.get(name) if isinstance(graphs, dict) else None
            if not isinstance(file, str) or Path(file).name != file:
                raise ModelLoadError(
                    f"{where}: graph {name!r} must be a file in the model folder"
                    + ("" if not isinstance(graphs, dict) or name in graphs else
                       f" (an export by an earlier gres has none: {REEXPORT})")
                )  # fmt: skip
            files[name] = folder / file
        self.sessions = open_sessions(files, threads)
        self._check_graphs(where, {name: path.name for name, path in files.items()})

    def _check_graphs(self, where: Path, files: dict[str, str]) -> None:
        """Refuse (ModelLoadError, one line) a config.json that disagrees with the inputs its
        graphs declare (a graph named for the other, an edited size), before any image is
        read: else onnxruntime failed mid-run with a ValueError or InvalidArgument traceback."""
        contract = self.onnx_spec
        fix = REEXPORT
        declared = {
            name: {i.name: i.shape for i in session.get_inputs()}
            for name, session in self.sessions.items()
        }
        for name, inputs in contract.GRAPH_INPUTS.items():
            if set(declared[name]) != set(inputs):
                raise ModelLoadError(
                    f"{where}: the {name} graph {files[name]} takes "
                    f"{', '.join(declared[name])}, not {', '.join(inputs)}; {fix}"
                )
        side = (declared[contract.IMAGE][contract.PIXELS] or [None] * 4)[2:]
        sizes = {
            '"image_size"': (self.input_size, self.input_size),
            '"image_processor"': (self.twin.height, self.twin.width),
        }
        for key, size in sizes.items():
            if any(isinstance(n, int) and n != s for n, s in zip(side, size, strict=False)):
                raise ModelLoadError(
                    f"{where}: {key} makes {size[0]} x {size[1]} pixels but "
                    f"{files[contract.IMAGE]} takes {side}; {fix}"
                )

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        checkpoint: str,
        revision: str | None,
        *,
        group: bool = True,
        token: str | bool | None = None,
        experts: int | None = None,
        group_weight: float | None = None,
        margin: float | None = None,
        **extra: Any,
    ) -> CLIPSegOnnxModel:
        """The export in `folder` with its own settings, or a gres-backend folder's."""
        if extra:
            raise ModelLoadError(
                f"{checkpoint}: a {sorted(extra)[0]} setting does not pair with {cls.kind}"
            )
        model = cls(folder, group=group, experts=experts, group_weight=group_weight, margin=margin)
        model.config["checkpoint"], model.config["revision"] = checkpoint, revision
        return model

    def describe(self) -> Description:
        facts = self.facts.get(self.onnx_spec.CONFIG_KEY) or {}
        source = facts.get("source") or {}
        rows = [
            ("exported from", str(source.get("model"))),
            *((("backend", str(source["backend"])),) if source.get("backend") else ()),
            ("input size", f"{self.input_size} px"),
            ("experts K", str(self.experts)),
            ("group weight", f"{self.group_weight:g}"),
            ("default margin m", f"{self.margin:g}"),
            ("opset", str(facts.get("opset"))),
            (
                "exported with",
                f"torch {facts.get('torch')}, transformers {facts.get('transformers')}, "
                f"onnxruntime {facts.get('onnxruntime')}",
            ),
            ("graphs", ", ".join((facts.get("graphs") or {}).values())),
            *(
                (f"self-check: {graph}", f"max abs error {error:.1e}")
                for graph, error in (facts.get("max_abs_error") or {}).items()
            ),
        ]
        return Description(self.title, rows, {"config": self.facts})

    def to(self, device: Any) -> CLIPSegOnnxModel:
        return self  # the CPU (the runtime refuses other devices)

    def preparer(self) -> ImageProcessorTwin:
        return self.twin

    def model_input(self, prepared: np.ndarray) -> np.ndarray:
        return prepared  # the processor's output already

    def encode_text(self, expression: str) -> np.ndarray:
        """The conditional embedding (1 x D), once per job; an expression past the text
        model's positions is truncated to them and said once on stderr (as the torch
        backend does)."""
        ids, mask = self.tokens(expression)
        feeds = dict(zip(spec.TEXT_INPUTS, (ids, mask), strict=True))
        return self.sessions[spec.TEXT].run(None, feeds)[0]

    def tokens(self, expression: str) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) of one expression (1 x L); one past the text model's
        positions is truncated to them and said once on stderr (as the torch backend does)."""
        ids, mask = self.tokenize([expression])
        if ids.shape[1] >= self.max_tokens and expression not in self._truncated:
            tokens = self.tokenize.count(expression)
            if tokens > self.max_tokens:
                self._truncated.add(expression)
                shown = expression if len(expression) <= 60 else expression[:57] + "..."
                print(
                    f"gres: warning: the expression {shown!r} has {tokens} tokens; the "
                    f"{self.kind} text model reads {self.max_tokens}: truncated to them",
                    file=sys.stderr,
                )
        return ids, mask

    def first_pass(self, pixels: np.ndarray, text: np.ndarray, alone: bool = False) -> FirstPass:
        """b_n and e_n of B images; alone, e_n is not computed (NaN: nothing reads it)."""
        feeds = {spec.PIXELS: pixels.astype(np.float32, copy=False), spec.CONDITIONAL: text}
        logits, score, deep = self.sessions[spec.IMAGE].run(None, feeds)
        if alone:
            emb = np.full((len(score), deep.shape[-1]), np.nan, np.float32)
        else:
            feeds = dict(zip(spec.REGION_INPUTS, (deep, logits), strict=True))
            emb = self.sessions[spec.REGION].run(None, feeds)[0]
        items = [RegionItemArray(logits[i], score[i], emb[i]) for i in range(len(score))]
        return FirstPass({"score": score, "embedding": emb}, items)

    def choose_experts(self, summary: dict[str, np.ndarray], k: int) -> GroupPrototypeArray | None:
        if not self.group:
            return None
        return group_prototype_array(summary["score"], summary["embedding"], k)

    def second_pass(
        self, pixels: np.ndarray | None, text: np.ndarray, experts: Any, items: list | None
    ) -> SecondPass:
        if items is None:
            alone = experts is None or not experts.active  # no group term: e_n goes unread
            items = self.first_pass(pixels, text, alone).items
        scores = np.stack([it.score for it in items]).astype(np.float32)
        emb = np.stack([it.embedding for it in items])
        d_pos, d_neg = group_distances_array(scores, emb, experts, self.group_weight)
        alone_pos, alone_neg = group_distances_array(scores, emb, None, 0.0)
        extras = {"backend_score": scores, "alone_d_pos": alone_pos, "alone_d_neg": alone_neg}
        logits = np.stack([it.mask_logits for it in items])
        return SecondPass(d_pos, d_neg, logits, extras)

    def probability_at(self, mask_logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return probability_to_original_array(mask_logits, size)
