"""Readers for raw face datasets; each yields the same :class:`RawSample` record.

Supported layouts (``detect_format`` picks one, or name it explicitly):

* ``aflw2000`` -- a flat folder of ``NAME.jpg`` + ``NAME.mat`` (AFLW2000-3D; also any single
  300W-LP subfolder). Ids ``aflw2000/NAME``.
* ``300wlp`` -- 300W-LP: subfolders ``AFW/ HELEN/ IBUG/ LFPW/`` and their ``*_Flip`` twins, each of
  ``NAME.jpg`` + ``NAME.mat`` (the ``landmarks/`` folder of the release is ignored). Ids
  ``300wlp/SUBFOLDER/NAME``. In ``*_Flip`` folders the ``pt2d`` landmarks are mirrored but not
  re-ordered: we re-order them with :data:`FLIP_PERMUTATION_68`.
* ``scans`` -- a folder of images, each with a point cloud of the same stem (``NAME.ply``,
  ``NAME.obj`` or ``NAME.npy``; ``.npy`` is ``(P, 3)`` points or ``(P, 6)`` points + normals),
  optional ``NAME.landmarks.npy`` ``(68, 3)``, and the scale in ``NAME.json`` or a folder-wide
  ``scan_info.json`` (``{"mm_per_px": 0.5}``). Points, normals and landmarks are in image px
  (docs/conventions.md: x right, y down, 0-based continuous; z away from the camera, in px).

The ``.mat`` files are 1-based (MATLAB): a coordinate ``k`` there is ``k - 0.5`` here.
Listing is cheap (:func:`list_samples`); :func:`read_sample` does the I/O and raises
:class:`~facerecon.errors.InputError` for a bad sample, so callers can skip and report it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.errors import InputError
from facerecon.imageio import IMAGE_SUFFIXES, load_image

FORMATS = ("aflw2000", "300wlp", "scans")

#: 300W-LP subfolders (each may also exist as ``NAME_Flip``).
SUBSETS_300WLP = ("AFW", "HELEN", "IBUG", "LFPW")

#: Left/right permutation of the 68 iBUG landmarks: point ``i`` of a mirrored face is point
#: ``FLIP_PERMUTATION_68[i]`` of the original (an involution).
FLIP_PERMUTATION_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw 0..16 <-> 16..0
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,  # eyebrows 17..21 <-> 26..22
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # nostrils 31..35
    45, 44, 43, 42, 47, 46,  # right eye 36..41 <-> left eye 45, 44, 43, 42, 47, 46
    39, 38, 37, 36, 41, 40,  # left eye 42..47
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lip 48..59
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lip 60..67
)

_MAT_FIELDS = ("Shape_Para", "Exp_Para", "Pose_Para")
#: Values per field in the AFLW2000-3D / 300W-LP fits (3DDFA: the BFM's 199 shape components, the
#: 29 of its expression model, the pose). A shorter field would read as its missing coefficients
#: set to zero (the face model pads them), i.e. as a plausible but wrong face: refused instead.
_MAT_LENGTHS = {"Shape_Para": 199, "Exp_Para": 29, "Pose_Para": 7}
_CLOUD_SUFFIXES = (".ply", ".obj", ".npy")


@dataclass
class Params3DMM:
    """3DMM fit of one image (AFLW2000-3D / 300W-LP ``.mat``).

    Attributes:
        shape: ``(199,)`` float64 raw BFM shape coefficients (``Shape_Para``).
        exp: ``(29,)`` float64 expression coefficients (``Exp_Para``).
        pose: ``(7,)`` float64 ``Pose_Para`` = [pitch, yaw, roll (radians), tx, ty, tz, s];
            ``s`` maps model units to pixels.
    """

    shape: np.ndarray
    exp: np.ndarray
    pose: np.ndarray


@dataclass(frozen=True)
class SampleRef:
    """A sample before reading: what :func:`list_samples` returns (cheap, picklable)."""

    id: str
    format: str
    image_path: Path
    annotation_path: Path | None
    flipped: bool = False


@dataclass
class RawSample:
    """One raw sample, whatever the dataset.

    Attributes:
        id: stable id, e.g. ``"aflw2000/image00002"`` or ``"300wlp/AFW_Flip/AFW_134212_1_0"``.
        image_path: the source image.
        image: ``(H, W, 3)`` uint8 RGB.
        params: the 3DMM fit, or None for scans.
        points: ``(P, 3)`` float32 image px, scans only (None otherwise).
        normals: ``(P, 3)`` float32 unit, scans with normals only.
        landmarks68: ``(68, 3)`` float32 image px (z away from the camera, px): ``pt3d_68`` where
            present, else the face model's landmark vertices when a model was given, else None.
        landmarks2d: ``(68, 2)`` float32 image px, 300W-LP's ``pt2d`` (re-ordered when flipped).
        flipped: the sample comes from a ``*_Flip`` folder.
        mm_per_px: millimetres per image pixel, scans only (None when unknown).
    """

    id: str
    image_path: Path
    image: np.ndarray
    params: Params3DMM | None = None
    points: np.ndarray | None = None
    normals: np.ndarray | None = None
    landmarks68: np.ndarray | None = None
    landmarks2d: np.ndarray | None = None
    flipped: bool = False
    mm_per_px: float | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(W, H)`` in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


# ----------------------------------------------------------------------------------------------
# listing


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _cloud_for(image: Path) -> Path | None:
    for suffix in _CLOUD_SUFFIXES:
        cand = image.with_suffix(suffix)
        if cand.is_file():
            return cand
    return None


def detect_format(root: str | os.PathLike[str]) -> str:
    """Which of :data:`FORMATS` the folder ``root`` holds.

    Raises:
        InputError: not a folder, or no known layout (the message lists what was expected).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if any(s in subdirs or f"{s}_Flip" in subdirs for s in SUBSETS_300WLP):
        return "300wlp"
    images = _images(root)
    if any(p.with_suffix(".mat").is_file() for p in images):
        return "aflw2000"
    if any(_cloud_for(p) is not None for p in images):
        return "scans"
    raise InputError(
        f"{root}: unknown dataset layout; expected AFLW2000-3D (NAME.jpg + NAME.mat in one folder), "
        f"300W-LP (subfolders {', '.join(SUBSETS_300WLP)} and *_Flip) or scans (NAME.jpg + NAME.ply/.obj/.npy)"
    )


def list_samples(root: str | os.PathLike[str], fmt: str = "auto") -> list[SampleRef]:
    """Every sample of the dataset at ``root`` in a deterministic (sorted) order.

    Images without their annotation file are listed too (reading them fails and the caller reports
    them), so a half-copied dataset is noticed.
    """
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise InputError(f"unknown dataset format {fmt!r} (expected auto or one of {', '.join(FORMATS)})")
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    refs: list[SampleRef] = []
    if fmt == "aflw2000":
        for img in _images(root):
            refs.append(SampleRef(f"aflw2000/{img.stem}", fmt, img, img.with_suffix(".mat")))
    elif fmt == "300wlp":
        subsets = [*SUBSETS_300WLP, *(f"{s}_Flip" for s in SUBSETS_300WLP)]
        for sub in sorted(s for s in subsets if (root / s).is_dir()):
            for img in _images(root / sub):
                refs.append(SampleRef(f"300wlp/{sub}/{img.stem}", fmt, img, img.with_suffix(".mat"), sub.endswith("_Flip")))
    else:
        for img in _images(root):
            refs.append(SampleRef(f"scans/{img.stem}", fmt, img, _cloud_for(img)))
    if not refs:
        raise InputError(f"{root}: no samples found for the {fmt} layout")
    return refs


# ----------------------------------------------------------------------------------------------
# reading


def read_sample(ref: SampleRef, face_model=None) -> RawSample:
    """Load one sample (image + annotation).

    Args:
        ref: from :func:`list_samples`.
        face_model: optional :class:`~facerecon.data.face_model.FaceModel`; when given, samples
            without ``pt3d_68`` (300W-LP) get ``landmarks68`` from the model's landmark vertices.

    Raises:
        InputError: unreadable image, missing or corrupt annotation, missing fields.
    """
    if ref.format in ("aflw2000", "300wlp"):
        return _read_mat_sample(ref, face_model)
    if ref.format == "scans":
        return _read_scan_sample(ref)
    raise InputError(f"{ref.id}: unknown format {ref.format!r}")


def load_mat(path: str | os.PathLike[str]) -> dict:
    """The variables of a MATLAB ``.mat`` file, whatever its version.

    v4 to v7 files are read by ``scipy.io.loadmat``; v7.3 files (HDF5) by h5py, each array
    transposed back to MATLAB's shape (HDF5 stores MATLAB's column-major arrays with the axes
    reversed), so both give the same ``{name: array}`` (at least 2-D, as MATLAB sees it). A struct
    is scipy's ``(1, 1)`` record array from a v5 file and a ``{field: array}`` dict from a v7.3
    file; MATLAB's bookkeeping (``__header__``, ``#refs#``, ...) is left in / out as each reader does.

    Raises:
        InputError: the file cannot be read as a ``.mat`` file (the message names it and why).
    """
    import scipy.io

    path = Path(path)
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        return _load_mat_v73(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... on corrupt files
        raise InputError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from None


def _load_mat_v73(path: Path) -> dict:
    import h5py

    def value(obj):
        if isinstance(obj, h5py.Group):  # a struct
            return {k: value(obj[k]) for k in obj.keys() if not k.startswith("#")}
        return np.asarray(obj[()]).T

    try:
        with h5py.File(path, "r") as f:
            return {k: value(f[k]) for k in f.keys() if not k.startswith("#")}
    except Exception as exc:  # h5py raises OSError, KeyError, ... on damaged files
        raise InputError(f"{path}: cannot read .mat file (v7.3, {type(exc).__name__}: {exc})") from None


def _read_mat_sample(ref: SampleRef, face_model) -> RawSample:
    assert ref.annotation_path is not None
    if not ref.annotation_path.is_file():
        raise InputError(f"{ref.annotation_path}: annotation file missing")
    mat = load_mat(ref.annotation_path)
    missing = [k for k in _MAT_FIELDS if k not in mat]
    if missing:
        raise InputError(f"{ref.annotation_path}: missing field(s) {', '.join(missing)}")
    params = Params3DMM(*(_mat_vector(mat, name, ref.annotation_path) for name in _MAT_FIELDS))
    if not np.all(np.isfinite(params.pose)) or params.pose[6] <= 0:
        raise InputError(f"{ref.annotation_path}: Pose_Para must be 7 finite numbers with a positive scale")
    image = load_image(ref.image_path)
    landmarks68 = None
    if "pt3d_68" in mat:
        pt = np.asarray(mat["pt3d_68"], dtype=np.float64)
        if pt.shape != (3, 68):
            raise InputError(f"{ref.annotation_path}: pt3d_68 must be (3, 68), got {pt.shape}")
        landmarks68 = np.stack([pt[0] - 0.5, pt[1] - 0.5, -pt[2]], axis=1).astype(np.float32)
    landmarks2d = None
    if "pt2d" in mat and np.asarray(mat["pt2d"]).shape == (2, 68):
        landmarks2d = (np.asarray(mat["pt2d"], dtype=np.float64).T - 0.5).astype(np.float32)
        if ref.flipped:
            landmarks2d = landmarks2d[list(FLIP_PERMUTATION_68)]
    if landmarks68 is None and face_model is not None:
        landmarks68 = face_model.landmarks_px(params.shape, params.exp, params.pose, image.shape[0])
    return RawSample(
        id=ref.id,
        image_path=ref.image_path,
        image=image,
        params=params,
        landmarks68=landmarks68,
        landmarks2d=landmarks2d,
        flipped=ref.flipped,
    )


def _mat_vector(mat: dict, name: str, path: Path) -> np.ndarray:
    """Field ``name`` of a fit as a float64 vector of the length the format defines (else one
    line naming the file, the field and both lengths)."""
    try:
        values = np.asarray(mat[name], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {name} is not numeric") from None
    if values.shape[0] != _MAT_LENGTHS[name]:
        raise InputError(f"{path}: {name} holds {values.shape[0]} values, the format has {_MAT_LENGTHS[name]} (a cut or foreign fit)")
    return values


def _read_cloud(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read point cloud ({exc})") from None
        if arr.ndim != 2 or arr.shape[1] not in (3, 6):
            raise InputError(f"{path}: expected (P, 3) points or (P, 6) points + normals, got {arr.shape}")
        arr = arr.astype(np.float32)
        return arr[:, :3], (arr[:, 3:] if arr.shape[1] == 6 else None)
    import trimesh

    try:
        geom = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types
        raise InputError(f"{path}: cannot read point cloud ({type(exc).__name__}: {exc})") from None
    points = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float32)
    normals = None
    if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
        normals = np.asarray(geom.vertex_normals, dtype=np.float32)
    elif "ply_raw" in getattr(geom, "metadata", {}):
        vert = geom.metadata["ply_raw"]["vertex"]["data"]
        if all(k in vert.dtype.names for k in ("nx", "ny", "nz")):
            normals = np.stack([vert["nx"], vert["ny"], vert["nz"]], axis=1).astype(np.float32)
    return points, normals


def _read_scan_sample(ref: SampleRef) -> RawSample:
    if ref.annotation_path is None or not ref.annotation_path.is_file():
        raise InputError(f"{ref.image_path}: no point cloud beside it (NAME.ply, NAME.obj or NAME.npy)")
    points, normals = _read_cloud(ref.annotation_path)
    if points.shape[0] == 0 or not np.all(np.isfinite(points)):
        raise InputError(f"{ref.annotation_path}: empty point cloud or non-finite coordinates")
    if normals is not None:
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = normals / np.maximum(norm, 1e-12)
    image = load_image(ref.image_path)
    lm_path = ref.image_path.with_name(ref.image_path.stem + ".landmarks.npy")
    landmarks68 = None
    if lm_path.is_file():
        landmarks68 = np.load(lm_path, allow_pickle=False).astype(np.float32)
        if landmarks68.shape != (68, 3):
            raise InputError(f"{lm_path}: expected (68, 3) landmarks in image px, got {landmarks68.shape}")
    mm_per_px = None
    for meta in (ref.image_path.with_suffix(".json"), ref.image_path.parent / "scan_info.json"):
        if meta.is_file():
            try:
                mm_per_px = float(json.loads(meta.read_text())["mm_per_px"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{meta}: expected a JSON object with a number mm_per_px ({exc})") from None
            break
    return RawSample(
        id=ref.id,
        image_path=ref.image_path,
        image=image,
        points=points,
        normals=normals,
        landmarks68=landmarks68,
        mm_per_px=mm_per_px,
    )
