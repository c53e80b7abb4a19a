"""`gres grd pull` / `gres grd push`: GRD datasets on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gres_cli.cli.common import user_errors
from gres_cli.cli.grd import app


@app.command()
def pull(
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repo id (org/name).")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit to pin.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Copy the dataset here (else: the cache).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Download a GRD dataset from the Hub into a folder of real files and print its path.

    Downloads go through the Hugging Face cache; with HF_HUB_OFFLINE=1 only the cache is read.
    Example: `gres grd validate "$(gres grd pull org/my-grd)"`
    """
    from grd_tools.hub import pull as pull_dataset

    with user_errors():
        folder = pull_dataset(repo_id, revision, out, overwrite)
    typer.echo(str(folder))


@app.command()
def push(
    dataset: Annotated[Path, typer.Argument(help="GRD dataset folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repo id (org/name).")],
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to.")] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
) -> None:
    """Upload a GRD dataset with a generated card (licence; group-wise, not generalized RES).

    The local folder is never modified.
    """
    from grd_tools.hub import push as push_dataset

    with user_errors():
        typer.echo(push_dataset(dataset, repo_id, private, revision, commit_message))
