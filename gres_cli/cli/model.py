"""`gres model init|info|pull|push`: create, inspect, download and publish GRSer models.

torch is imported inside each command, never at module level, so `gres --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gres_cli.cli.common import err_console, user_errors

app = typer.Typer(
    help="Create, inspect, download and publish GRSer models (config.json + model.safetensors).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

ModelArg = Annotated[str, typer.Argument(help="Hub repo id (org/name) or local model folder.")]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Hub branch, tag or commit to pin.")
]


@app.command()
def init(
    out: Annotated[Path, typer.Argument(help="Folder to write the new model into.")],
    preset: Annotated[
        str, typer.Option(help="Named size: grser-tiny or grser-base.")
    ] = "grser-tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
    text_model: Annotated[
        str | None,
        typer.Option(help="Initialise the text encoder from this Hub id or local folder."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write an UNTRAINED model folder (for tests, demos and as a training start).

    Its predictions are random until it is trained (`gres train`).
    """
    with user_errors():
        import torch

        from grd_tools.fsutil import atomic_output_dir
        from gres_cli.model.config import GRSerConfig
        from gres_cli.model.grser import GRSer

        overrides = {"text_model": text_model, "text_config": None} if text_model else {}
        config = GRSerConfig.preset(preset, **overrides)
        torch.manual_seed(seed)
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            GRSer(config).save_pretrained(tmp)
    err_console.print(escape(f"wrote untrained {preset} to {out}"))


@app.command()
def info(
    model: ModelArg,
    revision: RevisionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a model's configuration, parameter counts per part and default margin m."""
    with user_errors():
        from gres_cli.model.grser import GRSer

        net = GRSer.from_pretrained(model, revision=revision)
    params = net.num_parameters()
    report = {"model": model, "config": net.config.to_dict(), "parameters": params}
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    c = net.config
    table = Table(title=escape(f"GRSer: {model}"), show_header=False)
    table.add_row("preset", str(c.name))
    table.add_row("input size", f"{c.image_size} px")
    table.add_row("Swin", f"embed {c.swin_embed_dim}, depths {list(c.swin_depths)}")
    table.add_row("text encoder", f"{c.text_config.get('model_type')} {net.text_encoder.dim}-d")
    table.add_row("experts K", str(c.experts))
    table.add_row("default margin m", str(c.margin))
    for part, n in params.items():
        table.add_row(f"parameters: {part}", f"{n:,}")
    err_console.print(table)


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="Hub repo id (org/name).")],
    revision: RevisionOpt = None,
) -> None:
    """Download a model into the Hub cache and print its folder (offline: check the cache)."""
    with user_errors():
        from gres_cli.model.hub import resolve_model_dir

        folder = resolve_model_dir(model, revision)
    typer.echo(str(folder))


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="Local model folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo id (org/name).")],
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Upload a model folder (validated by loading it first) to the Hugging Face Hub.

    Only the model's files go up (config.json, model.safetensors, tokenizer files, README.md),
    in one commit; a folder holding a pickle (a training checkpoint's trainer_state.pt) is
    refused.
    """
    from fnmatch import fnmatch

    with user_errors():
        from grd_tools.hub import refuse_pickles, upload_files
        from gres_cli.model.grser import GRSer
        from gres_cli.model.hub import MODEL_FILES

        refuse_pickles(folder)
        GRSer.from_pretrained(folder)  # refuse a folder that does not load
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and any(fnmatch(p.name, pattern) for pattern in MODEL_FILES)
        )
        info = upload_files(
            repo_id, folder, files, private=private, message=f"Upload GRSer model {folder.name}"
        )
    typer.echo(str(info))
