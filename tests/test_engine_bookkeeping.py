"""The engine's bookkeeping, piece by piece (gres_cli.inference.engine): which jobs replay the
previous job's decoded pixels, which images the loader decodes, how a batch splits into runs
of one job, and what a job in progress caches for pass 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gres_cli.inference.engine import (
    ImageResult,
    Job,
    JobInProgress,
    decode_order,
    replaying_jobs,
    runs_of_one_job,
)
from gres_cli.inference.inputs import ImageGroup

A = ImageGroup("a", [Path("a/1.png"), Path("a/2.png")])
B = ImageGroup("b", [Path("b/1.png")])
EMPTY = ImageGroup("e", [])


def test_consecutive_jobs_on_the_same_images_replay_when_their_pixels_fit():
    jobs = [Job(A, "x"), Job(A, "y"), Job(B, "x"), Job(A, "z"), Job(EMPTY, "x"), Job(EMPTY, "y")]
    assert replaying_jobs(jobs, False, 100, 200) == [False, True, False, False, False, False]
    # photos kept (overlays): never replayed; pixels past the budget: decoded again
    assert replaying_jobs(jobs, True, 100, 200) == [False] * 6
    assert replaying_jobs(jobs, False, 101, 200) == [False] * 6


def test_the_loader_decodes_every_image_of_every_job_that_does_not_replay():
    jobs = [Job(A, "x"), Job(A, "y"), Job(B, "x")]
    assert decode_order(jobs, [False, True, False]) == [(0, 0), (0, 1), (2, 0)]
    assert decode_order(jobs, [False, False, False]) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_a_batch_splits_into_runs_of_one_job():
    assert list(runs_of_one_job([3, 3, 4, 5, 5, 5])) == [
        (3, slice(0, 2)),
        (4, slice(2, 3)),
        (5, slice(3, 6)),
    ]
    assert list(runs_of_one_job([])) == []


def test_a_job_in_progress_caches_answered_images_while_its_budget_lasts():
    job = JobInProgress(0, Job(A, "x", skip={1}), text=None, budget=100)
    item = np.zeros(10, np.float32)  # 40 bytes
    job.passed(0, (4, 3), item, None)
    job.passed(1, (4, 3), item, None)  # done by an earlier run: takes part, never cached
    job.passed(2, (4, 3), item, None)
    job.passed(3, (4, 3), item, None)  # 120 bytes would pass the budget: decoded again
    assert job.ok == [0, 1, 2, 3]
    assert sorted(job.cache) == [0, 2] and job.budget == 20


def test_a_models_extras_read_as_attributes_of_its_result():
    res = ImageResult(0, 0, Path("p.png"), None, extras={"backend_score": 0.25})
    assert res.backend_score == 0.25
    try:
        res.unknown  # noqa: B018
    except AttributeError as e:
        assert "unknown" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_cache_counts_the_bytes_of_torch_and_numpy_arrays_alike():
    import torch

    from gres_cli.backends.protocol import FirstPass, nbytes

    item = FirstPass({"p": torch.zeros(3, 4)}, [np.zeros(5, np.float64), (torch.zeros(2, 2),)])
    assert nbytes(item) == 3 * 4 * 4 + 5 * 8 + 2 * 2 * 4
