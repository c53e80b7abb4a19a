"""The `gres` command line. Commands parse arguments and call the engine; torch is imported
lazily inside the commands that need it, so `gres --help` and `gres grd ...` start fast."""

from __future__ import annotations

import gc

import typer

from gres_cli.cli import evaluate, grd, model, segment, train, view

app = typer.Typer(
    name="gres",
    help=(
        "Group-wise referring expression segmentation (GRES, Wu et al., ICCV 2023): segment the "
        "object an expression describes in every photo of a group that has it, and say 'absent' "
        "for the others. Not the generalized RES of gRefCOCO."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
segment.register(app)
evaluate.register(app)
train.register(app)
view.register(app)
app.add_typer(grd.app, name="grd")
app.add_typer(model.app, name="model")


def main() -> None:
    """Console-script entry point. On the way out the garbage collector is told to leave what
    the command made alone (`gc.freeze`): the interpreter's last collection would free, one
    by one, every object of the modules torch and transformers loaded, which took longer than
    a small command's work (benchmarks/bench_cli_start.py: `gres segment` of one photo on
    torch, the demo model, ended 1.44 s after its record, 0.24 s frozen). Outputs are closed
    by then (the run layer closes its files; atexit hooks still run); the OS takes the memory
    back."""
    try:
        app()
    finally:
        gc.freeze()
