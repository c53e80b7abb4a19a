"""onnxruntime sessions of an export's graphs, opened the way every ONNX kind opens them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gres_cli.errors import ModelLoadError


def open_sessions(files: dict[str, Path], threads: int | None = None) -> dict[str, Any]:
    """A CPU session per graph (name -> file), or ModelLoadError naming the file that does not
    load. The graphs load side by side (onnxruntime reads and optimises a graph outside the
    GIL), at the extended optimisation level: for one photo the start-up is most of the wait,
    and the level that adds layout rewrites doubled the load of CLIPSeg's graphs (1.05 s
    against 0.56 s, benchmarks/bench_onnx_clipseg.py) for no measurable speed per image."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # stderr holds gres's own progress and one-line errors
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
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
