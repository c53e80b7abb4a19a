"""`gres grd from-run`: a GRD dataset from `gres segment` runs, the model's answers as labels
(pseudo-labels), a person's corrections (grd_tools.corrections) applied.

A run folder holds `settings.json` (what made the answers) and `records.jsonl` (one record per
(image, expression); a later line for the same pair replaces an earlier one). Each answered pair
becomes a target: the run's mask (png, npy or rle) for a present image, null for an absent one.
Records of images that failed are skipped and counted.

Left out, and counted: a pair whose mask a person rejected; a pair a person flipped to present
that the model called absent (there is no mask to train on); a pair called present with an
empty mask; with `min_confidence`, an uncorrected pair closer to the model's decision than that:
``|d_neg - (d_pos + m)| < min_confidence`` (the model says present iff d_pos + m < d_neg).

GRD asks every expression on every image of its group, so a pair left out cannot leave a hole:
an expression's GRD group is the set of images it keeps, and expressions that keep the same
images (several runs over one folder, or one `--jobs` run) share one group. Groups that share an
image stay in one split under `gres grd split`, so no photo is in two splits.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from grd_tools.corrections import Correction, read_corrections, run_id
from grd_tools.errors import GRDError
from grd_tools.format import Expression, GRDDataset, Group, ImageRecord, save
from grd_tools.fsutil import atomic_output_dir, link_or_copy, refuse_overlap
from grd_tools.imageio import image_size, read_mask, write_mask
from grd_tools.paths import is_within
from grd_tools.run_records import RECORDS, SETTINGS, latest_records

GENERATOR = "gres grd from-run"
#: why pairs are left out (the summary's keys and words)
LEFT_OUT = {
    "rejected": "a person rejected the mask",
    "flipped_to_present": "flipped to present: no mask to train on",
    "empty_mask": "called present with an empty mask",
    "low_confidence": "closer to the margin than --min-confidence",
}


@dataclass
class Run:
    """A `gres segment` output folder as read: its settings, id and latest records."""

    folder: Path  # absolute
    given: str  # as the user named it
    settings: dict[str, Any]
    id: str
    records: list[dict[str, Any]]  # the latest record of each (image, expression), file order
    unreadable: int  # lines that are no record (cut by a crash)
    cwd: Path | None = None  # the folder `gres segment` ran in, when its mask paths tell


@dataclass
class _Pair:
    """One answered (image, expression) pair kept for the dataset."""

    run: Run
    record: dict[str, Any]
    photo: Path
    present: bool
    correction: Correction | None
    confidence: float | None


@dataclass
class _Unit:
    """The pairs of one expression asked of one run group: one GRD expression."""

    run: Run
    group: str
    expression: str
    pairs: list[_Pair] = field(default_factory=list)


def confidence(record: dict[str, Any]) -> float | None:
    """How far a record's answer is from the model's decision: |d_neg - (d_pos + m)|, in the
    units of the model's distances; None when the record lacks them."""
    try:
        value = abs(float(record["d_neg"]) - (float(record["d_pos"]) + float(record["margin"])))
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_run(folder: str | os.PathLike[str]) -> Run:
    """Read a run folder's settings and records. GRDError (one line) when it is none."""
    given = str(folder)
    path = Path(os.path.abspath(folder))
    if not path.is_dir():
        raise GRDError(f"{given}: not a folder (give a `gres segment --out` folder)")
    settings_file, records_file = path / SETTINGS, path / RECORDS
    if not settings_file.is_file() or not records_file.is_file():
        missing = SETTINGS if not settings_file.is_file() else RECORDS
        raise GRDError(f"{given}: not a `gres segment` run folder (no {missing})")
    try:
        settings = json.loads(settings_file.read_text("utf-8"))
        lines = records_file.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GRDError(f"{given}: cannot read the run ({e})") from None
    if not isinstance(settings, dict):
        raise GRDError(f"{given}/{SETTINGS}: not a JSON object")
    if settings.get("format") == "none":
        raise GRDError(
            f"{given}: made with --format none, so its present answers have no masks to train "
            "on; run `gres segment` again with --format png (or rle)"
        )
    records, unreadable = latest_records(lines)
    run = Run(path, given, settings, run_id(settings), records, unreadable)
    run.cwd = _run_cwd(run)
    return run


def _run_cwd(run: Run) -> Path | None:
    """The folder `gres segment` ran in: records name images and masks relative to it, and a
    mask's path starts with `--out` as typed (`out/group/0001.png`), so the run folder's own
    path minus that prefix is it. None when no record tells (no mask, or `--out` absolute)."""
    for rec in run.records:
        written = rec.get("mask")
        if not isinstance(written, str) or PurePath(written).is_absolute():
            continue
        parts = PurePath(written).parts
        for k in range(1, len(parts)):
            if parts[k - 1] in ("..", "."):
                break
            if run.folder.parts[-k:] == parts[:k] and run.folder.joinpath(*parts[k:]).is_file():
                return Path(*run.folder.parts[:-k])
        return None
    return None


def _photo(run: Run, written: str) -> Path:
    """The image file a record names (as `gres segment` was given it: relative to the folder it
    ran in). GRDError naming the places looked in when it is not found."""
    path = Path(written)
    if path.is_absolute():
        places = [path]
    else:
        bases = ([run.cwd] if run.cwd else []) + [Path.cwd(), run.folder.parent]
        places = [base / path for base in dict.fromkeys(bases)]
    root = Path(os.path.realpath(run.folder))
    for place in places:
        # never a file of the run: `gres segment` refuses an --out holding an input, and a
        # mask there is named like its photo (OUT/photos/0003.png for photos/0003.png)
        if place.is_file() and not is_within(Path(os.path.realpath(place)), root):
            return place
    looked = ", ".join(str(p) for p in places)
    raise GRDError(
        f"{run.given}: image {written!r} of its records is not found (looked for {looked}); "
        "run `gres grd from-run` where `gres segment` ran"
    )


def _mask_file(run: Run, written: str) -> Path:
    """A record's mask file, which lies in the run folder (its path as written is relative to
    where `gres segment` ran). GRDError when it is not found there."""
    path = PurePath(written)
    if path.is_absolute():
        places = [Path(path)]
    else:
        bases = ([run.cwd] if run.cwd else []) + [Path.cwd()]
        places = [base / path for base in bases]
        places += [run.folder.joinpath(*path.parts[k:]) for k in range(len(path.parts))]
    root = Path(os.path.realpath(run.folder))
    for place in places:
        if place.is_file() and is_within(Path(os.path.realpath(place)), root):
            return place
    raise GRDError(f"{run.given}: mask {written!r} is not in the run folder (was it moved?)")


def _record_mask(run: Run, rec: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The boolean mask of a present record at (height, width): from its `rle` or its file."""
    where = f"{run.given}: {rec['image']!r}, {rec['expression']!r}"
    if isinstance(rec.get("rle"), dict):
        from grd_tools.convert.coco import decode_segmentation

        try:
            mask = decode_segmentation(rec["rle"], height, width)
        except (ValueError, KeyError, TypeError) as e:
            raise GRDError(f"{where}: its rle does not decode ({e})") from None
    elif isinstance(rec.get("mask"), str):
        file = _mask_file(run, rec["mask"])
        if file.suffix == ".npy":
            try:
                mask = np.asarray(np.load(file, allow_pickle=False)) > 0
            except (OSError, ValueError) as e:
                raise GRDError(f"{file}: cannot read the mask ({e})") from None
        else:
            mask = read_mask(file) > 0
    else:
        raise GRDError(f"{where}: called present but the record names no mask")
    if mask.shape != (height, width):
        raise GRDError(
            f"{where}: the mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
        )
    if not mask.any():
        raise GRDError(f"{where}: the record's area is {rec.get('area')}, its mask is empty")
    return mask


def _corrections_by_run(
    files: Sequence[str | os.PathLike[str]], runs: list[Run]
) -> tuple[dict[str, dict[tuple[str, str], Correction]], list[dict[str, Any]]]:
    """Each run id's corrections (later files win a pair), and what each file held."""
    ids = {run.id for run in runs}
    by_run: dict[str, dict[tuple[str, str], Correction]] = {}
    described = []
    for file in files:
        corrections = read_corrections(file)
        if corrections.run not in ids:
            names = ", ".join(f"{r.given} ({r.id[:12]})" for r in runs)
            raise GRDError(
                f"{file}: corrections of run {corrections.run[:12]}, which is none of the runs "
                f"given: {names}"
            )
        by_run.setdefault(corrections.run, {}).update(corrections.items)
        described.append(
            {"file": str(file), "run": corrections.run, "entries": len(corrections.items)}
        )
    return by_run, described


def _group_id(name: str, taken: set[str]) -> str:
    """A GRD group id from a run's group name (ids hold no '/'), unique among `taken`."""
    base = name.replace("\\", "/").strip("/").replace("/", "-").replace("\x00", "")
    if base in ("", ".", ".."):  # a folder of its own name would leave images/
        base = "group"
    gid, n = base, 1
    while gid in taken:
        n += 1
        gid = f"{base}-{n}"
    taken.add(gid)
    return gid


def from_runs(
    runs: Sequence[str | os.PathLike[str]],
    dst: str | os.PathLike[str],
    *,
    corrections: Sequence[str | os.PathLike[str]] = (),
    min_confidence: float | None = None,
    copy: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the GRD dataset `dst` (atomically) from the run folders `runs`, never modified.

    `corrections`: corrections.json files of those runs. `min_confidence`: leave out the
    uncorrected pairs with |d_neg - (d_pos + m)| below it. Images are hard-linked (copied
    where they cannot be, or always with `copy`); masks are written as 0/255 PNGs. Returns a
    JSON-ready summary. GRDError (one line) for a bad input; DST is then left as it was.
    """
    if not runs:
        raise GRDError("give at least one run folder")
    if min_confidence is not None and not (min_confidence >= 0 and math.isfinite(min_confidence)):
        raise GRDError(f"--min-confidence {min_confidence}: must be a number >= 0")
    dst = Path(dst)
    if (dst.exists() or dst.is_symlink()) and not overwrite:  # before the runs are read
        raise GRDError(f"{dst}: already exists (pass --overwrite to replace it)")
    read = [read_run(folder) for folder in runs]
    seen: dict[Path, str] = {}
    for run in read:
        if run.folder in seen:
            raise GRDError(f"{run.given}: given twice (as {seen[run.folder]})")
        seen[run.folder] = run.given
        refuse_overlap(run.folder, dst, "DST", "RUN")
    by_run, described = _corrections_by_run(corrections, read)

    left_out = dict.fromkeys(LEFT_OUT, 0)
    errors = applied = 0
    units: dict[tuple[int, str, str], _Unit] = {}
    answered: dict[tuple[str, str], str] = {}  # (real image path, expression) -> run
    for index, run in enumerate(read):
        mine = by_run.get(run.id, {})
        for rec in run.records:
            if rec.get("error"):
                errors += 1
                continue
            fix = mine.get((rec["image"], rec["expression"]))
            applied += fix is not None
            present = bool(rec.get("present"))
            if fix is not None and fix.answer == "rejected":
                left_out["rejected"] += 1
                continue
            if fix is not None and fix.answer == "present" and not present:
                left_out["flipped_to_present"] += 1
                continue
            if fix is not None:
                present = fix.answer == "present"
            elif present and rec.get("area") == 0:
                left_out["empty_mask"] += 1
                continue
            score = confidence(rec)
            if fix is None and min_confidence is not None:
                if score is None:
                    raise GRDError(
                        f"{run.given}: {rec['image']!r} has no d_pos, d_neg and margin to "
                        "measure --min-confidence with"
                    )
                if score < min_confidence:
                    left_out["low_confidence"] += 1
                    continue
            photo = _photo(run, rec["image"])
            key = (os.path.realpath(photo), rec["expression"])
            if key in answered:
                raise GRDError(
                    f"{run.given}: asks {rec['expression']!r} of {rec['image']!r}, which "
                    f"{answered[key]} answers too; give each pair once"
                )
            answered[key] = run.given
            unit = units.setdefault(
                (index, str(rec.get("group", "")), rec["expression"]),
                _Unit(run, str(rec.get("group", "")), rec["expression"]),
            )
            unit.pairs.append(_Pair(run, rec, photo, present, fix, score))
    if not units:
        raise GRDError(
            f"no answered pair to write ({errors} failed images, "
            + ", ".join(f"{n} {LEFT_OUT[k]}" for k, n in left_out.items())
            + ")"
        )
    real_dst = Path(os.path.realpath(dst))
    for unit in units.values():  # replacing DST must not delete a photo
        for pair in unit.pairs:
            if is_within(Path(os.path.realpath(pair.photo)), real_dst):
                raise GRDError(f"{dst}: holds the photo {pair.photo}; pick another DST")

    # expressions that keep the same images share a GRD group
    groups: dict[tuple[str, ...], list[_Unit]] = {}
    for unit in units.values():
        images = tuple(os.path.realpath(p.photo) for p in unit.pairs)
        groups.setdefault(tuple(sorted(images)), []).append(unit)

    total = sum(len(u.pairs) for u in units.values())
    done = linked = copied = 0
    out_groups: list[Group] = []
    placed: dict[str, str] = {}  # real image path -> its file in DST
    taken: set[str] = set()
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        for members in groups.values():
            first = members[0]
            gid = _group_id(first.group, taken)
            images: list[ImageRecord] = []
            image_of: dict[str, ImageRecord] = {}
            ids: set[str] = set()
            for pair in first.pairs:
                real = os.path.realpath(pair.photo)
                image_id = _unique(pair.photo.stem.replace("\\", "-") or "image", ids)
                width, height = image_size(pair.photo)
                if real not in placed:
                    rel = f"images/{gid}/{image_id}{pair.photo.suffix.lower()}"
                    if copy:
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(pair.photo, tmp / rel)
                        copied += 1
                    elif link_or_copy(pair.photo, tmp / rel):
                        linked += 1
                    else:
                        copied += 1
                    placed[real] = rel
                record = ImageRecord(image_id, placed[real], width, height)
                record.meta["source"] = pair.record["image"]
                images.append(record)
                image_of[real] = record
            expressions = []
            for ei, unit in enumerate(members):
                eid = f"e{ei}"
                targets: dict[str, str | None] = {}
                corrected: dict[str, dict[str, str]] = {}
                scores: dict[str, float] = {}
                for pair in unit.pairs:
                    image = image_of[os.path.realpath(pair.photo)]
                    _check_size(pair, image)
                    targets[image.id] = None
                    if pair.present:
                        rel = f"masks/{gid}/{eid}/{image.id}.png"
                        mask = _record_mask(unit.run, pair.record, image.width, image.height)
                        write_mask(tmp / rel, mask)
                        targets[image.id] = rel
                    if pair.correction is not None:
                        corrected[image.id] = {
                            "was": pair.correction.was,
                            "answer": pair.correction.answer,
                        }
                    if pair.confidence is not None:
                        scores[image.id] = round(pair.confidence, 6)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                meta: dict[str, Any] = {"run": unit.run.id, "run_group": unit.group}
                meta["confidence"] = scores
                if corrected:
                    meta["corrected"] = corrected
                expressions.append(Expression(eid, unit.expression, targets, meta))
            out_groups.append(Group(gid, images, expressions))
        dataset = GRDDataset(
            out_groups,
            name=dst.name,
            meta={
                "generator": GENERATOR,
                "runs": [{"folder": r.given, "run": r.id, "settings": r.settings} for r in read],
                "corrections": described,
                "min_confidence": min_confidence,
                "left_out": {LEFT_OUT[k]: n for k, n in left_out.items()},
            },
        )
        save(dataset, tmp)
    pairs = [p for u in units.values() for p in u.pairs]
    return {
        "out": str(dst),
        "runs": [
            {"run": r.given, "id": r.id, "records": len(r.records), "unreadable": r.unreadable}
            for r in read
        ],
        "groups": len(out_groups),
        "images": len(placed),
        "expressions": sum(len(g.expressions) for g in out_groups),
        "pairs": len(pairs),
        "present": sum(p.present for p in pairs),
        "absent": sum(not p.present for p in pairs),
        "corrected": sum(p.correction is not None for p in pairs),
        "failed_images": errors,
        "left_out": {LEFT_OUT[k]: n for k, n in left_out.items()},
        "corrections": {
            "files": len(described),
            "entries": sum(len(c) for c in by_run.values()),
            "applied": applied,
        },
        "images_linked": linked,
        "images_copied": copied,
    }


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first not in `taken` (then taken)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def _check_size(pair: _Pair, image: ImageRecord) -> None:
    """The photo must still be the one the run saw (its size, after EXIF orientation)."""
    seen = (pair.record.get("width"), pair.record.get("height"))
    if seen != (image.width, image.height):
        raise GRDError(
            f"{pair.run.given}: {pair.record['image']!r} is {image.width}x{image.height} now, "
            f"the run saw {seen[0]}x{seen[1]}: the photo changed since the run; run `gres "
            "segment` again"
        )
