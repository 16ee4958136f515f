"""Datasets, face models, dense ground truth, the HDF5 cache and the training reader.

Light to import: ``torch`` and ``h5py`` load only when the cache or the Dataset is used.

- :mod:`facerecon.data.readers`: AFLW2000-3D, 300W-LP and scan folders -> :class:`RawSample`.
- :mod:`facerecon.data.face_model`: :class:`FaceModel`, :func:`load_face_model`, :func:`save_face_model`.
- :mod:`facerecon.data.ground_truth`: dense points, normals, regions, colours in the crop frame.
- :mod:`facerecon.data.cache`: ``prepare`` (resumable, parallel HDF5 writer).
- :mod:`facerecon.data.dataset`: :class:`FaceCacheDataset` and :func:`collate_faces`.
"""

from __future__ import annotations

from typing import Any

from facerecon.data.face_model import FaceModel, load_face_model, save_face_model
from facerecon.data.ground_truth import GroundTruth, build_ground_truth
from facerecon.data.readers import FLIP_PERMUTATION_68, RawSample, SampleRef, list_samples, read_sample

_LAZY = {
    "FaceCacheDataset": "facerecon.data.dataset",
    "collate_faces": "facerecon.data.dataset",
    "prepare_cache": "facerecon.data.cache",
    "PrepareOptions": "facerecon.data.cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facerecon.data' has no attribute {name!r}")


__all__ = [
    "FLIP_PERMUTATION_68",
    "FaceCacheDataset",
    "FaceModel",
    "GroundTruth",
    "PrepareOptions",
    "RawSample",
    "SampleRef",
    "build_ground_truth",
    "collate_faces",
    "list_samples",
    "load_face_model",
    "prepare_cache",
    "read_sample",
    "save_face_model",
]
