"""What a training run starts from, read from the cache in one pass: :func:`read_cache_statistics`.

One open of the cache, each dataset read once: the whole-cache check of
``facerecon.data.validate`` (a damaged cache is refused, naming the sample) and, from the same
reads, the statistics of one split (the training split by default):

* ``mean_points``: the per-point mean ground truth (shared topology only, 3DMM caches): the
  template placement of a new run (``train.fit_template``) and the mean-face baseline of
  ``facerecon eval`` (:func:`mean_face`);
* ``mean_landmarks``: the mean of the split's 68 landmarks (rows without landmarks left out):
  the landmark head's start (``train.init_landmarks``) and the mean-face baseline's landmarks;
* ``landmark_reference``: the frontal landmark layout saved in every checkpoint (head pose);
* ``face_model``: the face model's mean face (crop axes) and triangles, where the points are its
  vertices in order: the template correspondence of model v2 and ``loss.vertex``;
* with a ``template`` (model v2's finest level): its ``correspondence`` to the face model and the
  split's faces in template topology with their landmarks and five points (``prior_samples``),
  what ``facerecon.model.face_prior.build_face_prior`` learns the shape basis from.

The result is remembered per file (path, size, modification time) and split; a run reads it on
rank 0 and hands it to the other processes (``facerecon.engine.distributed``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from facerecon.data.validate import (
    CacheRows,
    CacheSummary,
    cache_key,
    check_points,
    check_rows,
    is_checked,
    reading_cache,
    remember_checked,
)
from facerecon.errors import InputError


@dataclass(frozen=True)
class CacheStatistics:
    """The statistics of one split of a checked cache (see the module docstring); crop units."""

    summary: CacheSummary
    split: str
    #: (P, 3) float32, or None (see ``mean_points_problem``)
    mean_points: np.ndarray | None
    #: why there is no per-point mean: the split is empty, or its samples' point counts differ
    mean_points_problem: str | None
    #: (68, 3) float32, or None: no sample of the split has landmarks
    mean_landmarks: np.ndarray | None
    #: (68, 3) float32 centred, unit RMS radius, our axes; or None: no sample with landmarks and pose
    landmark_reference: np.ndarray | None
    #: (face-model mean (M, 3) in crop axes, triangles (T, 3) int64), or None: points not in model order
    face_model: tuple[np.ndarray, np.ndarray] | None
    #: the template's correspondence ``(ids, bary)`` (only when read with a template and a face model)
    correspondence: tuple[np.ndarray, np.ndarray] | None = None
    #: ``(faces (S, V, 3), landmarks (S, 68, 3), five points (S, 5, 2))`` of the split's samples in
    #: row order, faces in template topology (by the correspondence)
    prior_samples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: the template the correspondence was made for
    correspondence_template: np.ndarray | None = None
    #: samples of the split in the cache, and of each of its splits (``{"train": n, ...}``)
    n_samples: int = 0
    split_counts: dict[str, int] | None = None


_read: dict[tuple[tuple[str, int, int], str, str | None], CacheStatistics] = {}


def read_cache_statistics(cache: str | os.PathLike[str], split: str = "train", template: np.ndarray | None = None) -> CacheStatistics:
    """Check ``cache`` and read the statistics of ``split``, in one pass (remembered per file).

    Args:
        template: (V, 3) model v2's finest template level: also read its correspondence and the
            split's faces in template topology (``prior_samples``), from the same pass.

    Raises:
        InputError: the cache is damaged or incomplete (``facerecon.data.validate.check_cache``).
    """
    import hashlib

    from facerecon.data.dataset import split_rows

    path = Path(cache)
    digest = None if template is None else hashlib.sha1(np.ascontiguousarray(template, dtype=np.float64).tobytes()).hexdigest()
    key = (cache_key(path), split, digest)
    if key not in _read:
        checked = is_checked(path)  # the values passed already: read only what the statistics need
        with reading_cache(path) as f:
            rows = check_rows(f, path)
            if rows.split is None or rows.landmarks is None or rows.pose is None:
                raise InputError(f"{path}: the cache lacks 'split', 'landmarks' or 'pose'; run facerecon prepare again")
            in_split = split_rows(rows.split, split)
            point_mean, problem = _PointMean.of_rows(rows, in_split, split)
            face_model = _face_model(f)
            gather = None
            if template is not None and face_model is not None:
                gather = _TemplateFaces(rows, in_split, *_correspondence(face_model, template))
            sinks = [x.add for x in (point_mean, gather) if x is not None]

            def on_points(start: int, block: np.ndarray) -> None:
                for sink in sinks:
                    sink(start, block)

            check_points(f, path, rows, on_points if sinks else None, values=not checked)
            five = f["landmarks5"][:] if gather is not None and "landmarks5" in f else None
        remember_checked(path, rows.summary)
        _read[key] = CacheStatistics(
            summary=rows.summary,
            split=split,
            mean_points=point_mean.mean() if point_mean else None,
            mean_points_problem=problem,
            mean_landmarks=mean_landmarks(rows.landmarks[in_split]),
            landmark_reference=landmark_reference(rows.landmarks[in_split], rows.pose[in_split]),
            face_model=face_model,
            correspondence=None if gather is None else (gather.ids, gather.bary),
            prior_samples=None if gather is None else gather.samples(rows.landmarks, five),
            correspondence_template=None if gather is None else np.array(template, copy=True),
            n_samples=int(in_split.size),
            split_counts=_split_counts(rows.split),
        )
    return _read[key]


def _split_counts(split: np.ndarray | None) -> dict[str, int] | None:
    from facerecon.data.dataset import SPLITS

    if split is None:
        return None
    return {name: int(np.count_nonzero(split == code)) for name, code in SPLITS.items()}


class _PointMean:
    """The per-point mean of some samples sharing one point count, summed from the chunks of points
    as ``check_points`` reads them (float64 sums, the samples in row order)."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray, count: int) -> None:
        self.starts, self.stops = starts, stops
        self.total = np.zeros((count, 3), dtype=np.float64)

    @classmethod
    def of_rows(cls, rows: CacheRows, picked: np.ndarray, split: str) -> tuple[_PointMean | None, str | None]:
        """The accumulator for the ``picked`` rows, or (None, why there is no per-point mean)."""
        if picked.size == 0:
            return None, f"the {split} split is empty; the mean-face baseline needs it"
        starts, stops = rows.offsets[picked], rows.offsets[picked + 1]
        counts = stops - starts
        if np.any(counts != counts[0]):
            return None, (
                f"the {split} samples have different point counts ({counts.min()}..{counts.max()}); "
                "the mean-face baseline needs one shared topology (3DMM ground truth)"
            )
        return cls(starts, stops, int(counts[0])), None

    def add(self, start: int, block: np.ndarray) -> None:
        """Add the points ``start`` .. ``start + len(block) - 1`` of the picked samples among them."""
        stop = start + block.shape[0]
        first = int(np.searchsorted(self.stops, start, side="right"))
        last = int(np.searchsorted(self.starts, stop, side="left"))
        for a, b in zip(self.starts[first:last].tolist(), self.stops[first:last].tolist()):
            lo, hi = max(a, start), min(b, stop)
            self.total[lo - a : hi - a] += block[lo - start : hi - start]

    def mean(self) -> np.ndarray:
        return (self.total / self.starts.shape[0]).astype(np.float32)


def _correspondence(face_model: tuple[np.ndarray, np.ndarray], template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from facerecon.model.face_prior import template_correspondence

    return template_correspondence(face_model[0], face_model[1], template)


class _TemplateFaces:
    """The picked samples' ground truth in template topology (``face_prior.template_truth``), from
    the chunks of points as ``check_points`` reads them: each sample's points are collected until
    complete, then mapped (the same arithmetic as reading the sample whole)."""

    def __init__(self, rows: CacheRows, picked: np.ndarray, ids: np.ndarray, bary: np.ndarray) -> None:
        self.ids, self.bary = ids, bary
        self.picked = picked
        self.starts, self.stops = rows.offsets[picked], rows.offsets[picked + 1]
        self.faces: list[np.ndarray | None] = [None] * picked.size
        self._partial: dict[int, np.ndarray] = {}  # sample -> its points so far

    def add(self, start: int, block: np.ndarray) -> None:
        from facerecon.model.face_prior import template_truth

        stop = start + block.shape[0]
        first = int(np.searchsorted(self.stops, start, side="right"))
        last = int(np.searchsorted(self.starts, stop, side="left"))
        for k in range(first, last):
            a, b = int(self.starts[k]), int(self.stops[k])
            lo, hi = max(a, start), min(b, stop)
            if lo == a and hi == b:
                points = block[a - start : b - start]
            else:  # across a chunk boundary
                buf = self._partial.setdefault(k, np.empty((b - a, 3), dtype=block.dtype))
                buf[lo - a : hi - a] = block[lo - start : hi - start]
                if hi < b:
                    continue
                points = self._partial.pop(k)
            self.faces[k] = template_truth(points, self.ids, self.bary)

    def samples(self, landmarks: np.ndarray | None, five: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(faces, landmarks, five points)`` of the picked samples, in row order (``build_face_prior``
        leaves out those without finite faces and landmarks)."""
        if landmarks is None:
            raise InputError("the face prior needs the 68 landmarks of the training samples")
        # every picked sample's points were read by check_points, so no face is None here
        faces = np.stack(cast("list[np.ndarray]", self.faces)) if self.faces else np.zeros((0, self.ids.shape[0], 3), np.float32)
        lms = landmarks[self.picked]
        fives = five[self.picked] if five is not None else np.full((self.picked.size, 5, 2), np.nan, np.float32)
        return faces, lms, fives


def mean_landmarks(landmarks: np.ndarray) -> np.ndarray | None:
    """(68, 3) float32 mean of the (N, 68, 3) landmarks (as stored, float32) of the samples that
    have them (a sample without landmarks is a row of NaN); None when none has."""
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    return landmarks[ok].mean(axis=0).astype(np.float32) if ok.any() else None


def landmark_reference(landmarks: np.ndarray, poses: np.ndarray) -> np.ndarray | None:
    """The frontal 68-landmark layout: each sample's landmarks with its pose undone
    (``frames.frontalise``), averaged. ``predict`` fits it to the predicted landmarks to report
    the head pose.

    Args:
        landmarks: (N, 68, 3) crop units; poses: (N, 3) yaw, pitch, roll degrees.

    Returns:
        (68, 3) float32, centred, unit RMS radius, our axes (x right, y down, z away); None when
        no sample has both landmarks and a pose.
    """
    from facerecon.frames import frontalise

    ok = np.isfinite(landmarks).all(axis=(1, 2)) & np.isfinite(poses).all(axis=1)
    if not ok.any():
        return None
    frontal = np.stack([frontalise(lm, *pose) for lm, pose in zip(landmarks[ok], poses[ok])])
    mean = frontal.mean(axis=0)
    mean = (mean - mean.mean(0)) / np.sqrt(((mean - mean.mean(0)) ** 2).sum(1).mean())
    return mean.astype(np.float32)


def _face_model(f: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The face model's mean (crop axes) and triangles, where the points are its vertices in order."""
    from facerecon.model.face_prior import model_mean_crop_axes

    if not bool(f.attrs.get("points_in_model_order", False)) or "face_model" not in f:
        return None
    return model_mean_crop_axes(f["face_model/mean"][:]), f["face_model/triangles"][:].astype(np.int64)


def mean_face(cache: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """The constant mean-face prediction: the per-point mean of the ``split`` ground truths and
    the mean of their 68 landmarks, in the crop frame.

    The per-point mean needs every sample of the split to hold the same number of points in the
    same order (3DMM ground truth, one vertex per point); otherwise ``InputError``.

    Returns:
        (points (P, 3) float32, landmarks (68, 3) float32; NaN where no sample has landmarks), crop units.
    """
    stats = read_cache_statistics(cache, split)
    if stats.mean_points is None:
        raise InputError(f"{cache}: {stats.mean_points_problem}")
    lms = stats.mean_landmarks if stats.mean_landmarks is not None else np.full((68, 3), np.nan, np.float32)
    return torch.from_numpy(stats.mean_points.copy()), torch.from_numpy(lms.copy())


__all__ = ["CacheStatistics", "landmark_reference", "mean_face", "mean_landmarks", "read_cache_statistics"]
