"""An ONNX export of GRSer (`gres model export --format onnx`) behind the engine's model
protocol, on onnxruntime: numpy arrays, the `tokenizers` library, no torch, no transformers.

The folder's contract (graph files, tensor names and shapes) is gres_cli.model.onnx_spec:
  text    the expression and ANTI_PREFIX + expression -> W, its mask, L, L_anti;
  pass 1  encode: normalised pixels + text -> F_1..F_4, M_l, p_n, s_pos, s_neg;
  group   the top-K experts in hierarchizer order (`expert_order`, numpy, as torch's);
  pass 2  query: F_1..F_4 + L, L_anti + K expert slots (the unused ones masked out by
          expert_valid) -> mask logits at the input size, d_pos, d_neg.
Each step computes what GRSerAdapter (gres_cli.backends.grser) computes with torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grd_tools.errors import GRDError
from grd_tools.paths import check_relative
from gres_cli.backends.protocol import Description, FirstPass, SecondPass, WithoutExtras
from gres_cli.backends.registry import OnnxExportKind
from gres_cli.errors import ModelLoadError
from gres_cli.model import hub
from gres_cli.model import onnx_spec as spec
from gres_cli.model.onnx_sessions import open_sessions
from gres_cli.model.onnx_tokenizer import Tokenizer
from gres_cli.model.preprocess import (
    image_to_array,
    normalize_array,
    probability_to_original_array,
)

#: the pip extra that brings onnxruntime
EXTRA = "gres[onnx]"


def expert_order(s_pos: np.ndarray, s_neg: np.ndarray) -> np.ndarray:
    """gres_cli.model.hierarchizer.expert_order in numpy, ties included: experts most reliable
    first by R_pos + R_neg (s_pos ascending, s_neg descending), then s_pos - s_neg scaled below
    one rank step, then position in the group (stable sorts throughout)."""
    total = (_ranks(s_pos) + _ranks(-s_neg)).astype(s_pos.dtype)
    tie = s_pos - s_neg
    spread = np.maximum(np.abs(tie).max(), np.asarray(1e-12, s_pos.dtype))
    key = total + 0.25 * tie / spread
    return np.argsort(key, kind="stable")


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based rank of each value, ascending (equal values keep their order)."""
    out = np.empty(values.shape[0], np.int64)
    out[np.argsort(values, kind="stable")] = np.arange(values.shape[0])
    return out


def _config_number(config: dict[str, Any], key: str, where: Path, low: int | None = None) -> Any:
    """config[key]: an integer >= `low` (a size, a count) or, when `low` is None, any finite
    number; ModelLoadError in one line otherwise (a mutated config.json, issue 24)."""
    value = config.get(key)
    if low is None:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ModelLoadError(f"{where}: {key} must be a finite number")
    elif type(value) is not int or value < low:
        raise ModelLoadError(f"{where}: {key} must be an integer >= {low}")
    return value


def _graph_files(config: dict[str, Any], folder: Path, where: Path) -> dict[str, Path]:
    """The export's graph files by name, each inside `folder` (config.json names them)."""
    export = config.get(spec.CONFIG_KEY, {})
    graphs = export.get("graphs", spec.GRAPH_FILES) if isinstance(export, dict) else None
    if not isinstance(graphs, dict):
        raise ModelLoadError(f"{where}: {spec.CONFIG_KEY}.graphs must map graph names to files")
    files = {}
    for name in (spec.TEXT, spec.ENCODE, spec.QUERY):
        file = graphs.get(name, spec.GRAPH_FILES[name])
        # the name's text only: in the Hub cache every file is a symlink out to a blob
        try:
            if not isinstance(file, str):
                raise TypeError(file)
            check_relative(file)
            files[name] = folder / file
        except (GRDError, TypeError, ValueError):
            raise ModelLoadError(
                f"{where}: graph {name!r} must be a file inside the model folder"
            ) from None
    return files


class GRSerOnnxModel(WithoutExtras, OnnxExportKind):
    """A GRSer ONNX folder as a `GroupModel` (runtime "numpy")."""

    kind = spec.MODEL_TYPE
    runtime = "numpy"
    group_weight = None  # GRSer's group step is learnt, not weighed

    def __init__(self, folder: Path, group: bool = True, threads: int | None = None) -> None:
        """`threads`: onnxruntime's threads per graph (default: its own, the physical cores)."""
        try:
            import onnxruntime  # noqa: F401  (here: a missing extra is one line, below)
        except ImportError:
            raise ModelLoadError(
                f'{folder}: an ONNX model needs onnxruntime: pip install "{EXTRA}"'
            ) from None
        self.config = hub.read_config(folder)
        self.group = group
        where = folder / hub.CONFIG_FILE
        self.input_size = _config_number(self.config, "image_size", where, low=1)
        self.margin = float(_config_number(self.config, "margin", where))
        self.experts = _config_number(self.config, "experts", where, low=1)
        self.max_experts = self.experts  # the decoder takes K expert slots
        depths = self.config.get("swin_depths")
        if not isinstance(depths, list) or not depths:
            raise ModelLoadError(f"{where}: swin_depths must be a list of the stages' depths")
        self.stages = len(depths)
        self.tokenize = Tokenizer(folder, _config_number(self.config, "max_tokens", where, low=1))
        graphs = _graph_files(self.config, folder, where)
        paths = {name: graphs[name] for name in (spec.TEXT, spec.ENCODE, spec.QUERY)}
        files = {name: path.name for name, path in paths.items()}
        self.sessions = open_sessions(paths, threads)
        self._check_graphs(folder, files)

    def _check_graphs(self, folder: Path, files: dict[str, str]) -> None:
        """Refuse (ModelLoadError, one line) a config.json that disagrees with the inputs its
        graphs declare (an edited config, or graphs copied from another export): else
        onnxruntime fails mid-run with InvalidArgument, after images were read."""
        declared = {
            graph: {i.name: i.shape for i in session.get_inputs()}
            for graph, session in self.sessions.items()
        }
        fix = "re-export the model (gres model export) or restore its config.json"
        maps = set(spec.map_names(self.stages))
        taken = {n for n in declared[spec.QUERY] if n.startswith("map_")}
        if taken != maps:
            raise ModelLoadError(
                f'{folder}/config.json: "swin_depths" {self.config["swin_depths"]} has '
                f"{len(maps)} stages but {files[spec.QUERY]} takes {len(taken)} maps; {fix}"
            )
        checks = (  # (config key, its value, graph, input, axis)
            ("max_tokens", int(self.config["max_tokens"]), spec.TEXT, spec.TEXT_INPUTS[0], 1),
            ("image_size", self.input_size, spec.ENCODE, spec.PIXELS, 2),
            ("image_size", self.input_size, spec.ENCODE, spec.PIXELS, 3),
            ("experts", self.experts, spec.QUERY, spec.EXPERTS, 0),
        )
        for key, value, graph, name, axis in checks:
            shape = declared[graph].get(name)
            if shape is None or len(shape) <= axis:
                raise ModelLoadError(f"{folder}/{files[graph]}: has no input {name}; {fix}")
            if isinstance(shape[axis], int) and shape[axis] != value:  # str: a dynamic axis
                raise ModelLoadError(
                    f'{folder}/config.json: "{key}" is {value} but {files[graph]} takes '
                    f"{shape[axis]} ({name} {shape}); {fix}"
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
    ) -> GRSerOnnxModel:
        """The export in `folder` (resolved already: `checkpoint` and `revision` named it)."""
        return cls(folder, group=group)

    def describe(self) -> Description:
        config = self.config
        facts = config.get(spec.CONFIG_KEY, {})
        source = facts.get("source") or {}
        rows = [
            ("exported from", str(source.get("model"))),
            ("preset", str(config.get("name"))),
            ("input size", f"{config.get('image_size')} px"),
            ("experts K", str(config.get("experts"))),
            ("default margin m", str(config.get("margin"))),
            ("opset", str(facts.get("opset"))),
            (
                "exported with",
                f"torch {facts.get('torch')}, onnxruntime {facts.get('onnxruntime')}",
            ),
            ("graphs", ", ".join((facts.get("graphs") or {}).values())),
            *(
                (f"self-check: {graph}", f"max abs error {error:.1e}")
                for graph, error in (facts.get("max_abs_error") or {}).items()
            ),
        ]
        return Description("GRSer ONNX export", rows, {"config": config})

    def to(self, device: Any) -> GRSerOnnxModel:
        return self  # the CPU (the runtime refuses other devices)

    def preparer(self) -> Callable[[Image.Image], np.ndarray]:
        return functools.partial(image_to_array, size=self.input_size)

    def model_input(self, prepared: np.ndarray) -> np.ndarray:
        return normalize_array(prepared)

    def encode_text(self, expression: str) -> dict[str, np.ndarray]:
        """W, its mask, L and L_anti of one expression (text.onnx's outputs, by name)."""
        ids, mask = self.tokenize([expression, spec.ANTI_PREFIX + expression])
        out = self.sessions[spec.TEXT].run(
            None, dict(zip(spec.TEXT_INPUTS, (ids, mask), strict=True))
        )
        return dict(zip(spec.TEXT_FEATURES, out, strict=True))

    def _encode(self, pixels: np.ndarray, text: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {spec.PIXELS: pixels, **{k: text[k] for k in spec.TEXT_FEATURES}}
        out = self.sessions[spec.ENCODE].run(None, feeds)
        return dict(zip(spec.encode_outputs(self.stages), out, strict=True))

    def first_pass(
        self, pixels: np.ndarray, text: dict[str, np.ndarray], alone: bool = False
    ) -> FirstPass:
        enc = self._encode(pixels, text)
        summary = {k: enc[k] for k in (spec.PROTOTYPES, spec.S_POS, spec.S_NEG)}
        return FirstPass(summary, [self._item(enc, j) for j in range(pixels.shape[0])])

    def _item(self, enc: dict[str, np.ndarray], j: int) -> dict[str, np.ndarray]:
        """What pass 2 reuses of image j: its fused maps (and prototype, for --no-group)."""
        keep = (*spec.map_names(self.stages), spec.PROTOTYPES)
        return {k: enc[k][j : j + 1] for k in keep}

    def choose_experts(self, summary: dict[str, np.ndarray], k: int) -> np.ndarray:
        """The K' x C_v prototypes of the top-k experts, most reliable first."""
        order = expert_order(summary[spec.S_POS], summary[spec.S_NEG])[:k]
        return summary[spec.PROTOTYPES][order]

    def second_pass(
        self,
        pixels: np.ndarray | None,
        text: dict[str, np.ndarray],
        experts: np.ndarray,
        items: list[dict[str, np.ndarray]] | None,
    ) -> SecondPass:
        if items:
            enc = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
        else:
            enc = self._encode(pixels, text)
        if not self.group:  # each image against its own prototype only
            images = range(enc[spec.PROTOTYPES].shape[0])
            alone = [{k: v[i : i + 1] for k, v in enc.items()} for i in images]
            outs = [self._query(one, text, one[spec.PROTOTYPES]) for one in alone]
            return SecondPass(*(np.concatenate(parts) for parts in zip(*outs, strict=True)))
        return SecondPass(*self._query(enc, text, experts))

    def _query(
        self, enc: dict[str, np.ndarray], text: dict[str, np.ndarray], experts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(d_pos, d_neg, mask logits) of the images in `enc` against K' <= K experts, in K
        slots: the first K' hold the experts, the rest zeros masked out by expert_valid."""
        slots = np.zeros((self.experts, experts.shape[1]), np.float32)
        slots[: experts.shape[0]] = experts
        valid = np.zeros(self.experts, np.float32)
        valid[: experts.shape[0]] = 1.0
        feeds = {name: enc[name] for name in spec.map_names(self.stages)}
        feeds |= {k: text[k] for k in spec.QUERY_TEXT}
        feeds |= {spec.EXPERTS: slots, spec.EXPERT_VALID: valid}
        out = dict(zip(spec.QUERY_OUTPUTS, self.sessions[spec.QUERY].run(None, feeds), strict=True))
        return out[spec.D_POS], out[spec.D_NEG], out[spec.MASK_LOGITS]

    def probability_at(self, mask_logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return probability_to_original_array(mask_logits, size)
