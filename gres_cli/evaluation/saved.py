"""`gres eval --model ... --save-predictions DIR`: the model's answers kept as a `gres segment`
run folder, which the report points at, so that `gres view REPORT` draws the galleries (false
positives, misses, worst IoUs) as it does for a `--predictions` report.

    DIR/records.jsonl                        one `gres segment` record per (image, expression)
    DIR/settings.json                        what made them: `gres segment`'s run settings
                                             (model, m, threshold, experts, group step) and the
                                             dataset's grd.json hash and split
    DIR/<group>/<expression id>/<stem>.png   the mask of each pair called present (0/255)

Masks go one folder deeper than `gres segment`'s OUT/<group>/<stem>.png: GRD asks every
expression of a group on every image, and files named after the image alone would clash. It is
also the co-salient layout `gres eval --predictions DIR` reads.

DIR is new, empty, or predictions an earlier `gres eval` saved with the same settings; anything
else (other settings, a `gres segment` run, other files) is refused in one line. The new folder
is built beside DIR and swapped in when the evaluation ends (grd_tools.fsutil.atomic_output_dir):
an interrupted or failed evaluation leaves DIR as it was, never a mix of old and new answers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gres_cli.errors import GresError

MADE_BY = "gres eval"  # settings.json of a segment run lacks it: its folder is never replaced
FORMAT = "png"  # the galleries read mask files; measured in docs/evaluation.md


class SavedPredictions:
    """Writes the records and masks of one `gres eval --model` run into DIR (see the module).

    `option` names DIR in messages (`--save-predictions`, or `--view`, which saves beside the
    report). Checks DIR when made (before the model loads) and against the run's settings in
    `begin` (once the model gives its margin), before any image is segmented."""

    def __init__(self, out: Path, option: str, dataset_sha256: str, split: str | None) -> None:
        self.out, self.option = out, option
        self.identity = {"dataset_sha256": dataset_sha256, "split": split}
        self.hint = (
            "pick another folder"
            if option == "--save-predictions"
            else "pass --save-predictions DIR (or another --report)"
        )
        self.previous = self._previous_settings()
        self.run: Any = None  # the RunFolder of the temporary folder, from begin()
        self.writer: Any = None
        self.records = 0
        self._tmp: Path | None = None

    def _previous_settings(self) -> dict[str, Any] | None:
        """The settings of the predictions DIR holds (None: DIR is new or empty)."""
        from gres_cli.inference.writers import SETTINGS

        where = f"{self.option} {self.out}"
        if self.out.is_file():
            raise GresError(f"{where}: is a file; give a folder")
        if not self.out.is_dir() or not any(self.out.iterdir()):
            return None
        try:
            settings = json.loads((self.out / SETTINGS).read_text("utf-8"))
        except (OSError, ValueError):
            settings = None
        if not isinstance(settings, dict) or settings.get("made_by") != MADE_BY:
            made = "a gres segment run" if isinstance(settings, dict) else "other files"
            raise GresError(f"{where}: holds {made}, not predictions gres eval saved; {self.hint}")
        return settings

    @contextlib.contextmanager
    def writing(self) -> Iterator[SavedPredictions]:
        """The evaluation runs in this block; on success the new folder replaces DIR."""
        from grd_tools.fsutil import atomic_output_dir

        with atomic_output_dir(self.out, overwrite=True) as tmp:
            self._tmp = tmp
            try:
                yield self
                if self.writer is not None:
                    self._writing(self.writer.drain)  # raises if a mask could not be written
            finally:
                if self.run is not None:
                    self.run.close()

    def begin(self, engine: Any, model: str, revision: str | None, group: bool) -> None:
        """Claim the folder for this run's settings (GresError when DIR holds other ones)."""
        from gres_cli.inference.run import RunFolder, run_settings
        from gres_cli.inference.writers import settings_difference

        settings = {
            "made_by": MADE_BY,
            **run_settings(model, revision, engine, FORMAT, False, group=group),
            **self.identity,
        }
        if self.previous is not None and self.previous != settings:
            raise GresError(
                f"{self.option} {self.out}: holds predictions made with "
                f"{settings_difference(self.previous, settings)}; {self.hint}"
            )
        assert self._tmp is not None, "begin() runs inside writing()"
        self.margin = engine.margin
        self.run = RunFolder(self._tmp, FORMAT, overlay=False, shown_as=self.out)
        self.writer = self.run.claim(settings).writer

    def add(self, group: str, expression: Any, name: str, result: Any) -> None:
        """One engine result of `expression` (a GRD expression) on the image whose outputs are
        named `name` (ImageGroup.output_stems) in `group`: the record `gres segment` writes."""
        from gres_cli.inference.writers import segment_record

        record, mask = segment_record(result, group, expression.text, self.margin)
        self._writing(self.writer.submit, record, f"{expression.id}/{name}", mask)
        self.records += 1

    def _writing(self, write: Any, *args: Any) -> Any:
        """A disk full or a file where a folder goes: one line (DIR is left as it was)."""
        try:
            return write(*args)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise GresError(
                f"{self.option} {self.out}: cannot write ({e.strerror or e}{where})"
            ) from None

    @property
    def records_file(self) -> Path:
        from gres_cli.inference.writers import RECORDS

        return self.out / RECORDS
