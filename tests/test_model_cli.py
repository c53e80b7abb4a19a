import json
from pathlib import Path

from conftest import gres


def test_init_then_info_reports_parameters(tmp_path: Path):
    out = tmp_path / "tiny"
    assert gres("model", "init", str(out)).returncode == 0
    proc = gres("model", "info", str(out), "--json")
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["config"]["name"] == "grser-tiny"
    parts = report["parameters"]
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert 1_000_000 < parts["total"] < 5_000_000
    again = gres("model", "init", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bad_model_is_one_line_exit_2(tmp_path: Path):
    proc = gres("model", "info", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such model folder" in proc.stderr
