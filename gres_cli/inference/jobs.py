"""`gres segment --jobs FILE|-`: many (path, expression) jobs in one process.

A jobs file holds JSON lines `{"path": ..., "expression": ..., "group": ...}` ("group"
optional; any other keys are carried into the records). A path is an image, a folder or a glob;
a relative one is relative to the jobs file's folder (to the working folder for `-`). Each line
becomes one or more engine Jobs (one per group: a folder with --recursive makes several); a bad
line becomes a job with an `error` and no group, and the others still run.

Outputs: OUT/<group>/<expression folder>/<stem>.png, the expression folder being a slug of the
expression plus 8 hex digits of its SHA-256, so expressions on the same images never share a
file. An image gets one answer per expression in a run: a later line asking an expression of an
image that an earlier line already asks it of is refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_tools.errors import GRDError
from grd_tools.paths import check_relative
from gres_cli.errors import GresError
from gres_cli.inference.inputs import (
    IMAGE_SUFFIXES,
    ImageGroup,
    discover,
    folder_name,
    unique_outputs,
)

# settings.json of a --jobs run: masks in a folder per expression, not OUT/<group>/<stem>.png
LAYOUT = "expression folders"


@dataclass
class JobLine:
    """One line of a jobs file: its fields as given, the groups it names, or why it cannot run."""

    line: int  # 1-based line number in the jobs file
    fields: dict[str, Any]
    groups: list[ImageGroup] = field(default_factory=list)
    error: str | None = None

    @property
    def expression(self) -> str | None:
        text = self.fields.get("expression")
        return text if isinstance(text, str) else None

    def label(self, group: ImageGroup | None = None) -> dict[str, Any]:
        """The `job` field of this line's records: its line number, its fields but the
        expression (the record has it), and the SHA-256 of the group's image list."""
        label = {"line": self.line}
        label |= {k: v for k, v in self.fields.items() if k not in ("line", "expression")}
        if group is not None:
            label["group_sha256"] = group_digest(group)
        return label


def group_digest(group: ImageGroup) -> str:
    """What an answer of group-wise segmentation depends on besides its image: which images
    were its group (the experts come from them). 16 hex digits of SHA-256 of their paths."""
    text = "\n".join(os.path.abspath(p) for p in group.images)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def expression_folder(expression: str) -> str:
    """The folder of an expression's masks under its group: readable, and never shared by two
    expressions (`the red car` and `The red car!` differ in the hash, also on a file system that
    ignores case)."""
    slug = re.sub(r"[^a-z0-9]+", "-", expression.casefold()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(expression.encode("utf-8")).hexdigest()[:8]
    return f"{slug or 'expression'}-{digest}"


def read_jobs(lines: Iterable[str], base: Path, recursive: bool = False) -> list[JobLine]:
    """Parse a jobs file's lines (blank lines skipped); relative paths are taken from `base`.
    Each bad line is a JobLine with an `error`; a later line asking an expression of an image
    that an earlier line already asks it of is one too (an image gets one answer per
    expression, whatever its group)."""
    jobs = []
    for number, text in enumerate(lines, 1):
        if text.strip():
            jobs.append(_read_line(number, text, base, recursive))
    if not jobs:
        raise GresError("the jobs file holds no job")
    asked: dict[tuple[str, str], int] = {}  # (image, expression) -> the line that asks it
    for job in jobs:
        if job.error is not None:
            continue
        for group in job.groups:
            for image in group.images:
                earlier = asked.get((os.path.abspath(image), job.expression))
                if earlier is not None and earlier != job.line:
                    job.error = (
                        f"line {job.line}: line {earlier} already asks {job.expression!r} of "
                        f"{image}; an image gets one answer per expression"
                    )
                    job.groups = []
                    break
            if job.error is not None:
                break
        for group in job.groups:
            for image in group.images:
                asked[(os.path.abspath(image), job.expression)] = job.line
    return jobs


def _read_line(number: int, text: str, base: Path, recursive: bool) -> JobLine:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        return JobLine(number, {}, error=f"line {number}: not JSON ({e.msg})")
    except RecursionError:  # `[` x 3000: past the parser's recursion limit
        return JobLine(number, {}, error=f"line {number}: not JSON (nested too deeply)")
    if not isinstance(fields, dict):
        return JobLine(number, {}, error=f"line {number}: not a JSON object")
    job = JobLine(number, fields)
    try:
        job.groups = _groups(fields, base, recursive)
    except (GresError, GRDError) as e:
        job.error = f"line {number}: {e}"
    return job


def _groups(fields: dict[str, Any], base: Path, recursive: bool) -> list[ImageGroup]:
    expression, path, name = fields.get("expression"), fields.get("path"), fields.get("group")
    if not isinstance(expression, str) or not expression.strip():
        raise GresError('no "expression" (a non-empty string)')
    if not isinstance(path, str) or not path.strip():
        raise GresError('no "path" (an image, a folder or a glob)')
    if path == "-":
        raise GresError('"path": - (stdin) is not a path in a jobs file')
    if name is not None:
        if not isinstance(name, str):
            raise GresError('"group" must be a string')
        check_relative(name)  # the group's outputs go to OUT/<group>/: never out of OUT
    full = Path(path) if Path(path).is_absolute() else base / path
    groups = [_glob_group(full)] if glob.has_magic(path) else discover(str(full), recursive)
    if name is not None:
        if len(groups) > 1:
            raise GresError(f'"group" names one group; {path} makes {len(groups)} (--recursive)')
        groups = unique_outputs([ImageGroup(name, groups[0].images)])
    return groups


def _no_image(pattern: Path, matches: list[Path]) -> str:
    """What a glob that matched no image did match, and the way out ("no image matches" alone
    reads like a typo in a pattern that matched folders)."""
    if not matches:
        return "matches nothing"

    def some(paths: list[Path]) -> str:
        names = ", ".join(p.name for p in sorted(paths)[:3])
        return names + (", ..." if len(paths) > 3 else "")

    folders = [p for p in matches if p.is_dir()]
    files = [p for p in matches if not p.is_dir()]
    said = []
    if folders:
        said.append(f"{len(folders)} folder{'s' * (len(folders) > 1)} ({some(folders)})")
    if files:
        said.append(
            f"{len(files)} file{'s' * (len(files) > 1)} that {'are' if len(files) > 1 else 'is'} "
            f"not an image ({some(files)})"
        )
    hint = f"; to take the images inside the folders: {pattern}/*" if folders else ""
    return f"matches {' and '.join(said)} and no image{hint}"


def _glob_group(pattern: Path) -> ImageGroup:
    """The images a glob matches, as ONE group named after their common folder."""
    matches = [Path(p) for p in glob.glob(str(pattern), recursive=True)]
    images = sorted(p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise GresError(f"{pattern}: {_no_image(pattern, matches)}")
    common = Path(os.path.commonpath([os.path.abspath(p.parent) for p in images]))
    return unique_outputs([ImageGroup(folder_name(common), images)])[0]
