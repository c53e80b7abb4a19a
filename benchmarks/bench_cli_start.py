"""How fast the CLI starts, and proof that the light commands import no torch.

    python benchmarks/bench_cli_start.py [--model examples/demo-model] [--repeat 5]
Prints the wall time of `gres --help` and `gres grd --help` next to a bare `import torch`, then
the start of `gres segment` on a GRSer: Python + loading the model (imports included), with the
text encoder built as transformers' BertModel (as before issue 14; `trainable=True` still builds
it) and as gres's own BertEncoder (what loading for inference builds now), alternating, best of
--repeat each, and the whole `gres segment` of one photo.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def wall(code: str, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        best = min(best, time.perf_counter() - t)
    return best


def cli_code(argv: list[str]) -> str:
    run = "from gres_cli.cli import main\ntry: main()\nexcept SystemExit: pass"
    return f"import sys; sys.argv={argv!r}\n{run}"


def imports_torch(argv: list[str]) -> bool:
    code = cli_code(argv)
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in err.splitlines())


def load_code(model: str, trainable: bool) -> str:
    return (
        "from gres_cli.backends.grser import GRSerModel\n"
        "from gres_cli.model.grser import GRSer\n"
        f"GRSerModel(GRSer.from_pretrained({model!r}, trainable={trainable}))"
    )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="examples/demo-model")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch_import = wall("import torch", args.repeat)
    for argv in (
        ["gres", "--help"],
        ["gres", "grd", "--help"],
        ["gres", "grd", "validate", "--help"],
    ):
        t = wall(cli_code(argv), args.repeat)
        print(
            f"{' '.join(argv):<28} {t * 1000:7.0f} ms   imports torch: {imports_torch(argv)}"
            f"   (import torch alone: {torch_import * 1000:.0f} ms, ratio {torch_import / t:.1f}x)"
        )
    before, after = [], []
    for _ in range(args.repeat):  # alternating: the machine's load hits both alike
        before.append(wall(load_code(args.model, True), 1))
        after.append(wall(load_code(args.model, False), 1))
    print(f"load {args.model} (Python, imports, model), best of {args.repeat}:")
    print(f"  transformers' BertModel (before) {min(before):6.2f} s")
    print(f"  gres BertEncoder (after)         {min(after):6.2f} s")
    print(f"  ratio                            {min(before) / min(after):6.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        Image.new("RGB", (640, 480), (200, 40, 40)).save(photo)
        command = [sys.executable, "-m", "gres_cli", "segment", str(photo), "the red square"]
        command += ["--model", args.model, "--out", str(Path(tmp) / "out"), "--overwrite"]
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            best = min(best, time.perf_counter() - t)
    print(f"gres segment of one 640x480 JPEG, {args.model}: {best:.2f} s (best of {args.repeat})")


if __name__ == "__main__":
    main()
