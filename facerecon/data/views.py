"""Profiled views in a ``prepare`` cache (``prepare --profile-views N``): the phase after the rows.

For every training row whose source is a face-model fit, ``N`` views turned further in yaw
(:mod:`facerecon.data.profiling`), each detected and cropped exactly as ``prepare`` does a photo
(:func:`facerecon.data.samples.locate_face`: full search, second chance, the run's average crop).
The cache stores only what cannot be derived (group ``views/``): the crop, its detection, the
``(3, 4)`` crop-units map of the source row's ground truth onto the view's
(:func:`~facerecon.data.profiling.crop_frame_transform`), the view's pose and the source row;
:class:`facerecon.data.dataset.FaceCacheDataset` derives the points, normals, landmarks, regions
and colours at read time. A view adds ~0.1 MB (its gzip crop) where a BFM row adds ~1.3 MB.

Seeded per source row (``(split_seed, row)``), so views do not depend on the order, the number of
workers, or an interruption: the phase is resumable like the rows (a progress marker in the
group) and parallel like them (the same worker processes' set-up).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from facerecon.crop import CROP_SIZE, crop_image
from facerecon.data.face_model import pose_degrees
from facerecon.data.ground_truth import gt_landmarks_px
from facerecon.data.profiling import crop_frame_transform, profile_views
from facerecon.data.readers import SampleRef, read_sample
from facerecon.data.samples import SampleContext, locate_face, run_jobs
from facerecon.errors import FaceReconError

#: name: (trailing shape, dtype) of the per-view datasets of the ``views`` group.
VIEW_FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "images": ((CROP_SIZE, CROP_SIZE, 3), "u1"),
    "boxes": ((3,), "f8"),
    "landmarks5": ((5, 2), "f4"),
    "probabilities": ((), "f4"),
    "fallback": ((), "u1"),
    "pose": ((3,), "f4"),  # yaw, pitch, roll degrees (as the rows' pose)
    "transform": ((3, 4), "f8"),  # crop units of the source row -> crop units of the view
    "source": ((), "i8"),  # the source row
    "view": ((), "u1"),  # the view's number among its source's
}


def view_rng(seed: int, row: int) -> np.random.Generator:
    """The generator of one source row's views."""
    return np.random.default_rng([int(seed), 24, int(row)])


def compute_views(
    row: int, ref: SampleRef, source_box: Sequence[float], count: int, seed: int, ctx: SampleContext,
    fallback_rel: Sequence[float],
) -> list[dict] | str:
    """The ``count`` view records of one source row, or the reason it has none."""
    try:
        sample = read_sample(ref, ctx.model)
        if sample.params is None or ctx.model is None:
            return f"{ref.id}: not a face-model fit"
        landmarks = gt_landmarks_px(sample, ctx.model)
        if landmarks is None:
            return f"{ref.id}: no landmarks"
        out = []
        for k, view in enumerate(profile_views(sample, ctx.model, count, view_rng(seed, row))):
            view_lm = gt_landmarks_px(view.sample, ctx.model)
            located = locate_face(view.sample, view_lm, ctx) or locate_face(view.sample, view_lm, ctx, fallback_rel)
            if located is None or view.sample.params is None:  # neither happens: a fallback box is given, views are fits
                return f"{ref.id}: view {k} has no crop box or fit"
            box, probability, fallback, five = located
            out.append({
                "images": crop_image(view.sample.image, box, CROP_SIZE),
                "boxes": np.asarray(box, dtype=np.float64),
                "landmarks5": five,
                "probabilities": np.float32(probability),
                "fallback": np.uint8(fallback),
                "pose": pose_degrees(view.sample.params.pose),
                "transform": crop_frame_transform(view.transform, landmarks, source_box, box),
                "source": np.int64(row),
                "view": np.uint8(k),
            })
        return out
    except FaceReconError as exc:
        return str(exc)
    except Exception as exc:  # a bad source must not stop the run; the reason is reported
        return f"{ref.id}: {type(exc).__name__}: {exc}"


def _views_job(job: tuple, ctx: SampleContext) -> list[dict] | str:
    """One source row's views (:func:`compute_views`), in this process or a worker."""
    row, ref, box, count, seed, fallback_rel = job
    return compute_views(row, ref, box, count, seed, ctx, fallback_rel)


def _open_group(f, compression: dict) -> tuple[int, int]:
    """The ``views`` group (created when absent), cut back to its marker: (sources done, views)."""
    if "views" not in f:
        g = f.create_group("views")
        for name, (shape, dtype) in VIEW_FIELDS.items():
            chunks = (1, *shape) if name == "images" else (256, *shape)
            g.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks,
                             **(compression if name == "images" else {}))
        g.create_dataset("_progress", data=np.zeros(2, np.int64))
    g = f["views"]
    done, n = (int(v) for v in g["_progress"][:])
    for name in VIEW_FIELDS:
        g[name].resize(n, axis=0)
    return done, n


def add_views(
    f, refs: Sequence[SampleRef], train_rows: np.ndarray, options: Any, ctx: SampleContext, model_path: str | None,
    compression: dict, fallback_rel: Sequence[float], on_progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Append the views of every training row to the partial cache ``f`` (opened ``r+``, not yet
    in SWMR mode), resuming after its marker. Returns the reasons of the sources without views.

    A ``KeyboardInterrupt`` leaves the group at its last marker (the caller reports it).
    """
    done, n = _open_group(f, compression)
    f.flush()
    f.swmr_mode = True
    g = f["views"]
    by_id = {r.id: r for r in refs}
    ids = [b.decode() for b in f["_ids"][: int(f["offsets"].shape[0] - 1)]]
    boxes = f["boxes"][:]
    jobs = [(int(r), by_id[ids[r]], tuple(boxes[r]), options.profile_views, options.split_seed, tuple(fallback_rel))
            for r in train_rows[done:]]
    failures: list[str] = []
    buf: list[dict] = []
    last = time.monotonic()
    results = run_jobs(_views_job, jobs, ctx, options.workers, model_path, options)
    try:
        for res in results:
            if isinstance(res, str):
                failures.append(res)
            else:
                buf.extend(res)
            done += 1
            if len(buf) >= options.flush_every or time.monotonic() - last > options.flush_seconds:
                n, last = _write(g, buf, n, done), time.monotonic()
                buf = []
            if on_progress is not None:
                on_progress(done, len(train_rows))
    finally:
        results.close()
        n = _write(g, buf, n, done)
    return failures


def _write(g, buf: list[dict], n: int, done: int) -> int:
    """Append ``buf``, flush, then move the marker to ``(done, n + len(buf))``."""
    if buf:
        for name in VIEW_FIELDS:
            g[name].resize(n + len(buf), axis=0)
            g[name][n:] = np.stack([np.asarray(v[name]) for v in buf]).astype(g[name].dtype)
    g.file.flush()
    g["_progress"][:] = [done, n + len(buf)]
    g.file.flush()
    return n + len(buf)
