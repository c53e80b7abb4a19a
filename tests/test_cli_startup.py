"""`gres --help` and `gres grd ...` must not import torch (nor ray); grd_tools never imports it."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "timm", "ray")
RUN_CLI = (
    "import sys; sys.argv={argv}\n"
    "from gres_cli.cli import main\n"
    "try: main()\nexcept SystemExit: pass"
)


def _imported_modules(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "code",
    [
        "import grd_tools, grd_tools.format, grd_tools.convert, grd_tools.imageio",
        "from gres_cli.cli import app",
        RUN_CLI.format(argv=["gres", "--help"]),
        RUN_CLI.format(argv=["gres", "grd", "--help"]),
    ],
)
def test_light_entry_points_do_not_import_torch(code: str):
    assert not (_imported_modules(code) & set(HEAVY))


def test_gres_help_lists_the_dataset_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "gres_cli", "grd", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "GRD" in proc.stdout
