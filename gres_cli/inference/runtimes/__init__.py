"""Where a model's arrays live, for the engine (gres_cli.inference.engine): the loader that
decodes images ahead of the model, the device, the precision, and the way results come back
to the host as numpy.

Two runtimes, one interface (`base.Runtime`); `make_runtime` (`factory.py`) picks by the
model's `runtime` attribute:
  torch  torch tensors, a DataLoader (worker processes, pinned memory on CUDA), devices and
         autocast (`torch_runtime.py`), imported only for a torch model;
  numpy  numpy arrays on the CPU and a thread pool decoding ahead of the model (the ONNX
         runtime, `numpy_runtime.py`). Importing this package imports no torch.
The modules point one way: factory -> numpy_runtime, torch_runtime -> base.
"""

from gres_cli.inference.runtimes.base import Batch, Decoded, Runtime, decode
from gres_cli.inference.runtimes.factory import make_runtime

__all__ = ["Batch", "Decoded", "Runtime", "decode", "make_runtime"]
