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


WITH_RAY = (
    "--ray-address, --ray-actors, --ray-gpus-per-actor and --ray-cpus-per-actor go with --ray"
)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ray"], '--ray needs Ray Data: pip install "gres[ray]"'),
        (["eval", "--model", "m", "--ray"], '--ray needs Ray Data: pip install "gres[ray]"'),
        (
            ["eval", "--model", "m", "--ray-address", "auto"],
            WITH_RAY,
        ),
        (
            ["--ray-actors", "2"],
            WITH_RAY,
        ),
        (
            ["--ray", "--shard", "0/2"],
            "--shard splits a run by hand; --ray schedules the groups itself: give one",
        ),
    ],
)
def test_ray_options_without_ray_are_one_line_before_any_work(tmp_path, options, message):
    # `ray` made unimportable, as where the extra is not installed
    if options[0] == "eval":  # gres eval DATASET --model M ... --report OUT/r.json
        argv = ["gres", "eval", str(tmp_path), *options[1:], "--report", str(tmp_path / "out/r")]
    else:
        argv = ["gres", "segment", str(tmp_path), "a cat", "--out", str(tmp_path / "out")]
        argv += options
    code = "import sys; sys.modules['ray'] = None\n" + RUN_CLI.replace(
        "except SystemExit: pass", "except SystemExit as e: sys.exit(e.code)"
    ).format(argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gres: error: {message}"
    assert not (tmp_path / "out").exists()


def test_gres_ends_with_the_collector_leaving_what_the_command_made_alone():
    """`main` freezes the collector on the way out (the interpreter's last collection would
    free every object of torch's modules one by one: benchmarks/bench_cli_start.py), also when
    the command fails; atexit hooks still run after it."""
    hook = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, file=sys.stderr))\n"
    )
    for argv, code in ((["gres", "grd", "--help"], 0), (["gres", "no-such-command"], 2)):
        run = f"import sys; sys.argv={argv}\nfrom gres_cli.cli import main\nmain()"
        proc = subprocess.run([sys.executable, "-c", hook + run], capture_output=True, text=True)
        assert proc.returncode == code
        assert proc.stderr.splitlines()[-1] == "frozen True"
