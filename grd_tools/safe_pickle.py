"""Read the pickles of public dataset releases (D³, RefCOCO) without running their code.

`pickle.load` can call any importable function, so a pickle from the internet is a program. These
releases only hold data, so `load` admits plain containers, strings, bytes, numbers and booleans
(the pickle opcodes for those need no import), plus the few globals that plain *data* needs when
pickled by older protocols or numpy:

- `builtins.set`/`frozenset` and `_codecs.encode` (protocol 2 spells sets and bytes with them);
- numpy's array and scalar reconstructors, with `numpy.dtype` and `numpy.ndarray`: D³'s
  annotations keep `bbox` as a numpy array (its toolkit calls `anno["bbox"][0].tolist()`).
  An object-dtype array's elements are unpickled through the same filter, so nothing else gets in.

Anything else (a class, `os.system`, `eval`, ...) is refused with a GRDError naming it.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError

#: (module, name) pairs a data pickle may import
ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
    }
)

# numpy 2 moved numpy.core to numpy._core; pickles written by numpy 1 name the old path
_RENAMED = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "__builtin__": "builtins",
}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # Python 2 `str` arrives as bytes; RefCOCO's refs(*.p) were written by Python 2
        super().__init__(file, encoding="utf-8")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise GRDError(
                f"{self._source}: refusing to unpickle {module}.{name} "
                "(only plain data is read from dataset pickles)"
            )
        module = _RENAMED.get(module, module)
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            # numpy 1 has no numpy._core; fall back to the old spelling
            return getattr(importlib.import_module(module.replace("._core", ".core")), name)

    def persistent_load(self, pid: Any) -> Any:
        raise GRDError(f"{self._source}: refusing a pickle with persistent ids")


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, admitting plain data only (see the module docstring)."""
    try:
        return _DataUnpickler(io.BytesIO(data), source).load()
    except GRDError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise many different types
        raise GRDError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def load(path: str | os.PathLike[str]) -> Any:
    """Unpickle the file at `path`, admitting plain data only."""
    return loads(Path(path).read_bytes(), str(path))


def plain(value: Any) -> Any:
    """Turn numpy arrays/scalars and bytes inside `value` into JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if tolist is not None:
        return plain(tolist())
    return value
