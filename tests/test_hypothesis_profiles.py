"""The `ci` hypothesis profile draws the same examples wherever it runs (issue 24): from another
temporary root, under `-n 2`, in another test order, with other local modules loaded. The
property tests are run three ways with GRES_HYPOTHESIS_TRACE (tests/conftest.py), recording
the examples only, and the digests of what each test drew are compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]


def _drawn(root: Path, *pytest_args: str) -> dict[str, list]:
    """{test: [examples, digest]} of tests/test_properties.py run from `root` (its working
    folder and TMPDIR, so the templates lie elsewhere) with `pytest_args`."""
    trace, tmp = root / "trace", root / "tmp"
    trace.mkdir(parents=True)
    tmp.mkdir()
    env = {
        **os.environ,
        "GRES_HYPOTHESIS_TRACE": str(trace),
        "GRES_HYPOTHESIS_TRACE_ONLY": "1",
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HYPOTHESIS_PROFILE", None)  # the default profile, as the README's command runs it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args,
         "--rootdir", str(REPO), str(REPO / "tests" / "test_properties.py")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    drawn: dict[str, list] = {}
    for worker in trace.glob("*.json"):
        drawn |= json.loads(worker.read_text())
    return drawn


def test_ci_profile_is_the_default_and_derandomized():
    assert settings.default.derandomize and settings.default.database is None


def test_ci_examples_do_not_depend_on_root_worker_order_or_loaded_modules(tmp_path: Path):
    plain = _drawn(tmp_path / "a")
    # another root (a longer path), two xdist workers, other local modules loaded first (each
    # -p loads a module as a plugin): what hypothesis would have mined for constants
    other = _drawn(
        tmp_path / "b" / "somewhere" / "deeper",
        "-n", "2", "-p", "gres_cli.view.build", "-p", "grd_tools.convert.refcoco",
    )  # fmt: skip
    one = _drawn(tmp_path / "c", "-k", "jsonl_predictions")  # alone: nothing ran before it
    assert len(plain) >= 13 and all(n >= 25 for n, _ in plain.values())  # + @examples
    assert other == plain
    name = "test_generated_jsonl_predictions_score_or_fail_in_one_line"
    assert one == {name: plain[name]}
