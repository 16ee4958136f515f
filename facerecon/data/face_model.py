"""Linear 3D morphable face models (the Basel Face Model and its reduced forms) behind one interface.

A :class:`FaceModel` holds a mean face, a shape and an expression basis, the triangles and the 68
landmark vertex ids, all on the same vertex set. Vertices from parameters::

    V = mean + shape_basis @ alpha + exp_basis @ beta          # (N, 3), model units

The bases are stored xyz-interleaved, ``(3N, K)`` float32, like the BFM files, so
``V.reshape(-1)[3 i + c]`` is coordinate ``c`` of vertex ``i``. Parameters longer than a basis are
truncated (the reduced 3DDFA model applies only the first 40 shape and 10 expression parameters:
an approximation, 0.83 % landmark NME on AFLW2000-3D), shorter ones are zero-padded.

:func:`load_face_model` detects the format of what the user points at:

* our ``.npz`` (written by :func:`save_face_model`: fast to load);
* face3d's ``BFM.mat`` (a ``model`` struct bundling BFM 2009 cut to 53,215 vertices and the
  29-component 3DDFA expression basis);
* a folder with BFM 2009's ``01_MorphableModel.mat`` and 3DDFA's ``Model_Expression.mat``
  (``mu_exp``, ``w_exp``), plus ``model_info.mat`` (``trimIndex``) to cut the 53,490 BFM vertices
  to the 53,215 the expression model and the AFLW2000-3D / 300W-LP fits use; or 3DDFA's
  ``Model_Shape.mat`` (``mu_shape``, ``w``, ``tri``, ``keypoints``) instead of the BFM file;
* the reduced 3DDFA folder (``u_shp.npy``, ``u_exp.npy``, ``w_shp_sim.npy``, ``w_exp_sim.npy``,
  ``keypoints_sim.npy``, optional ``tri.mat``).

The 68 landmark ids come from the files (``kpt_ind``, ``keypoints``, ``keypoints_sim.npy``) or from
a ``landmark_ids.txt`` / ``landmark_ids.npy`` (68 zero-based vertex ids) beside them.
The Basel Face Model may not be redistributed: the toolkit ships none of these files.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerecon.data.readers import load_mat
from facerecon.errors import InputError
from facerecon.frames import rotation_from_euler
from facerecon.io_utils import atomic_path

#: Model units per millimetre for each supported unit name.
UNITS_PER_MM = {"um": 1000.0, "mm": 1.0, "m": 0.001}

#: Version of the ``.npz`` face-model layout written by :func:`save_face_model`.
NPZ_FORMAT_VERSION = 1

_REDUCED_FILES = ("u_shp.npy", "u_exp.npy", "w_shp_sim.npy", "w_exp_sim.npy", "keypoints_sim.npy")


@dataclass
class FaceModel:
    """A linear face model on ``N`` vertices.

    Attributes:
        name: a short description (format and size), recorded in caches.
        mean: ``(N, 3)`` float32, model units, the mean face (identity + expression means).
        shape_basis: ``(3N, Ks)`` float32, model units per parameter unit, xyz-interleaved rows.
        exp_basis: ``(3N, Ke)`` float32, same layout.
        triangles: ``(T, 3)`` int64, 0-based vertex ids.
        landmark_ids: ``(68,)`` int64, 0-based ids of the 68 landmark vertices (iBUG order).
        units: ``"um"`` for the BFM (micrometres), see :data:`UNITS_PER_MM`.
        sha256: hex digest over the source files (or the arrays), identifies the model in caches.
        sources: the file names the model was read from.
    """

    name: str
    mean: np.ndarray
    shape_basis: np.ndarray
    exp_basis: np.ndarray
    triangles: np.ndarray
    landmark_ids: np.ndarray
    units: str = "um"
    sha256: str = ""
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32).reshape(-1, 3)
        n = self.mean.shape[0]
        self.shape_basis = np.ascontiguousarray(self.shape_basis, dtype=np.float32).reshape(3 * n, -1)
        self.exp_basis = np.ascontiguousarray(self.exp_basis, dtype=np.float32).reshape(3 * n, -1)
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int64).reshape(-1, 3)
        self.landmark_ids = np.ascontiguousarray(self.landmark_ids, dtype=np.int64).reshape(-1)
        where = self.name or "face model"
        if self.landmark_ids.shape != (68,):
            raise InputError(f"{where}: expected 68 landmark ids, got {self.landmark_ids.shape[0]}")
        if self.landmark_ids.min() < 0 or self.landmark_ids.max() >= n:
            raise InputError(f"{where}: landmark ids out of range for {n} vertices")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise InputError(f"{where}: triangle vertex ids out of range for {n} vertices")
        if self.units not in UNITS_PER_MM:
            raise InputError(f"{where}: unknown units {self.units!r} (expected one of {sorted(UNITS_PER_MM)})")
        if not self.sha256:
            self.sha256 = _hash_arrays(self.mean, self.shape_basis, self.exp_basis, self.triangles, self.landmark_ids)

    @property
    def n_vertices(self) -> int:
        """Number of vertices ``N``."""
        return int(self.mean.shape[0])

    @property
    def units_per_mm(self) -> float:
        """Model units in one millimetre (1000 for the BFM's micrometres)."""
        return UNITS_PER_MM[self.units]

    def vertices(self, shape_params: np.ndarray, exp_params: np.ndarray) -> np.ndarray:
        """Vertices of the face with the given parameters, before any pose.

        Args:
            shape_params: ``(Ks',)`` raw shape coefficients (AFLW2000-3D ``Shape_Para``); only the
                first ``Ks`` are used, missing ones are zero.
            exp_params: ``(Ke',)`` expression coefficients (``Exp_Para``), same rule.

        Returns:
            ``(N, 3)`` float32, model units.
        """
        alpha = _fit_length(shape_params, self.shape_basis.shape[1]).astype(np.float32)
        beta = _fit_length(exp_params, self.exp_basis.shape[1]).astype(np.float32)
        # float32 products (sgemv, 2x faster): ~1e-2 um error on a ~1e5 um face
        flat = self.mean.reshape(-1) + self.shape_basis @ alpha + self.exp_basis @ beta
        return flat.reshape(-1, 3).astype(np.float32, copy=False)

    def landmark_vertices(self, shape_params: np.ndarray, exp_params: np.ndarray) -> np.ndarray:
        """The 68 landmark vertices only (cheap): ``(68, 3)`` float32, model units."""
        rows = (3 * self.landmark_ids[:, None] + np.arange(3)).reshape(-1)
        alpha = _fit_length(shape_params, self.shape_basis.shape[1])
        beta = _fit_length(exp_params, self.exp_basis.shape[1])
        flat = self.mean.reshape(-1)[rows].astype(np.float64)
        flat = flat + self.shape_basis[rows] @ alpha + self.exp_basis[rows] @ beta
        return flat.reshape(68, 3).astype(np.float32)

    def landmarks_px(self, shape_params: np.ndarray, exp_params: np.ndarray, pose: np.ndarray, image_height: int) -> np.ndarray:
        """The 68 landmark vertices of a fit posed into the image: :meth:`landmark_vertices`
        through :func:`project_to_image`.

        Args:
            shape_params, exp_params: as for :meth:`vertices`.
            pose: ``(7,)`` ``Pose_Para``.
            image_height: ``H`` in pixels.

        Returns:
            ``(68, 3)`` float32 image px (z away from the camera, px).
        """
        return project_to_image(self.landmark_vertices(shape_params, exp_params), pose, image_height)


def _fit_length(params: np.ndarray, k: int) -> np.ndarray:
    params = np.asarray(params, dtype=np.float64).reshape(-1)
    if params.shape[0] >= k:
        return params[:k]
    return np.concatenate([params, np.zeros(k - params.shape[0])])


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# loading


def load_face_model(path: str | os.PathLike[str]) -> FaceModel:
    """Load a face model, detecting its format (see the module docstring).

    Args:
        path: an ``.npz`` written by :func:`save_face_model`, face3d's ``BFM.mat``, BFM 2009's
            ``01_MorphableModel.mat`` / 3DDFA's ``Model_Shape.mat`` (the expression model and
            helpers are looked up beside it), or a folder holding one of these layouts.

    Raises:
        InputError: missing files, unknown layout or inconsistent arrays (the message says which
            files were expected).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: face model not found (give a .npz, BFM.mat, 01_MorphableModel.mat or a folder)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _load_npz(path)
        if suffix == ".mat":
            if path.name.lower() in ("01_morphablemodel.mat", "model_shape.mat"):
                return _load_bfm_folder(path.parent, shape_file=path)
            return _load_mat_file(path)
        raise InputError(f"{path}: unknown face-model file type {suffix!r} (expected .npz or .mat)")
    if all((path / f).is_file() for f in _REDUCED_FILES):
        return _load_reduced(path)
    for name in ("BFM.mat", "bfm.mat"):
        if (path / name).is_file():
            return _load_mat_file(path / name)
    for name in ("01_MorphableModel.mat", "Model_Shape.mat"):
        if (path / name).is_file():
            return _load_bfm_folder(path, shape_file=path / name)
    npz = sorted(path.glob("*.npz"))
    if len(npz) == 1:
        return _load_npz(npz[0])
    raise InputError(
        f"{path}: no face model layout recognised; expected one of: a reduced 3DDFA folder "
        f"({', '.join(_REDUCED_FILES)}), face3d's BFM.mat, 01_MorphableModel.mat + Model_Expression.mat "
        f"(+ model_info.mat), Model_Shape.mat + Model_Expression.mat, or a facerecon .npz"
    )


def save_face_model(model: FaceModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as an uncompressed ``.npz`` (atomically) that :func:`load_face_model` reads fast."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"{path}: the converted face model must be a .npz file")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                format_version=np.int64(NPZ_FORMAT_VERSION),
                name=np.array(model.name),
                units=np.array(model.units),
                sha256=np.array(model.sha256),
                mean=model.mean,
                shape_basis=model.shape_basis,
                exp_basis=model.exp_basis,
                triangles=model.triangles,
                landmark_ids=model.landmark_ids,
            )
    return path


def _load_npz(path: Path) -> FaceModel:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mean", "shape_basis", "exp_basis", "triangles", "landmark_ids") if k not in z]
            if missing:
                raise InputError(f"{path}: not a facerecon face model (missing {', '.join(missing)})")
            return FaceModel(
                name=str(z["name"]) if "name" in z else path.stem,
                mean=z["mean"],
                shape_basis=z["shape_basis"],
                exp_basis=z["exp_basis"],
                triangles=z["triangles"],
                landmark_ids=z["landmark_ids"],
                units=str(z["units"]) if "units" in z else "um",
                sha256=str(z["sha256"]) if "sha256" in z else "",
                sources=[path.name],
            )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"{path}: cannot read face model ({reason})") from None


def _mat_field(path: Path, name: str) -> np.ndarray:
    data = load_mat(path)
    if name not in data:
        raise InputError(f"{path}: expected the array {name!r}")
    return data[name]


def _tri_rows(tri: np.ndarray, one_based: bool, where: Path) -> np.ndarray:
    tri = np.asarray(tri).astype(np.int64)
    if tri.ndim != 2 or 3 not in tri.shape:
        raise InputError(f"{where}: triangles must be (T, 3) or (3, T), got {tri.shape}")
    if tri.shape[1] != 3:  # MATLAB files often store (3, T)
        tri = tri.T
    return np.ascontiguousarray(tri - (1 if one_based else 0))


def _load_npy(path: Path) -> np.ndarray:
    """``np.load`` of one array file, never pickles; a clear ``InputError`` naming a bad file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, or an object array
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"{path}: cannot read this face-model array ({reason})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        raise InputError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{path}: holds non-finite values (NaN or inf)")
    return arr


def _landmarks_beside(folder: Path) -> np.ndarray | None:
    if (folder / "landmark_ids.npy").is_file():
        return _load_npy(folder / "landmark_ids.npy").reshape(-1).astype(np.int64)
    if (folder / "landmark_ids.txt").is_file():
        try:
            return np.loadtxt(folder / "landmark_ids.txt", dtype=np.int64).reshape(-1)
        except ValueError as exc:
            raise InputError(f"{folder / 'landmark_ids.txt'}: expected 68 whole numbers ({exc})") from None
    if (folder / "keypoints_sim.npy").is_file():
        return _load_npy(folder / "keypoints_sim.npy").reshape(-1)[0::3].astype(np.int64) // 3
    return None


def _load_reduced(folder: Path) -> FaceModel:
    files = [folder / f for f in _REDUCED_FILES]
    u_shp, u_exp = _load_npy(files[0]).reshape(-1), _load_npy(files[1]).reshape(-1)
    if u_shp.shape != u_exp.shape or u_shp.shape[0] % 3:
        raise InputError(f"{folder}: u_shp.npy ({u_shp.shape[0]} values) and u_exp.npy ({u_exp.shape[0]}) must hold the same 3N values")
    mean = u_shp + u_exp
    w_shp, w_exp = _load_npy(files[2]), _load_npy(files[3])
    if w_shp.ndim != 2 or w_exp.ndim != 2:
        raise InputError(f"{folder}: w_shp_sim.npy and w_exp_sim.npy must be (3N, K) matrices, got {w_shp.shape} and {w_exp.shape}")
    landmark_ids = _load_npy(files[4]).reshape(-1)[0::3].astype(np.int64) // 3
    tri_file = folder / "tri.mat"
    if tri_file.is_file():
        files.append(tri_file)
        triangles = _tri_rows(_mat_field(tri_file, "tri"), one_based=True, where=tri_file)
    elif (folder / "tri.npy").is_file():
        files.append(folder / "tri.npy")
        triangles = _tri_rows(_load_npy(folder / "tri.npy"), one_based=False, where=folder / "tri.npy")
    else:
        raise InputError(f"{folder}: the reduced 3DDFA model needs its triangles (tri.mat from 3DDFA's visualize/)")
    if w_shp.shape[0] != mean.shape[0] or w_exp.shape[0] != mean.shape[0]:
        raise InputError(f"{folder}: basis rows {w_shp.shape[0]}/{w_exp.shape[0]} do not match the mean ({mean.shape[0]})")
    return FaceModel(
        name=f"3DDFA reduced BFM ({mean.shape[0] // 3} vertices, {w_shp.shape[1]} shape + {w_exp.shape[1]} expression)",
        mean=mean,
        shape_basis=w_shp,
        exp_basis=w_exp,
        triangles=triangles,
        landmark_ids=landmark_ids,
        units="um",
        sha256=_hash_files(files),
        sources=[f.name for f in files],
    )


def _struct_fields(obj: np.ndarray | dict) -> dict:
    """A MATLAB struct as :func:`~facerecon.data.readers.load_mat` gives it (v5: a (1, 1) record
    array; v7.3: a dict) -> {field: array}."""
    if isinstance(obj, dict):
        return obj
    rec = obj[0, 0] if obj.ndim == 2 else obj
    return {name: rec[name] for name in rec.dtype.names or ()}


def _load_mat_file(path: Path) -> FaceModel:
    """face3d's ``BFM.mat``: a struct ``model`` with shapeMU/PC, expMU/PC, tri, kpt_ind (1-based)."""
    data = load_mat(path)
    if "model" not in data:
        if "shapeMU" in data or "mu_shape" in data:
            return _load_bfm_folder(path.parent, shape_file=path)
        raise InputError(f"{path}: no 'model' struct (face3d BFM.mat) and no shapeMU/mu_shape arrays")
    m = _struct_fields(data["model"])
    need = ["shapeMU", "shapePC", "expMU", "expPC", "tri"]
    missing = [k for k in need if k not in m]
    if missing:
        raise InputError(f"{path}: the 'model' struct lacks {', '.join(missing)}")
    mean = m["shapeMU"].reshape(-1).astype(np.float64) + m["expMU"].reshape(-1)
    landmark_ids: np.ndarray | None
    if "kpt_ind" in m:
        landmark_ids = np.asarray(m["kpt_ind"]).reshape(-1).astype(np.int64) - 1
    else:
        landmark_ids = _landmarks_beside(path.parent)
        if landmark_ids is None:
            raise InputError(f"{path}: no kpt_ind in the model and no landmark_ids.txt beside it")
    return FaceModel(
        name=f"BFM 2009 + 3DDFA expression, face3d BFM.mat ({mean.shape[0] // 3} vertices)",
        mean=mean,
        shape_basis=m["shapePC"],
        exp_basis=m["expPC"],
        triangles=_tri_rows(m["tri"], one_based=True, where=path),
        landmark_ids=landmark_ids,
        units="um",
        sha256=_hash_files([path]),
        sources=[path.name],
    )


def _find(folder: Path, *names: str) -> Path | None:
    for name in names:
        for cand in (folder / name, folder / name.lower()):
            if cand.is_file():
                return cand
    return None


def _load_bfm_folder(folder: Path, shape_file: Path) -> FaceModel:
    """BFM 2009 (or 3DDFA's Model_Shape.mat) + 3DDFA's Model_Expression.mat (+ model_info.mat)."""
    files = [shape_file]
    s = load_mat(shape_file)
    if "shapeMU" in s:  # 01_MorphableModel.mat
        mu, pc = s["shapeMU"].reshape(-1), s["shapePC"]
        tri = _tri_rows(s["tl"], one_based=True, where=shape_file) if "tl" in s else None
        landmark_ids = None
    elif "mu_shape" in s:  # 3DDFA Model_Shape.mat (already cut to the expression model's vertices)
        mu, pc = s["mu_shape"].reshape(-1), s["w"]
        tri = _tri_rows(s["tri"], one_based=True, where=shape_file) if "tri" in s else None
        landmark_ids = np.asarray(s["keypoints"]).reshape(-1).astype(np.int64) - 1 if "keypoints" in s else None
    else:
        raise InputError(f"{shape_file}: expected shapeMU/shapePC (BFM 2009) or mu_shape/w (3DDFA Model_Shape.mat)")
    exp_file = _find(folder, "Model_Expression.mat")
    if exp_file is None:
        raise InputError(f"{folder}: Model_Expression.mat (3DDFA's 29-component expression model) not found beside {shape_file.name}")
    files.append(exp_file)
    e = load_mat(exp_file)
    if "mu_exp" not in e or "w_exp" not in e:
        raise InputError(f"{exp_file}: expected the arrays mu_exp and w_exp")
    mu_exp, w_exp = e["mu_exp"].reshape(-1), e["w_exp"]
    if mu.shape[0] != mu_exp.shape[0]:
        mu, pc, tri = _trim_to_expression_model(folder, shape_file, mu, pc, tri, mu_exp.shape[0] // 3, files)
    if mu.shape[0] != mu_exp.shape[0]:
        raise InputError(f"{folder}: shape ({mu.shape[0] // 3}) and expression ({mu_exp.shape[0] // 3}) vertex counts differ")
    tri_file = _find(folder, "tri.mat")
    if tri is None and tri_file is not None:
        files.append(tri_file)
        tri = _tri_rows(_mat_field(tri_file, "tri"), one_based=True, where=tri_file)
    if tri is None:
        raise InputError(f"{folder}: no triangles found (tl, tri or a tri.mat beside the model)")
    if landmark_ids is None:
        landmark_ids = _landmarks_beside(folder)
    if landmark_ids is None:
        raise InputError(
            f"{folder}: the 68 landmark vertex ids were not found: put keypoints_sim.npy (3DDFA) or "
            f"landmark_ids.txt (68 zero-based ids) beside the model"
        )
    return FaceModel(
        name=f"BFM 2009 + 3DDFA expression ({mu.shape[0] // 3} vertices)",
        mean=mu.astype(np.float64) + mu_exp,
        shape_basis=pc,
        exp_basis=w_exp,
        triangles=tri,
        landmark_ids=landmark_ids,
        units="um",
        sha256=_hash_files(files),
        sources=[f.name for f in files],
    )


def _trim_to_expression_model(
    folder: Path, shape_file: Path, mu: np.ndarray, pc: np.ndarray, tri: np.ndarray | None, n_exp: int, files: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The full BFM shape model (mean, basis, triangles) cut to the vertices of 3DDFA's
    expression model by ``model_info.mat``'s ``trimIndex``; the info file is appended to ``files``."""
    info_file = _find(folder, "model_info.mat", "Model_Info.mat", "BFM_info.mat")
    if info_file is None:
        raise InputError(
            f"{folder}: {shape_file.name} has {mu.shape[0] // 3} vertices but the expression model "
            f"{n_exp}; put 3DDFA's model_info.mat (trimIndex) beside them"
        )
    files.append(info_file)
    info = load_mat(info_file)
    if "trimIndex" not in info:
        raise InputError(f"{info_file}: expected the array trimIndex (1-based vertex ids)")
    keep = np.asarray(info["trimIndex"]).reshape(-1).astype(np.int64) - 1
    n_full = mu.shape[0] // 3
    if keep.min() < 0 or keep.max() >= n_full:
        raise InputError(f"{info_file}: trimIndex out of range for {n_full} vertices")
    rows = (3 * keep[:, None] + np.arange(3)).reshape(-1)
    if tri is not None:
        tri = _reindex_triangles(tri, keep, n_full)
    if "tri" in info:  # the trimmed triangulation, when the info file carries it
        tri = _tri_rows(info["tri"], one_based=True, where=info_file)
    return mu[rows], pc[rows], tri


def _reindex_triangles(tri: np.ndarray, keep: np.ndarray, n_full: int) -> np.ndarray:
    """Triangles of the full mesh -> those whose three vertices survive the cut, renumbered."""
    new_id = np.full(n_full, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.shape[0])
    mapped = new_id[tri]
    return mapped[(mapped >= 0).all(axis=1)]


# ----------------------------------------------------------------------------------------------
# pose and projection (the AFLW2000-3D / 300W-LP convention)


def project_to_image(vertices: np.ndarray, pose: np.ndarray, image_height: int) -> np.ndarray:
    """Model vertices -> image px (docs/conventions.md), scaled orthographic.

    ``P = s V R^T + t`` gives the 1-based MATLAB frame with y up (``y_1 = H + 1 - P_y``); here
    ``x = P_x - 0.5``, ``y = H + 0.5 - P_y`` (0-based continuous, y down) and ``z = -P_z`` (depth
    away from the camera, in pixels, same offset as the ``.mat`` files' ``pt3d_68`` depth negated).

    Args:
        vertices: ``(N, 3)`` model units.
        pose: ``(7,)`` ``Pose_Para`` = [pitch, yaw, roll (radians), tx, ty, tz, s].
        image_height: ``H`` in pixels.

    Returns:
        ``(N, 3)`` float32 image px.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    rot = rotation_from_euler(pose[0], pose[1], pose[2])
    p = pose[6] * (np.asarray(vertices, dtype=np.float64) @ rot.T) + pose[3:6]
    out = np.empty_like(p)
    out[:, 0] = p[:, 0] - 0.5
    out[:, 1] = image_height + 0.5 - p[:, 1]
    out[:, 2] = -p[:, 2]
    return out.astype(np.float32)


def pose_degrees(pose: np.ndarray) -> np.ndarray:
    """``Pose_Para`` -> ``(3,)`` float32 [yaw, pitch, roll] in degrees (the NME yaw bins use |yaw|)."""
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    return np.degrees([pose[1], pose[0], pose[2]]).astype(np.float32)
