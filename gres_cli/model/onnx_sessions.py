"""onnxruntime sessions of an export's graphs, opened the way every ONNX kind opens them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gres_cli.errors import ModelLoadError


def weights_file(graph: str) -> str:
    """The file beside a graph (`image.onnx`) that holds its weights as ONNX external data
    (`image.onnx.data`), as every export writes them: onnxruntime maps the file into memory
    where it would parse and copy weights kept inside the graph."""
    return graph + ".data"


def graphs_line(graphs: dict[str, str]) -> str:
    """A model card's line naming an export's graph files (name -> file)."""
    names = ", ".join(f"`{f}`" for f in graphs.values())
    return f"- graphs: {names}, each with its weights beside it in `{weights_file('<graph>')}`"


def open_sessions(files: dict[str, Path], threads: int | None = None) -> dict[str, Any]:
    """A CPU session per graph (name -> file), or ModelLoadError naming the file that does not
    load. For one photo the start-up is most of the wait, so:

    - the graphs load side by side (onnxruntime reads and optimises a graph outside the GIL);
    - at the basic optimisation level, which every export has had applied already (it saves
      its graphs so rewritten, `export.simplify`): the extended level's fusions took 86 ms
      to open CLIPSeg's image graph against 22 ms (the demo GRSer's encode graph: 89 against
      38 ms) for no image pass measurably faster (0.54 s either way, paired difference 3 ms
      over 20 passes), and the level that adds layout rewrites doubled the load again;
    - without pre-packing the weights of matrix products: with the weights mapped from their
      files (`weights_file`), packing was most of what was left of the load (CLIPSeg's two
      graphs: 0.41 s with it, 0.15 s without), and an image pass took as long either way
      (0.35 to 0.38 s an image at batch 1 and 8, within the runs' noise). The price: a
      product's last bits then depend on how many images share the call, so d_pos and d_neg
      can move by about 1e-7 with the batches, as they do on torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # stderr holds gres's own progress and one-line errors
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads

    def session(path: Path) -> Any:
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's load faults: missing, corrupt, wrong opset
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"{path}: cannot load as ONNX ({first})") from None

    with ThreadPoolExecutor(max_workers=len(files) or 1) as pool:
        return dict(zip(files, pool.map(session, files.values()), strict=True))
