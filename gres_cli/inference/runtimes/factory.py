"""`make_runtime`: the runtime a model asks for by its `runtime` attribute."""

from __future__ import annotations

from gres_cli.errors import GresError
from gres_cli.inference.runtimes.base import Runtime


def make_runtime(kind: str, device: str, precision: str) -> Runtime:
    """The runtime of a model whose `runtime` attribute is `kind` ("torch" or "numpy")."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise GresError(f"--precision {precision!r}: expected fp32, bf16 or fp16")
    if kind == "numpy":
        from gres_cli.inference.runtimes.numpy_runtime import NumpyRuntime

        return NumpyRuntime(device, precision)
    if kind != "torch":
        raise GresError(f"a model asks for runtime {kind!r}: gres has torch and numpy")
    from gres_cli.inference.runtimes.torch_runtime import TorchRuntime  # torch, only for it

    return TorchRuntime(device, precision)
