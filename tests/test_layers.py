"""Layers that point one way (docs/architecture.md): the import-linter contracts in pyproject.toml
hold, a back-import breaks them, and grd_tools runs without torch or gres_cli."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root`, with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports; " + (
        f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, "
        "no_cache=True, no_logo=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )


def test_the_layer_contracts_hold():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_a_lazy_back_import_breaks_the_layers(tmp_path):
    """A lower layer importing a higher one, even inside a function, fails the check."""
    for package in ("gres_cli", "grd_tools"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    kinds = tmp_path / "gres_cli" / "model" / "kinds.py"
    kinds.write_text(
        kinds.read_text() + "\n\ndef loader():\n    from gres_cli.backends import load_model\n"
        "\n    return load_model\n"
    )
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert "gres_cli.model.kinds -> gres_cli.backends" in done.stdout


def test_grd_tools_runs_without_torch_or_gres_cli():
    """Every grd_tools module imported: neither torch nor gres_cli comes with them."""
    code = (
        "import importlib, pkgutil, sys, grd_tools\n"
        "for m in pkgutil.walk_packages(grd_tools.__path__, 'grd_tools.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'gres_cli')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
