"""How fast the CLI starts, and proof that the light commands import no torch.

    python benchmarks/bench_cli_start.py
Prints the wall time of `gres --help` and `gres grd --help` next to a bare `import torch`.
"""

from __future__ import annotations

import subprocess
import sys
import time


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


def main() -> None:
    torch_import = wall("import torch")
    for argv in (
        ["gres", "--help"],
        ["gres", "grd", "--help"],
        ["gres", "grd", "validate", "--help"],
    ):
        t = wall(cli_code(argv))
        print(
            f"{' '.join(argv):<28} {t * 1000:7.0f} ms   imports torch: {imports_torch(argv)}"
            f"   (import torch alone: {torch_import * 1000:.0f} ms, ratio {torch_import / t:.1f}x)"
        )


if __name__ == "__main__":
    main()
