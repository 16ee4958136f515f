"""One cache row from one raw sample: read it, find its face as ``prepare`` does (detection,
second chance, or the landmarks' box), crop it and build its ground truth in the crop frame.

The crop policy of a dataset sample (which detection is the annotated face: :func:`pick_face`) and
the checks that keep bad annotations out of a cache live here; :mod:`facerecon.data.cache` owns
the HDF5 file and the parallel, resumable run that calls :func:`compute_sample`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Sequence, TypeVar

import numpy as np

from facerecon.crop import CROP_SIZE, box_iou, crop_image, landmark_box, relative_to_box
from facerecon.data.face_model import FaceModel, load_face_model
from facerecon.data.ground_truth import build_ground_truth, gt_landmarks_px
from facerecon.data.readers import RawSample, SampleRef, read_sample
from facerecon.detect import FaceDetector
from facerecon.errors import FaceReconError, InputError
from facerecon.frames import image_to_crop

#: Longest sample id stored in a cache, bytes (UTF-8).
ID_BYTES = 512


@dataclass
class SampleResult:
    """One sample's outcome: its cache ``row`` and point ``cloud``, or the ``error`` that skips it,
    or ``needs_fallback`` (no face detected: the caller supplies the dataset's mean box)."""

    index: int
    id: str
    error: str | None = None
    needs_fallback: bool = False
    row: dict | None = None
    cloud: dict | None = None


@dataclass
class SampleContext:
    """What every sample of a run shares: the face model, ``prepare``'s options (a
    :class:`facerecon.data.cache.PrepareOptions`: ``crop_from``, ``second_chance``, ``device``,
    ``min_probability``) and the detector."""

    model: FaceModel | None
    options: Any
    detector: FaceDetector | None = None  # made when crops come from the detector


_WORKER_CONTEXT: SampleContext | None = None
_Job = TypeVar("_Job")
_Result = TypeVar("_Result")


def make_context(model_path: str | None, options: Any, model: FaceModel | None = None) -> SampleContext:
    """The context of a run: the face model (loaded from ``model_path`` unless given) and, when
    crops come from the detector, a :class:`FaceDetector` with ``options``' settings."""
    if model is None and model_path is not None:
        model = load_face_model(model_path)
    detector = None
    if options.crop_from == "detector":
        # the whole pyramid (faces down to MTCNN's 20 px), as every cache was prepared
        detector = FaceDetector(device=options.device, min_probability=options.min_probability, smallest_face=20)
    return SampleContext(model=model, options=options, detector=detector)


def worker_init(model_path: str | None, options: Any) -> None:
    """A worker process's set-up (``multiprocessing.Pool`` initializer): one torch thread, Ctrl-C
    left to the parent, its own context."""
    # Ctrl-C reaches the whole process group: the parent alone handles it. SIGTERM keeps its
    # default: the parent's Pool.terminate() ends its workers with it (and waits for them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = make_context(model_path, options)


def worker_context() -> SampleContext:
    """The context of this worker process (after :func:`worker_init`)."""
    assert _WORKER_CONTEXT is not None
    return _WORKER_CONTEXT


def sample_job(job: tuple[int, SampleRef], ctx: SampleContext) -> SampleResult:
    """One ``(index, sample)`` job of ``prepare``: :func:`compute_sample`."""
    return compute_sample(job[0], job[1], ctx)


def _in_worker(fn: Callable[[_Job, SampleContext], _Result], job: _Job) -> _Result:
    return fn(job, worker_context())


def run_jobs(
    fn: Callable[[_Job, SampleContext], _Result], jobs: Iterable[_Job], ctx: SampleContext, workers: int,
    model_path: str | None, options: Any,
) -> Generator[_Result, None, None]:
    """``fn(job, context)`` for each job, results in the jobs' order: in this process with ``ctx``
    when ``workers <= 0``, else in a pool of ``workers`` spawned processes, each with its own
    context (:func:`worker_init`; ``fn`` must be a module-level function). The pool is ended
    however the iteration ends (Ctrl-C, SIGTERM, an error, the caller stopping early)."""
    if workers <= 0:
        for job in jobs:
            yield fn(job, ctx)
        return
    import functools
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers, initializer=worker_init, initargs=(model_path, options))
    try:
        yield from pool.imap(functools.partial(_in_worker, fn), jobs, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


#: A detection is the annotated face when its crop box and the landmarks' crop box (both the
#: 1.1x square) overlap by at least this IoU. On the shared AFLW2000-3D set, 99 % of the crops of
#: MTCNN's full search overlap by 0.40 or more (median 0.60); below 0.3 are a face part, a smaller
#: face beside it, or a false positive.
MIN_FACE_IOU = 0.3


def pick_face(faces: list, landmarks_px: np.ndarray | None):
    """The detection of the annotated face: the largest IoU of its crop box with the landmarks'
    (most confident without landmarks); None when none reaches ``MIN_FACE_IOU``."""
    if not faces:
        return None
    if landmarks_px is None:
        return faces[0]
    x0, y0, side = landmark_box(landmarks_px)
    ref = (x0, y0, x0 + side, y0 + side)
    ious = [box_iou((f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[2]), ref) for f in faces]
    best = int(np.argmax(ious))
    return faces[best] if ious[best] >= MIN_FACE_IOU else None


def compute_sample(index: int, ref: SampleRef, ctx: SampleContext, fallback_rel: Sequence[float] | None = None) -> SampleResult:
    """Read, crop and build the ground truth of one source sample.

    Returns a :class:`SampleResult` with the row and point arrays, or ``error`` (a bad sample), or
    ``needs_fallback`` (no face detected: the caller supplies the fallback box).
    """
    try:
        sample = read_sample(ref, ctx.model)
        _check_finite_params(sample, ref)
        width, height = sample.image_size
        lm = gt_landmarks_px(sample, ctx.model)
        located = locate_face(sample, lm, ctx, fallback_rel)
        if located is None:
            return SampleResult(index, ref.id, needs_fallback=True)
        box, probability, fallback, five = located
        crop = crop_image(sample.image, box, CROP_SIZE)
        gt = build_ground_truth(sample, box, ctx.model)
        _check_finite_ground_truth(gt, ref)
        if len(ref.id.encode()) > ID_BYTES:
            raise InputError(f"{ref.id}: sample id longer than {ID_BYTES} bytes")
    except FaceReconError as exc:
        return SampleResult(index, ref.id, error=str(exc))
    except Exception as exc:  # a bad file must not stop a 60k-sample run; the reason is reported
        return SampleResult(index, ref.id, error=f"{ref.id}: {type(exc).__name__}: {exc}")
    row = {
        "images": crop,
        "landmarks": gt.landmarks,
        "landmarks5": five.astype(np.float32),
        "boxes": np.asarray(box, dtype=np.float64),
        "probabilities": np.float32(probability),
        "fallback": np.uint8(fallback),
        "pose": gt.pose,
        "mm_per_unit": np.float32(gt.mm_per_unit),
        "image_sizes": np.array([width, height], dtype=np.int32),
        "_ids": ref.id.encode(),
    }
    cloud = {"points": gt.points, "normals": gt.normals, "regions": gt.regions, "colors": gt.colors}
    return SampleResult(index, ref.id, row=row, cloud=cloud)


def locate_face(
    sample: RawSample, landmarks_px: np.ndarray | None, ctx: SampleContext, fallback_rel: Sequence[float] | None = None
) -> tuple[tuple[float, float, float], float, bool, np.ndarray] | None:
    """The crop box of a sample's face as ``prepare`` finds it: the fallback box when given, the
    landmarks' box (``--crop-from landmarks``), or the detection of the annotated face (full
    search, a doubtful find rechecked on turned copies, or else the second chance; a rolled
    face's five points from a levelled copy), ``predict``'s policy.

    Returns:
        ``(box, probability, fallback, five)`` (box image px; five ``(5, 2)`` float32 crop units,
        NaN without a detection), or None when the detector finds no face (the caller supplies
        the fallback box).
    """
    probability, fallback = float("nan"), False
    five = np.full((5, 2), np.nan, dtype=np.float32)
    width, height = sample.image_size
    if fallback_rel is not None:
        return relative_to_box(fallback_rel, (width, height)), probability, True, five
    if ctx.options.crop_from == "landmarks":
        if landmarks_px is None:
            raise InputError(f"{sample.id}: no landmarks for --crop-from landmarks")
        return landmark_box(landmarks_px), probability, fallback, five
    detector = ctx.detector
    assert detector is not None, "crop_from='detector' makes a detector (make_context)"
    face = pick_face(detector.detect(sample.image), landmarks_px)
    if ctx.options.second_chance:  # as predict: a doubtful find checked on turned copies, or the last chances
        if face is not None:
            face = detector.recheck(sample.image, face)
        else:
            face = pick_face(detector.detect_second_chance(sample.image), landmarks_px)
    if face is None:
        return None
    face = detector.level(sample.image, face)  # a rolled face's five points, as predict takes them
    box, probability = (float(face.box[0]), float(face.box[1]), float(face.box[2])), float(face.probability)
    if face.landmarks5 is not None:
        five = image_to_crop(np.asarray(face.landmarks5, dtype=np.float64), box).astype(np.float32)
    return box, probability, fallback, five


def _check_finite_params(sample, ref: SampleRef) -> None:
    """Refuse NaN / inf face-model parameters where they enter (else they become NaN points)."""
    params = getattr(sample, "params", None)
    if params is None:
        return
    where = ref.annotation_path or ref.id
    for name, values in (("Shape_Para", params.shape), ("Exp_Para", params.exp)):
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
        if bad.any():
            raise InputError(f"{where}: {name} holds {int(bad.sum())} non-finite value(s) (NaN or inf)")


def _check_finite_ground_truth(gt, ref: SampleRef) -> None:
    """Refuse a ground truth with non-finite values (e.g. parameters so large they overflow)."""
    for name in ("points", "normals"):
        values = np.asarray(getattr(gt, name))
        if not np.isfinite(values).all():
            raise InputError(f"{ref.id}: the ground truth has non-finite {name} (NaN or inf; check its annotation)")
    lm = np.asarray(gt.landmarks, dtype=np.float64)
    if not (np.isfinite(lm).all() or np.isnan(lm).all()):
        raise InputError(f"{ref.id}: the ground-truth landmarks are partly non-finite (check its annotation)")


__all__ = [
    "ID_BYTES",
    "MIN_FACE_IOU",
    "SampleContext",
    "SampleResult",
    "compute_sample",
    "locate_face",
    "make_context",
    "pick_face",
    "worker_context",
    "worker_init",
    "run_jobs",
    "sample_job",
]
