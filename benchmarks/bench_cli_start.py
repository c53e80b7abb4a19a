"""How fast the CLI starts and ends, and proof that the light commands import no torch.

    python benchmarks/bench_cli_start.py [--ends 5]
Prints the wall time of `gres --help` and `gres grd --help` next to a bare `import torch`;
then how long `gres segment` of one photo on torch (the demo model) takes after its record
reached stdout, ending as `gres` ends (`gres_cli.cli.main`: gc.freeze on the way out)
against the same command ending with the interpreter's full last collection (`app()`),
alternating, medians of --ends calls.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def after_record(code: str) -> tuple[float, float]:
    """(s to the first record on stdout, s from it to the process's end) of `code`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    if not proc.stdout.readline():
        sys.exit(f"no record from: {code}")
    first = time.perf_counter() - start
    proc.communicate()
    return first, time.perf_counter() - start - first


def ends(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["gres", "segment", str(ROOT / "examples/photos/chelsea.jpg"), "the cat",
                "--model", str(ROOT / "examples/demo-model"), "--out", tmp, "--jsonl", "-",
                "--overwrite"]  # fmt: skip
        head = f"import sys; sys.argv={argv!r}\n"
        codes = {
            "gres (frozen)": head + "from gres_cli.cli import main\nmain()",
            "app() (full collection)": head + "from gres_cli.cli import app\napp()",
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in codes}
        for _ in range(calls):
            for name, code in codes.items():
                runs[name].append(after_record(code))
        print(f"\n`gres segment` of one photo on torch (demo model), median of {calls}:")
        for name, got in runs.items():
            first, rest = zip(*got, strict=True)
            print(f"{name:<26} record at {statistics.median(first):5.2f} s, "
                  f"ended {statistics.median(rest):5.2f} s after it")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ends", type=int, default=5, help="gres segment calls per ending")
    args = parser.parse_args()
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
    ends(args.ends)


if __name__ == "__main__":
    main()
