"""`gres model init|info|pull|push|export`: create, inspect, download, publish and export GRSer
models.

torch is imported inside each command, never at module level, so `gres --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gres_cli.cli.common import err_console, fail, refuse_sources, user_errors

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
    backend: Annotated[
        str | None,
        typer.Option(
            help="Instead of a GRSer: a gres-backend folder naming this open-vocabulary "
            "checkpoint (Hub id or folder, e.g. CIDAS/clipseg-rd64-refined) with the settings "
            "below; `--model OUT` then runs it with them, no flags needed."
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="With --backend: the checkpoint's Hub revision.")
    ] = None,
    margin: Annotated[
        float | None, typer.Option(help="With --backend: m (default: the backend's own).")
    ] = None,
    experts: Annotated[int, typer.Option(help="With --backend: K experts.")] = 4,
    group_weight: Annotated[
        float, typer.Option(help="With --backend: the group rule's weight gamma.")
    ] = 1.0,
    sam: Annotated[
        str | None,
        typer.Option(
            help="With a grounding-dino --backend: the SAM checkpoint that draws the masks "
            "(default facebook/sam-vit-base)."
        ),
    ] = None,
) -> None:
    """Write an UNTRAINED GRSer folder (for tests, demos and as a training start), or with
    --backend a gres-backend settings folder for an open-vocabulary checkpoint.

    A GRSer's predictions are random until it is trained (`gres train`).
    """
    # --overwrite replaces OUT whole: it may not be, hold or lie inside a folder it reads
    refuse_sources(out, "OUT", {"--text-model": text_model, "--backend": backend, "--sam": sam})
    if backend is not None:
        _init_backend(out, backend, revision, margin, experts, group_weight, sam, overwrite)
        return
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


def _init_backend(
    out: Path,
    backend: str,
    revision: str | None,
    margin: float | None,
    experts: int,
    group_weight: float,
    sam: str | None,
    overwrite: bool,
) -> None:
    if experts < 1:
        fail("--experts must be >= 1")
    with user_errors():
        from grd_tools.fsutil import atomic_output_dir
        from gres_cli.backends import backend_kind
        from gres_cli.backends.openvocab import backends_taking
        from gres_cli.backends.settings import BackendSettings

        kind = backend_kind(backend, revision)  # refuse a checkpoint gres cannot run
        takers = backends_taking("sam")  # the kinds that declare a `sam` setting of their own
        if sam is not None and kind not in takers:
            fail(f"--sam pairs with a {' or '.join(takers)} --backend, not {kind}")
        own = {"sam": sam} if sam is not None else {}
        settings = BackendSettings(backend, revision, margin, experts, group_weight, own).pin()
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            settings.write(tmp)
    err_console.print(f"wrote gres-backend settings for {backend} ({kind}) to {out}")


@app.command()
def info(
    model: ModelArg,
    revision: RevisionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a model's configuration, parameter counts per part and default margin m (for an
    ONNX export: its config, opset, versions and the self-check's measured errors)."""
    with user_errors():
        from gres_cli.backends import load_model
        from gres_cli.model import hub

        folder = hub.resolve_model_dir(model, revision)
        description = load_model(str(folder)).describe()
    if json_out:
        typer.echo(json.dumps({"model": model, **description.facts}, indent=2))
        return
    from rich.table import Table

    table = Table(title=escape(f"{description.title}: {model}"), show_header=False)
    for label, value in description.rows:
        table.add_row(label, escape(value))
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
def export(
    model: ModelArg,
    out: Annotated[Path, typer.Argument(help="Folder to write the exported model into.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 17).")] = None,
    revision: RevisionOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Export a GRSer or a CLIPSeg checkpoint (folder or Hub id; or a gres-backend settings
    folder over CLIPSeg, its settings kept) as ONNX graphs plus tokenizer and config: a folder
    `gres segment --model OUT` runs on onnxruntime, without torch or transformers
    (`pip install "gres[onnx]"`).

    Before it reports success the export runs onnxruntime against torch on a few inputs
    (batch 1 and 3) and records each graph's worst error in OUT/config.json; a failed export
    leaves nothing at OUT.
    """
    if fmt != "onnx":
        fail(f"--format {fmt}: the only export format is onnx")
    refuse_sources(out, "OUT", {"MODEL": model})  # `export run/best run --overwrite` lost run/
    with user_errors():
        from gres_cli.backends import export_onnx
        from gres_cli.model import onnx_spec
        from gres_cli.model.export import require_onnx

        require_onnx()  # before loading anything
        opset = onnx_spec.DEFAULT_OPSET if opset is None else opset
        facts = export_onnx(model, out, opset=opset, revision=revision, overwrite=overwrite)
    errors = ", ".join(f"{g} {e:.1e}" for g, e in facts["max_abs_error"].items())
    err_console.print(
        escape(
            f"wrote ONNX export of {model} to {out} (opset {opset}; onnxruntime "
            f"{facts['onnxruntime']} vs torch, worst absolute error: {errors})"
        ),
        soft_wrap=True,
    )


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="Local model folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo id (org/name).")],
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Upload a GRSer folder, an ONNX export (`gres model export`: GRSer or CLIPSeg) or a
    gres-backend settings folder to the Hugging Face Hub, each validated by loading it first
    (an export through onnxruntime: `pip install "gres[onnx]"`).

    Only the model's files go up (config.json, model.safetensors or the export's .onnx graphs,
    tokenizer files, README.md), in one commit; a folder holding a pickle (a training
    checkpoint's trainer_state.pt) is refused.
    """
    from fnmatch import fnmatch

    with user_errors():
        from grd_tools.hub import refuse_pickles, upload_files
        from gres_cli.backends import check_for_push
        from gres_cli.model.hub import MODEL_FILES

        refuse_pickles(folder)
        check_for_push(folder)  # each kind checks its own folder: it loads, or parses
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and any(fnmatch(p.name, pattern) for pattern in MODEL_FILES)
        )
        info = upload_files(
            repo_id, folder, files, private=private, message=f"Upload gres model {folder.name}"
        )
    typer.echo(str(info))
