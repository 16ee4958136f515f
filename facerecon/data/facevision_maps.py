"""The depth and correspondence (PNCC) maps of a face crop: the FaceVision-GAN family's training
targets, made once per cache into a side file, and their decoding (depth, landmarks).

Both maps cover the whole crop (crop units [-1, 1], docs/conventions.md) at ``size`` x ``size``
px (128 by default); map px ``(i, j)`` is sampled at its centre, crop units
``x = 2 (j + 0.5) / size - 1`` (likewise y from the row ``i``): exactly the pixels of the 224 px
crop resized to ``size`` (``align_corners=False``).

* **depth map** ``(size, size)``: the nearest surface's depth as a code in (0, 1]:
  ``code = (DEPTH_FAR - z) / (DEPTH_FAR - DEPTH_NEAR)`` for ``z`` in crop units (z away from the
  camera, 0 at the landmarks' mean depth), i.e. ``(1 - z) / 2``: larger is nearer. Codes are
  clipped to ``[MIN_CODE, 1]`` so that every face pixel stays apart from the background, which is
  exactly 0. A pixel is face where its code exceeds :data:`FOREGROUND_CODE`.
* **PNCC map** ``(size, size, 3)``: at every face pixel, the position of the surface point seen
  there on the mean face, each axis scaled onto [0, 1] over the mean face
  (:func:`facerecon.render.pncc_codes` on the face model's mean in crop axes: x right, y down, z
  away); 0 where no face.

The triangle mesh in the crop frame is the cache's own ground truth: for the 3DMM datasets
(``points_in_model_order``) each sample's points are the face model's vertices in its order, in
crop units, and the cache stores the model's triangles (``face_model/triangles``). So a sample's
mesh is ``(points[a:b], face_model/triangles)``: the same surface ``eval`` measures against, with
no face-model file, raw dataset or re-fit needed at training time. Scan caches (no triangles) have
no maps.

:func:`make_maps_file` renders every row of a cache once into an HDF5 side file beside it
(``NAME.maps.h5``, layout in docs/facevision.md), resumably: rows go to ``NAME.maps.h5.partial``
(SWMR, a progress marker after every block), which is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.errors import FaceReconError, InputError

#: Crop-unit depths that map to codes 1 (nearest) and 0.
DEPTH_NEAR, DEPTH_FAR = -1.0, 1.0
#: Face pixels' smallest code (z = 0.9 crop units); the background is 0.
MIN_CODE = 0.05
#: Decoding threshold between background (0) and face (>= MIN_CODE).
FOREGROUND_CODE = MIN_CODE / 2
#: Map side in px the FaceVision-GAN network works at.
MAP_SIZE = 128
#: Version of the side file's layout.
MAPS_FORMAT_VERSION = 1
_BLOCK = 32


def depth_to_code(z: np.ndarray) -> np.ndarray:
    """Crop-unit depth ``z`` -> depth code in ``[MIN_CODE, 1]`` (larger is nearer), float32."""
    code = (DEPTH_FAR - np.asarray(z, dtype=np.float64)) / (DEPTH_FAR - DEPTH_NEAR)
    return np.clip(code, MIN_CODE, 1.0).astype(np.float32)


def code_to_depth(code: np.ndarray) -> np.ndarray:
    """Depth code -> crop-unit depth ``z`` (the inverse of :func:`depth_to_code` inside its range), float64."""
    return DEPTH_FAR - np.asarray(code, dtype=np.float64) * (DEPTH_FAR - DEPTH_NEAR)


def map_px_to_crop(uv: np.ndarray, size: int = MAP_SIZE) -> np.ndarray:
    """Map px ``(..., 2)`` (continuous, 0 at the map's left/top edge) -> crop units ``x = 2 u / size - 1``."""
    return 2.0 * np.asarray(uv, dtype=np.float64) / size - 1.0


def reference_codes(mean_model: np.ndarray) -> np.ndarray:
    """PNCC codes ``(N, 3)`` of every face-model vertex, from the model's mean face.

    Args:
        mean_model: ``(N, 3)`` the face model's mean in model units (y up, z toward the camera),
            as the cache's ``face_model/mean``.
    """
    from facerecon.render import pncc_codes

    # model axes -> crop axes: y and z flipped (frames' F = diag(1, -1, -1), as
    # model.face_prior.model_mean_crop_axes; not imported: it would load torch into the map maker)
    return pncc_codes(np.asarray(mean_model, dtype=np.float64).reshape(-1, 3) * np.array([1.0, -1.0, -1.0]))


def render_maps(points: np.ndarray, triangles: np.ndarray, codes: np.ndarray, size: int = MAP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The depth and PNCC maps of one face mesh in the crop frame.

    Args:
        points: ``(N, 3)`` vertices, crop units.
        triangles: ``(T, 3)`` int vertex ids.
        codes: ``(N, 3)`` each vertex's PNCC code (:func:`reference_codes`).
        size: map side, px.

    Returns:
        ``depth`` ``(size, size)`` float32 codes (0: no face) and ``pncc`` ``(size, size, 3)``
        float32 in [0, 1] (0: no face).
    """
    from facerecon.render import render

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or np.shape(codes) != pts.shape:
        raise InputError(f"render_maps expects (N, 3) points and codes, got {pts.shape} and {np.shape(codes)}")
    verts = np.concatenate([(pts[:, :2] + 1.0) * (size / 2.0), pts[:, 2:]], axis=1)  # map px, depth
    result = render(verts, triangles, (size, size), {"pncc": codes})
    depth = np.where(result.mask, depth_to_code(np.where(result.mask, result.depth, 0.0)), 0.0).astype(np.float32)
    pncc = np.where(result.mask[..., None], result.attributes["pncc"], 0.0).astype(np.float32)
    return depth, pncc


# ---------------------------------------------------------------------------------------------- decoding
def landmarks_from_pncc(pncc: np.ndarray, mask: np.ndarray, landmark_codes: np.ndarray, subpixel: bool = True) -> np.ndarray:
    """Each landmark at the map point whose PNCC code is nearest the landmark's code on the mean face.

    The nearest face pixel is found by brute force; with ``subpixel`` the code is then modelled as
    linear over that pixel's 3 x 3 face neighbourhood (least squares) and the point moved, by at
    most one pixel per axis, to where the linear model is nearest the landmark's code.

    Args:
        pncc: ``(S, S, 3)`` codes; mask: ``(S, S)`` bool face pixels.
        landmark_codes: ``(L, 3)`` the landmarks' codes (:func:`reference_codes` at their ids).
        subpixel: refine to sub-pixel positions.

    Returns:
        ``(L, 2)`` float64 map px ``(u, v)`` (pixel centres at +0.5).
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InputError("the correspondence map has no face pixel: no landmarks can be found")
    codes = pncc[rows, cols].astype(np.float64)
    target = np.asarray(landmark_codes, dtype=np.float64)
    # by broadcasting, one code axis at a time: a (L, 3) x (3, P) BLAS product is ~10x slower here
    d2 = sum((codes[None, :, k] - target[:, k, None]) ** 2 for k in range(3))
    best = np.argmin(d2, axis=1)
    r, c = rows[best], cols[best]
    out = np.stack([c + 0.5, r + 0.5], axis=1)
    if subpixel:
        out += _subpixel_steps(pncc.astype(np.float64), mask, r, c, target)
    return out


def landmarks_by_fit(pncc: np.ndarray, mask: np.ndarray, landmark_codes: np.ndarray, keep: float = 0.8, rounds: int = 3) -> np.ndarray:
    """The landmarks where an affine map from codes to map points, fitted to every face pixel,
    carries the landmarks' codes.

    Each face pixel says "the mean face's point with this code is here"; the least-squares
    affine map ``uv = M (code, 1)`` over all of them is a pose (with scale and shear) of the mean
    face, and it places the landmarks even where the map's codes near them are off or hidden
    (the far side of a turned face). After each fit the pixels whose residual is above the
    ``keep`` quantile are left out of the next (``rounds`` fits in all): the silhouette and the
    mistaken codes of a network's map do not pull the fit.

    Args:
        pncc: ``(S, S, 3)`` codes; mask: ``(S, S)`` bool face pixels; landmark_codes: ``(L, 3)``.

    Returns:
        ``(L, 2)`` float64 map px ``(u, v)`` (pixel centres at +0.5).
    """
    rows, cols = np.nonzero(mask)
    if rows.size < 4:
        raise InputError("the correspondence map has fewer than 4 face pixels: no landmarks can be fitted")
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    fitted = trimmed_affine_fit(pncc[rows, cols], uv, keep, rounds)
    return fitted(np.asarray(landmark_codes, dtype=np.float64))


def trimmed_affine_fit(codes: np.ndarray, targets: np.ndarray, keep: float = 0.8, rounds: int = 3) -> Callable[[np.ndarray], np.ndarray]:
    """The least-squares affine map ``targets ~ M (codes, 1)``, refitted ``rounds`` times in all,
    each time without the pairs whose residual is above the ``keep`` quantile of the last fit.

    Args:
        codes: ``(N, 3)`` correspondence codes; targets: ``(N, K)`` where each lies.

    Returns:
        The fitted map: ``(L, 3)`` codes -> ``(L, K)``.
    """
    design = np.concatenate([np.asarray(codes, dtype=np.float64), np.ones((len(codes), 1))], axis=1)
    targets = np.asarray(targets, dtype=np.float64)
    used = np.ones(len(design), dtype=bool)
    for _ in range(max(int(rounds), 1)):
        m = np.linalg.lstsq(design[used], targets[used], rcond=None)[0]  # (4, K)
        residual = np.linalg.norm(design @ m - targets, axis=1)
        used = residual <= np.quantile(residual, keep)
    return lambda c: np.concatenate([np.asarray(c, dtype=np.float64), np.ones((len(c), 1))], axis=1) @ m


def pose_face_model(depth: np.ndarray, pncc: np.ndarray, face_codes: np.ndarray, keep: float = 0.8, rounds: int = 3) -> np.ndarray:
    """The face model's mean face posed onto a depth and correspondence map, crop units.

    Every face pixel says "the mean face's point with this code lies here": x, y from the pixel's
    centre, z from its depth. The trimmed least-squares 3-D affine map from codes to those points
    (:func:`trimmed_affine_fit`, as :func:`landmarks_by_fit` in 2-D) poses, scales and shears the
    mean face onto the map, the far side the map does not show included.

    Args:
        depth: ``(S, S)`` depth codes; pncc: ``(S, S, 3)``; face_codes: ``(V, 3)`` the face model's
            vertex codes (:func:`reference_codes`).

    Returns:
        ``(V, 3)`` float64 crop units.

    Raises:
        InputError: fewer than 4 face pixels.
    """
    rows, cols = np.nonzero(np.asarray(depth) > FOREGROUND_CODE)
    if rows.size < 4:
        raise InputError("the depth map has fewer than 4 face pixels: no face model can be posed on it")
    xy = map_px_to_crop(np.stack([cols + 0.5, rows + 0.5], axis=1), depth.shape[0])
    target = np.concatenate([xy, code_to_depth(depth[rows, cols])[:, None]], axis=1)
    return trimmed_affine_fit(pncc[rows, cols], target, keep, rounds)(face_codes)


def hidden_triangles(posed: np.ndarray, depth: np.ndarray, triangles: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """The triangles of a posed face model that a depth map does not show: those whose three
    vertices each fall outside the map's face pixels or lie more than ``margin`` crop units behind
    the surface the map holds there (the far cheek and ear of a turned face, under the chin).

    Args:
        posed: ``(V, 3)`` crop units (:func:`pose_face_model`); depth: ``(S, S)`` codes;
            triangles: ``(F, 3)`` the face model's.

    Returns:
        ``(H, 3)`` int64, a subset of ``triangles`` in its order.
    """
    size = depth.shape[0]
    u = np.clip(np.floor((posed[:, 0] + 1.0) * size / 2.0).astype(np.int64), 0, size - 1)
    v = np.clip(np.floor((posed[:, 1] + 1.0) * size / 2.0).astype(np.int64), 0, size - 1)
    seen = depth[v, u]
    face = seen > FOREGROUND_CODE
    inside = (np.abs(posed[:, 0]) <= 1.0) & (np.abs(posed[:, 1]) <= 1.0)
    surface = np.where(face, code_to_depth(seen), np.inf)
    hidden = ~(face & inside) | (posed[:, 2] > surface + margin)
    triangles = np.asarray(triangles, dtype=np.int64)
    return triangles[hidden[triangles].all(axis=1)]


def _subpixel_steps(pncc: np.ndarray, mask: np.ndarray, r: np.ndarray, c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(L, 2)`` steps ``(du, dv)`` in [-1, 1] from pixels ``(r, c)`` by a linear code model of their
    3 x 3 face neighbourhood (weighted least squares, all landmarks at once; no step where the
    neighbourhood does not determine the model)."""
    h, w = mask.shape
    dv, du = (a.ravel() for a in np.mgrid[-1:2, -1:2])
    design = np.stack([np.ones(9), du, dv], axis=1)  # (9, 3): c0, J_u, J_v
    rr, cc = r[:, None] + dv[None], c[:, None] + du[None]  # (L, 9)
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    rr, cc = np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)
    wts = (inside & mask[rr, cc]).astype(np.float64)
    normal = np.einsum("ki,lk,kj->lij", design, wts, design)  # (L, 3, 3)
    rhs = np.einsum("ki,lk,lkc->lic", design, wts, pncc[rr, cc])  # (L, 3, 3 codes)
    ok = np.abs(np.linalg.det(normal)) > 1e-9
    coef = np.zeros_like(rhs)
    coef[ok] = np.linalg.solve(normal[ok], rhs[ok])
    jac = coef[:, 1:, :].transpose(0, 2, 1)  # (L, 3 codes, 2)
    jtj = jac.transpose(0, 2, 1) @ jac
    ok &= np.abs(np.linalg.det(jtj)) > 1e-12
    steps = np.zeros((r.size, 2))
    if ok.any():
        jtr = (jac.transpose(0, 2, 1) @ (target - coef[:, 0, :])[..., None])[..., 0]
        steps[ok] = np.linalg.solve(jtj[ok], jtr[ok][..., None])[..., 0]
    return np.clip(steps, -1.0, 1.0)


def sample_depth(depth: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Crop-unit depth at map points: bilinear over the surrounding face pixels only (weights renormalised).

    Args:
        depth: ``(S, S)`` depth codes; uv: ``(L, 2)`` map px.

    Returns:
        ``(L,)`` float64 crop units; a point with no face pixel among its four neighbours takes the nearest face pixel's depth.
    """
    h, w = depth.shape
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    acc, wsum = np.zeros(len(uv)), np.zeros(len(uv))
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        rr, cc = np.clip(y0 + dy, 0, h - 1), np.clip(x0 + dx, 0, w - 1)
        wt = (1 - np.abs(x - (x0 + dx))) * (1 - np.abs(y - (y0 + dy)))
        wt = np.where(depth[rr, cc] > FOREGROUND_CODE, np.maximum(wt, 0.0), 0.0)
        acc += wt * depth[rr, cc]
        wsum += wt
    code = np.where(wsum > 0, acc / np.where(wsum > 0, wsum, 1.0), 0.0)
    if (wsum <= 0).any():
        rows, cols = np.nonzero(depth > FOREGROUND_CODE)
        for k in np.flatnonzero(wsum <= 0):
            j = np.argmin((rows + 0.5 - uv[k, 1]) ** 2 + (cols + 0.5 - uv[k, 0]) ** 2)
            code[k] = depth[rows[j], cols[j]]
    return code_to_depth(code)


def landmarks_from_maps(depth: np.ndarray, pncc: np.ndarray, landmark_codes: np.ndarray, subpixel: bool = True,
                        method: str = "nearest") -> np.ndarray:
    """The 68 landmarks ``(L, 3)`` in crop units from a depth map and a PNCC map (x, y from the PNCC
    map, z from the depth map there); ``facerecon.frames.head_pose`` turns them into a head pose.

    Args:
        depth: ``(S, S)`` depth codes; pncc: ``(S, S, 3)``; landmark_codes: ``(L, 3)``.
        method: "nearest" (:func:`landmarks_from_pncc`, with ``subpixel``) or "fit"
            (:func:`landmarks_by_fit`).
    """
    depth = np.asarray(depth, dtype=np.float64)
    mask = depth > FOREGROUND_CODE
    if method == "fit":
        uv = landmarks_by_fit(np.asarray(pncc), mask, landmark_codes)
    elif method == "nearest":
        uv = landmarks_from_pncc(np.asarray(pncc), mask, landmark_codes, subpixel)
    else:
        raise InputError(f"unknown landmark method {method!r}: 'fit' or 'nearest'")
    xy = map_px_to_crop(uv, depth.shape[0])
    return np.concatenate([xy, sample_depth(depth, uv)[:, None]], axis=1)


# ---------------------------------------------------------------------------------------------- the side file
def maps_path(cache: str | os.PathLike[str]) -> Path:
    """Where the maps of ``cache`` live by default: ``NAME.maps.h5`` beside ``NAME.h5``."""
    cache = Path(cache)
    return cache.with_name(cache.stem + ".maps.h5")


def face_model_of(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """An open cache's face model: its triangles ``(F, 3)`` int64 and every vertex's code ``(V, 3)``
    (:func:`reference_codes`).

    Raises:
        InputError: a cache whose points are not a face model's vertices (a scan cache).
    """
    if not bool(f.attrs.get("points_in_model_order", False)) or "face_model" not in f:
        raise InputError(
            f"{f.filename}: depth and correspondence maps need a cache whose points are a face model's vertices "
            "(AFLW2000-3D, 300W-LP prepared with --face-model); scan caches have no triangles"
        )
    return f["face_model/triangles"][:].astype(np.int64), reference_codes(f["face_model/mean"][:])


def _cache_inputs(f: Any, size: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """The side file's identity (checked on resume and when read), the offsets, triangles and codes."""
    triangles, codes = face_model_of(f)
    offsets = f["offsets"][:].astype(np.int64)
    digest = hashlib.sha256(offsets.tobytes())
    digest.update(f["boxes"][:].tobytes())
    digest.update(triangles.tobytes())
    digest.update("\n".join(v.decode() if isinstance(v, bytes) else str(v) for v in f["ids"][:]).encode())
    identity = {"cache_sha256": digest.hexdigest(), "rows": int(offsets.size - 1), "size": int(size), "version": MAPS_FORMAT_VERSION}
    return identity, offsets, triangles, codes


def _create_partial(path: Path, identity: dict, landmark_codes: np.ndarray) -> Any:
    import h5py

    n, s = identity["rows"], identity["size"]
    f = h5py.File(path, "w", libver="latest")
    gz = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    f.create_dataset("depth", shape=(n, s, s), dtype="f2", chunks=(1, s, s), **gz)
    f.create_dataset("pncc", shape=(n, s, s, 3), dtype="f2", chunks=(1, s, s, 3), **gz)
    f.create_dataset("landmark_codes", data=landmark_codes.astype(np.float32))
    f.create_dataset("_progress", data=np.zeros(1, np.int64))
    f.attrs["_identity"] = json.dumps(identity, sort_keys=True)
    f.swmr_mode = True
    return f


def _open_partial(path: Path, identity: dict, landmark_codes: np.ndarray, block: int) -> tuple[Any, int]:
    """Resume ``path`` (the rows up to its marker) or start it; returns (file, rows done).

    The rows the marker covers are copied into a fresh partial file: a writer that was killed
    leaves its SWMR flag set, and such a file can only be opened for reading.
    """
    import h5py

    done = 0
    fresh = path.with_name(path.name + ".resume")
    if path.exists():
        try:
            old = h5py.File(path, "r", libver="latest", swmr=True)
        except OSError:
            old = None  # unreadable: start over (every row is made again from the cache)
        if old is not None:
            with old:
                if json.loads(old.attrs.get("_identity", "{}")) == identity:
                    done = int(old["_progress"][0])
                if done:
                    with _create_partial(fresh, identity, landmark_codes) as dst:
                        for a in range(0, done, block):
                            b = min(done, a + block)
                            dst["depth"][a:b] = old["depth"][a:b]
                            dst["pncc"][a:b] = old["pncc"][a:b]
                        dst.flush()
                        dst["_progress"][0] = done
            if done:
                os.replace(fresh, path)
                f = h5py.File(path, "r+", libver="latest")
                f.swmr_mode = True
                return f, done
    return _create_partial(path, identity, landmark_codes), 0


def make_maps_file(
    cache: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    size: int = MAP_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    block: int = _BLOCK,
) -> Path:
    """Render the depth and PNCC maps of every row of ``cache`` into a side file, once.

    An existing complete file made from the same cache at the same size is kept as it is; an
    unfinished one (``OUT.partial``) is resumed from its last progress marker.

    Args:
        cache: a ``prepare`` cache of a 3DMM dataset.
        out: the side file (default :func:`maps_path`).
        size: map side, px.
        on_progress: called as ``on_progress(rows done, rows)`` after every block of rows.
        block: rows rendered between progress markers.

    Returns:
        The side file's path.
    """
    import h5py

    out = maps_path(cache) if out is None else Path(out)
    with h5py.File(cache, "r") as src:
        identity, offsets, triangles, codes = _cache_inputs(src, size)
        lm_ids = src["face_model/landmark_ids"][:].astype(np.int64)
        n = identity["rows"]
        if out.exists() and _identity_of(out) == identity:
            if on_progress is not None:
                on_progress(n, n)
            return out
        partial = out.with_name(out.name + ".partial")
        step = max(1, int(block))
        f, done = _open_partial(partial, identity, codes[lm_ids], step)
        try:
            for a in range(done, n, step):
                b = min(n, a + step)
                _ensure_space(partial, (b - a) * size * size * 4 * 2, a)
                made = [render_maps(src["points"][offsets[i] : offsets[i + 1]], triangles, codes, size) for i in range(a, b)]
                f["depth"][a:b] = np.stack([d for d, _ in made]).astype(np.float16)
                f["pncc"][a:b] = np.stack([p for _, p in made]).astype(np.float16)
                f.flush()
                f["_progress"][0] = b  # everything before the marker is on disk
                f.flush()
                if on_progress is not None:
                    on_progress(b, n)
        finally:
            f.close()
    _finish(partial, out, identity)
    return out


def _ensure_space(path: Path, nbytes: int, done: int) -> None:
    """Refuse the next block unless the disk has room for it uncompressed (HDF5 cannot recover
    from a failed write; the partial file is closed cleanly instead and the rerun resumes)."""
    import shutil

    free = shutil.disk_usage(path.parent).free
    if free < nbytes + (1 << 20):
        raise FaceReconError(
            f"{path}: no space left for the next maps ({free / 1e6:.1f} MB free); {done} rows are kept: "
            "free some space and run again to resume"
        )


def _finish(partial: Path, out: Path, identity: dict) -> None:
    """Mark the complete partial file as finished and rename it onto ``out``."""
    import h5py

    with h5py.File(partial, "r+", libver="latest") as f:
        del f["_progress"]
        del f.attrs["_identity"]
        for key, value in identity.items():
            f.attrs[key] = value
        f.attrs["depth_range"] = [DEPTH_NEAR, DEPTH_FAR]
        f.attrs["min_code"] = MIN_CODE
    with open(partial, "rb+") as fh:  # on the disk before it takes the final name
        os.fsync(fh.fileno())
    os.replace(partial, out)


def _identity_of(path: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: (f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k]) for k in ("cache_sha256", "rows", "size", "version")}
    except (OSError, KeyError):
        return None


def stored_maps_size(path: str | os.PathLike[str]) -> int | None:
    """The map size of a finished side file, or None where ``path`` is not one (missing, unfinished, foreign)."""
    identity = _identity_of(Path(path))
    return None if identity is None else int(identity["size"])


def read_maps(path: str | os.PathLike[str], rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maps of cache ``rows`` from a side file.

    Returns:
        ``depth`` ``(B, S, S)``, ``pncc`` ``(B, S, S, 3)`` float32, and the ``(68, 3)`` landmark codes.
    """
    import h5py

    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("version", -1)) != MAPS_FORMAT_VERSION:
                raise InputError(f"{path}: not a finished maps file of version {MAPS_FORMAT_VERSION}; make it again")
            depth = np.stack([f["depth"][i] for i in idx]).astype(np.float32) if idx.size else np.zeros((0,) + f["depth"].shape[1:], np.float32)
            pncc = np.stack([f["pncc"][i] for i in idx]).astype(np.float32) if idx.size else np.zeros((0,) + f["pncc"].shape[1:], np.float32)
            return depth, pncc, f["landmark_codes"][:]
    except OSError as exc:
        raise FaceReconError(f"{path}: cannot read the maps file ({exc})") from None


def warp_maps(tf: Any, depth: np.ndarray, pncc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A crop's maps moved by the augmentation's transform (``facerecon.data.augment.Transform2D``,
    crop units: a flip, then rotation, scale and shift in the image plane), as ``warp_image``
    moves the crop itself.

    Nearest-pixel resampling (a code between a face pixel and the background, or between two
    surfaces, would be a point on neither); depth codes follow the transform's ``z' = scale z``;
    on a mirrored face every point shows its mirror image on the mean face, so the PNCC x code
    becomes ``1 - x`` (the codes span the symmetric mean face's x range).

    Args:
        tf: the transform; depth: ``(S, S)`` codes; pncc: ``(S, S, 3)`` codes.

    Returns:
        The moved ``depth`` ``(S, S)`` and ``pncc`` ``(S, S, 3)``, float32, 0 where no face.
    """
    import cv2

    from facerecon.data.augment import warp_matrix

    size = depth.shape[0]
    mat = warp_matrix(tf, size)
    d, p = (
        np.asarray(cv2.warpAffine(np.ascontiguousarray(m, dtype=np.float32), mat, (size, size), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        for m in (depth, pncc)
    )
    face = d > FOREGROUND_CODE
    d = np.where(face, depth_to_code(tf.scale * code_to_depth(d)), 0.0).astype(np.float32)
    if tf.flip:
        p[..., 0] = 1.0 - p[..., 0]
    return d, np.where(face[..., None], p, 0.0).astype(np.float32)


class MapsDataset:
    """The crops of one cache split with their target maps, for a ``torch.utils.data.DataLoader``
    (map-style; numpy items, collated into tensors by the loader's default collate).

    Args:
        cache: the ``prepare`` cache; maps: its side file (default :func:`maps_path`), made by
            :func:`make_maps_file` from this very cache (checked).
        split: as ``facerecon.data.dataset.split_codes`` reads it (``"train"``, ``"train+val"``, ...).
        augment: a ``facerecon.config.AugmentConfig`` (``[train.augment]``) to augment every item
            as the other families' training items are (one seeded transform per row and epoch,
            applied to the crop with the photometric changes, and to its maps by
            :func:`warp_maps`, and to its landmarks), or None.
        seed: base seed of the augmentation draws (with the epoch, :meth:`set_epoch`, and the row).
        yaw_repeat: times each row is served per epoch by its |yaw| bin (``train.yaw_repeat``,
            ``facerecon.data.dataset.yaw_repeat_rows``; a repeat draws its own augmentation), or None.

    Each item: ``image`` ``(224, 224, 3)`` uint8 (the network resizes it,
    ``facerecon.model.facevision.network_input``), ``depth`` ``(1, S, S)`` and ``pncc`` ``(3, S, S)``
    float32, ``landmarks`` ``(68, 3)`` float32 crop units, ``index`` (the cache row).
    """

    #: The loader's default collate stacks the items (``facerecon train`` reads this).
    collate_fn = None

    def __init__(
        self, cache: str | os.PathLike[str], maps: str | os.PathLike[str] | None = None, split: str = "train",
        augment: Any = None, seed: int = 0, yaw_repeat: Sequence[float] | None = None,
    ) -> None:
        import h5py

        from facerecon.data.dataset import split_rows, yaw_repeat_rows

        self.cache, self.maps = Path(cache), maps_path(cache) if maps is None else Path(maps)
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        stored = _identity_of(self.maps)
        try:
            with h5py.File(self.cache, "r") as f:
                identity = _cache_inputs(f, int(stored["size"]) if stored else MAP_SIZE)[0]
                self.rows = split_rows(f["split"][:], split)
                yaw = np.abs(f["pose"][:, 0]) if yaw_repeat is not None else None
        except OSError as exc:
            raise InputError(f"{self.cache}: cannot open cache ({exc})") from None
        if stored != identity:
            raise InputError(f"{self.maps}: not the finished maps of {self.cache}; make them with make_maps_file")
        self.copies = np.zeros_like(self.rows)  # 0: the row itself; k > 0: its k-th repeat
        if yaw is not None and yaw_repeat is not None:
            self.rows, self.copies = yaw_repeat_rows(self.rows, yaw[self.rows], yaw_repeat, self.seed)
        self._files: tuple[Any, Any] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of this epoch (loader workers made per epoch pick it up)."""
        self.epoch = int(epoch)

    def _h5(self) -> tuple[Any, Any]:
        if self._files is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            import h5py

            self._files = (h5py.File(self.cache, "r"), h5py.File(self.maps, "r"))
            self._pid = os.getpid()
        return self._files

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = None, None
        return state

    def __getitem__(self, item: int) -> dict[str, Any]:
        row = int(self.rows[item])
        cache, maps = self._h5()
        image, landmarks = cache["images"][row], cache["landmarks"][row].astype(np.float32)
        depth, pncc = maps["depth"][row].astype(np.float32), maps["pncc"][row].astype(np.float32)
        if self.augment is not None:
            image, depth, pncc, landmarks = self._augmented([row, int(self.copies[item])], image, depth, pncc, landmarks)
        return {
            "image": image,
            "depth": depth[None],
            "pncc": np.ascontiguousarray(pncc.transpose(2, 0, 1)),
            "landmarks": np.ascontiguousarray(landmarks, dtype=np.float32),
            "index": row,
        }

    def _augmented(
        self, key: list[int], image: np.ndarray, depth: np.ndarray, pncc: np.ndarray, landmarks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One row's arrays moved by the transform drawn for (seed, epoch, row, repeat), the crop's colours changed."""
        from facerecon.data.augment import apply_geometry, draw_transform, flip_landmarks, photometric, warp_image

        rng = np.random.default_rng([self.seed, self.epoch, *key, 1])
        tf = draw_transform(rng, self.augment)
        image = photometric(warp_image(tf, image), rng, self.augment)
        depth, pncc = warp_maps(tf, depth, pncc)
        landmarks = apply_geometry(tf, landmarks)
        return image, depth, pncc, flip_landmarks(landmarks) if tf.flip else landmarks
