"""Options that several commands take, declared once: the same name, type and help wherever
they appear (`gres segment`, `gres eval`). A command's own options stay in its module."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gres_cli.cli.common import fail, user_errors

Revision = Annotated[
    str | None, typer.Option(help="With a Hub model: the branch, tag or commit to load.")
]
Margin = Annotated[
    float | None,
    typer.Option(
        help="m in d_pos + m < d_neg; larger = fewer, surer positives (default: the model's)."
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
BatchSize = Annotated[int, typer.Option(help="Images per model batch.")]
Workers = Annotated[
    int,
    typer.Option(
        help="Image-decoding worker processes, started once per run. Worth it beside a GPU; "
        "on a CPU the model already keeps every core busy."
    ),
]
NoGroup = Annotated[
    bool,
    typer.Option(
        "--no-group",
        help="Turn the group-wise step off: each image alone (a backend's own answers), the "
        "single-image baseline.",
    ),
]

RAY_PANEL = "Ray cluster"
Ray = Annotated[
    bool,
    typer.Option(
        "--ray",
        help='Run on a Ray cluster (pip install "gres[ray]"; docs/cluster.md): each '
        "(group, expression) task goes to whichever actor is free; output folders must be "
        "ones every node shares.",
        rich_help_panel=RAY_PANEL,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="With --ray: the cluster's address (ray://host:10001, host:6379 or auto). "
        "Default: RAY_ADDRESS, else a new local cluster.",
        rich_help_panel=RAY_PANEL,
        show_default=False,
    ),
]
RayActors = Annotated[
    int | None,
    typer.Option(
        help="With --ray: actors in the pool, each loads the model once. Default: the "
        "cluster's GPUs / --ray-gpus-per-actor, or without GPUs its CPUs / "
        "--ray-cpus-per-actor.",
        rich_help_panel=RAY_PANEL,
        show_default=False,
    ),
]
RayGpusPerActor = Annotated[
    float | None,
    typer.Option(
        help="With --ray: GPUs per actor (Ray's num_gpus). Default: 1 on a cluster with "
        "GPUs, else 0.",
        rich_help_panel=RAY_PANEL,
        show_default=False,
    ),
]
RayCpusPerActor = Annotated[
    float | None,
    typer.Option(
        help="With --ray: CPUs per actor (Ray's num_cpus), also its torch threads. Default: 1.",
        rich_help_panel=RAY_PANEL,
        show_default=False,
    ),
]


def ray_pool(
    ray: bool,
    address: str | None,
    actors: int | None,
    gpus_per_actor: float | None,
    cpus_per_actor: float | None,
) -> Any:
    """The RayPool the --ray options ask for (None without --ray), checked before any work:
    Ray missing is one line naming the extra; a pool option without --ray is refused (a run
    that ignored `--ray-actors 0` or `--ray-cpus-per-actor 4` would run locally, unsaid)."""
    if not ray:
        given = (address, actors, gpus_per_actor, cpus_per_actor)
        if any(option is not None for option in given):
            fail(
                "--ray-address, --ray-actors, --ray-gpus-per-actor and --ray-cpus-per-actor "
                "go with --ray"
            )
        return None
    from gres_cli.inference.ray_run import RayPool, check_reachable, import_ray

    pool = RayPool(
        address, actors, gpus_per_actor, 1.0 if cpus_per_actor is None else cpus_per_actor
    )
    with user_errors():
        import_ray()
        pool.check()
        check_reachable(address)  # before any work: else ray.init retries for minutes
    return pool
