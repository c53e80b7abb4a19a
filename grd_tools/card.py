"""Dataset cards (README.md) for GRD datasets published on the Hugging Face Hub."""

from __future__ import annotations

from grd_tools.format import GRDDataset

NON_COMMERCIAL_NOTE = (
    "GRD (the paper's Group Referring Dataset) and D³ (`shikras/d-cube`) are released for "
    "non-commercial research only (D³: CC BY-NC 4.0); data derived from them inherits that."
)


def dataset_card(dataset: GRDDataset) -> str:
    """Markdown with YAML front matter: licence, task, counts, and what GRES means here."""
    pairs = list(dataset.pairs())
    positives = sum(p.present for p in pairs)
    images = sum(len(g.images) for g in dataset.groups)
    licence = dataset.license or "other"
    return "\n".join(
        [
            "---",
            f"license: {licence}",
            "task_categories: [image-segmentation]",
            "tags: [gres, grd, group-wise-referring-segmentation, referring-segmentation]",
            "---",
            "",
            f"# {dataset.name or 'GRD dataset'}",
            "",
            "A dataset in the GRD format of the `gres` toolkit, for **group-wise** referring "
            "expression segmentation (GRES, Wu et al., ICCV 2023): each expression is annotated "
            "on EVERY image of its group, with a mask where the target is present and an explicit "
            'absence elsewhere. "GRES" here is not the generalized RES of gRefCOCO.',
            "",
            f"- licence of the source data: **{licence}**",
            f"- {NON_COMMERCIAL_NOTE}",
            "",
            "| groups | images | expressions | pairs | present | absent |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {len(dataset.groups)} | {images} | "
            f"{sum(len(g.expressions) for g in dataset.groups)} | {len(pairs)} | {positives} | "
            f"{len(pairs) - positives} |",
            "",
            "```bash",
            "gres grd pull <this repo> --out my-grd",
            "gres grd validate my-grd",
            "```",
            "",
        ]
    )
