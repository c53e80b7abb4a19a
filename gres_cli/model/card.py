"""The model card (README.md) written beside every saved GRSer."""

from __future__ import annotations

from typing import Any


def model_card(
    config: dict[str, Any], parameters: int, metrics: dict[str, Any] | None = None
) -> str:
    """Markdown with YAML front matter for a GRSer model folder."""
    lines = [
        "---",
        "library_name: gres",
        "pipeline_tag: image-segmentation",
        "tags: [gres, grser, group-wise-referring-segmentation, referring-expression-segmentation]",
        "---",
        "",
        f"# GRSer ({config.get('name') or 'custom'})",
        "",
        "GRSer, the model of *Advancing Referring Expression Segmentation Beyond Single Image* "
        "(Wu et al., ICCV 2023), as implemented by the `gres` toolkit. **GRES here means "
        "GROUP-wise referring expression segmentation** (a group of images, one expression; the "
        "object is segmented where present and declared absent elsewhere), not the generalized "
        "RES of gRefCOCO.",
        "",
        f"- parameters: {parameters:,}",
        f"- input size: {config.get('image_size')} px; experts K = {config.get('experts')}; "
        f"default margin m = {config.get('margin')}",
        "",
        "```bash",
        'gres segment ./photos "the red umbrella" --model <this repo or folder>',
        "```",
        "",
        "```python",
        "from gres_cli import GRSer",
        "",
        'model = GRSer.from_pretrained("<this repo or folder>")',
        'preds = model.predict(images, "the red umbrella")',
        "```",
    ]
    if metrics:
        lines += ["", "## Validation metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
        ]
    lines.append("")
    return "\n".join(lines)
