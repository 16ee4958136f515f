"""Face profiling: new views of a face-model sample turned further in yaw, with its ground truth.

The method of Zhu et al., "Face Alignment Across Large Poses: A 3D Solution" (CVPR 2016, "Face
Profiling"; how 300W-LP was made), as docs/profiling.md describes it:

1. **The 3D image mesh.** The fit's dense face (its vertices in image px, depth away from the
   camera) plus anchors on the image region around it: rings around the face's outline whose depth
   is extrapolated from the face (the outline enlarged about the face centre, its depth relative to
   the head centre fading with the ring's size: an enlarged head that carries the hair, ears and
   neck), and anchors on the image border at the background depth.
   The anchors and the outline are triangulated in 2D (Delaunay), the face keeps its own triangles.
2. **Rotation.** The face and the first ring (the enlarged head) turn rigidly about the head centre
   (a point behind the face: the fit's centre pushed back by half the face's width); the border
   anchors stay; the outer rings move by the harmonic interpolation of those two motions over the
   anchor triangulation (each the mean of its neighbours' moves), so the background stretches
   smoothly between the head and the image border instead of tearing or folding.
3. **Rendering.** Per pixel, the photo position that the surface came from is an interpolated
   attribute; the photo is resampled there (``cv2.remap``), so the texture keeps the photo's full
   resolution. The face is drawn over the anchor layer (one pass: the anchors' depths are shifted
   behind the face's, keeping their own order). Face vertices the photo never showed
   (hidden behind the face itself) take the photo position of the nearest visible vertex; pixels
   that no triangle covers take the nearest covered pixel's position.

The ground truth turns with the view exactly: the new pose is ``R' = Rx(pitch') Ry(yaw') Rz(roll')``
and the translation keeps the head centre in place, shape and expression are unchanged, so
:func:`facerecon.data.ground_truth.build_ground_truth` computes the new view's dense points,
normals and landmarks from the returned :class:`~facerecon.data.readers.RawSample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from facerecon.data.face_model import FaceModel, project_to_image
from facerecon.data.readers import Params3DMM, RawSample
from facerecon.errors import InputError
from facerecon.frames import rotation_from_euler

#: Largest |yaw| of a synthesised view, degrees.
MAX_YAW_DEG = 90.0

#: Rings of anchors around the face outline: (scale of the outline about the face centre, how the
#: ring moves: 1.0 rigidly with the head (the enlarged head: hair, ears and neck turn with the
#: face), NaN by harmonic interpolation between the head and the still image border).
ANCHOR_RINGS: tuple[tuple[float, float], ...] = ((1.12, 1.0), (1.3, math.nan), (1.6, math.nan), (2.1, math.nan))

#: Sectors of the face outline (one outline vertex per sector, by angle about the face centre).
OUTLINE_SECTORS = 72

#: Anchors along each image edge (the still background).
BORDER_ANCHORS = 12


@dataclass
class ProfiledView:
    """One synthesised view.

    Attributes:
        sample: the view as a raw sample: the rendered photo (same size as the source), the new fit
            (pose changed; shape and expression as the source's), ``landmarks68`` moved with the
            head (image px), ``landmarks2d`` their x and y (when the source had them).
        transform: ``(3, 4)`` float64 rigid map of the head from source image px to view image px
            (x, y, depth away from the camera): ``p' = transform[:, :3] @ p + transform[:, 3]``.
        angles: ``(3,)`` float64 the view's (pitch, yaw, roll), radians.
    """

    sample: RawSample
    transform: np.ndarray
    angles: np.ndarray


def head_rotation(pose: np.ndarray, angles: tuple[float, float, float]) -> np.ndarray:
    """The rotation ``D = R' R^T`` that turns a head posed with ``pose`` into the pose ``angles``,
    in the dataset's model-camera frame (x right, y up, z towards the viewer).

    Args:
        pose: ``(7,)`` ``Pose_Para`` of the source.
        angles: the target (pitch, yaw, roll), radians.

    Returns:
        ``(3, 3)`` float64.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    return rotation_from_euler(*angles) @ rotation_from_euler(pose[0], pose[1], pose[2]).T


def head_centre_model(vertices: np.ndarray) -> np.ndarray:
    """The head's centre in model units: the centre of the face's bounding box, pushed back (away
    from the viewer, model -z) from the face's front by half the face's width.

    Args:
        vertices: ``(N, 3)`` the fit's vertices before the pose, model units.

    Returns:
        ``(3,)`` float64.
    """
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    return np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, hi[2] - 0.5 * (hi[0] - lo[0])])


def view_transform(pose: np.ndarray, angles: tuple[float, float, float], centre_model: np.ndarray, image_height: int) -> tuple[np.ndarray, np.ndarray]:
    """The new pose and the rigid map of image px that turning the head about its centre makes.

    In the model-camera frame ``P = s R V + t``; the view is ``P' = D (P - c) + c`` with
    ``D = R' R^T`` and ``c = s R V_c + t`` the head centre, so ``P' = s R' V + t'`` with
    ``t' = c - s R' V_c``. Image px are ``p = F (P - o)``, ``F = diag(1, -1, -1)``,
    ``o = (0.5, H + 0.5, 0)`` (:func:`~facerecon.data.face_model.project_to_image`), so
    ``p' = F D F p + F (D (o - c) + c - o)``.

    Args:
        pose: ``(7,)`` source ``Pose_Para``.
        angles: target (pitch, yaw, roll), radians.
        centre_model: ``(3,)`` the head centre ``V_c``, model units (:func:`head_centre_model`).
        image_height: ``H``, px.

    Returns:
        (new ``Pose_Para`` ``(7,)``, ``(3, 4)`` image-px transform).
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    scale, t = pose[6], pose[3:6]
    rot, rot_new = rotation_from_euler(pose[0], pose[1], pose[2]), rotation_from_euler(*angles)
    d = head_rotation(pose, angles)
    c = scale * rot @ np.asarray(centre_model, dtype=np.float64) + t
    new_pose = np.concatenate([np.asarray(angles, dtype=np.float64), c - scale * rot_new @ centre_model, [scale]])
    flip = np.diag([1.0, -1.0, -1.0])
    o = np.array([0.5, image_height + 0.5, 0.0])
    transform = np.empty((3, 4))
    transform[:, :3] = flip @ d @ flip
    transform[:, 3] = flip @ (d @ (o - c) + c - o)
    return new_pose, transform


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points through a ``(3, 4)`` affine map: ``(N, 3)`` float64."""
    p = np.asarray(points, dtype=np.float64)
    return p @ transform[:, :3].T + transform[:, 3]


def view_angles(pose: np.ndarray, count: int, rng: np.random.Generator, *, min_step_deg: float = 10.0,
                pitch_jitter_deg: float = 10.0, roll_jitter_deg: float = 10.0) -> np.ndarray:
    """Target angles for ``count`` views turned further in yaw than the source, up to 90 degrees.

    The yaw keeps the source's side (a random side when the source is within 5 degrees of frontal)
    and is spread over ``[|yaw| + min_step, 90]`` degrees: one uniform draw in each of ``count``
    equal bins. Pitch and roll get uniform jitter of +-``pitch_jitter_deg`` / ``roll_jitter_deg``.

    Args:
        pose: ``(7,)`` source ``Pose_Para``.
        count: how many views.
        rng: the seeded generator.

    Returns:
        ``(count, 3)`` float64 (pitch, yaw, roll), radians.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    yaw0 = math.degrees(pose[1])
    side = (1.0 if rng.random() < 0.5 else -1.0) if abs(yaw0) < 5.0 else math.copysign(1.0, yaw0)
    lo = min(abs(yaw0) + min_step_deg, MAX_YAW_DEG)
    edges = np.linspace(lo, MAX_YAW_DEG, count + 1)
    yaw = side * rng.uniform(edges[:-1], edges[1:])
    pitch = math.degrees(pose[0]) + rng.uniform(-pitch_jitter_deg, pitch_jitter_deg, count)
    roll = math.degrees(pose[2]) + rng.uniform(-roll_jitter_deg, roll_jitter_deg, count)
    return np.radians(np.stack([pitch, yaw, roll], axis=1))


def crop_frame_transform(transform: np.ndarray, source_landmarks_px: np.ndarray, source_box: Sequence[float],
                         view_box: Sequence[float]) -> np.ndarray:
    """A view's ground truth in its crop frame as an affine map of the source's, in crop units.

    With ``q = image_to_crop(p, box, z0)`` (``z0`` the mean depth of the 68 landmarks) on both
    sides and ``p' = A p + b`` the head's move (:attr:`ProfiledView.transform`), the view's dense
    points and landmarks are ``q' = M[:, :3] q + M[:, 3]`` of the source's, its normals
    ``A n``, and its millimetres per crop unit the source's times ``side' / side``: so a cache need
    store only this ``(3, 4)`` matrix and the source row for a view's ground truth.

    Args:
        transform: ``(3, 4)`` the view's image-px transform.
        source_landmarks_px: ``(68, 3)`` the source's landmarks, image px (``gt_landmarks_px``).
        source_box, view_box: the crop boxes ``(x0, y0, side)``, image px.

    Returns:
        ``(3, 4)`` float64.
    """
    a, b = np.asarray(transform[:, :3], dtype=np.float64), np.asarray(transform[:, 3], dtype=np.float64)
    x0, y0, side = (float(v) for v in source_box)
    vx0, vy0, vside = (float(v) for v in view_box)
    mean_lm = np.asarray(source_landmarks_px, dtype=np.float64).mean(axis=0)
    origin = np.array([x0 + side / 2.0, y0 + side / 2.0, mean_lm[2]])  # crop-units origin of the source, image px
    view_origin = np.array([vx0 + vside / 2.0, vy0 + vside / 2.0, a[2] @ mean_lm + b[2]])
    out = np.empty((3, 4))
    out[:, :3] = (side / vside) * a
    out[:, 3] = (2.0 / vside) * (a @ origin + b - view_origin)
    return out


# ----------------------------------------------------------------------------------------------
# the 3D image mesh


@dataclass
class _Scene:
    """The source side of profiling, shared by every view of one sample."""

    face_px: np.ndarray  # (N, 3) the fit's vertices, source image px
    face_src: np.ndarray  # (N, 2) photo position each face vertex shows (image px)
    anchors_px: np.ndarray  # (A, 3) outline + ring + border anchors, source image px
    anchor_follow: np.ndarray  # (A,) 1: turns with the head, 0: stays, NaN: interpolated
    anchor_faces: np.ndarray  # (T, 3) Delaunay triangles of the anchors
    centre_model: np.ndarray  # (3,) head centre, model units


def _outline(face_px: np.ndarray, centre_xy: np.ndarray, sectors: int) -> np.ndarray:
    """Ids of the face's outline vertices: in each angular sector about ``centre_xy``, the vertex
    farthest from it (an outline that is star-shaped about the centre)."""
    d = face_px[:, :2] - centre_xy
    angle = np.arctan2(d[:, 1], d[:, 0])
    sector = np.minimum(((angle + math.pi) / (2 * math.pi) * sectors).astype(np.int64), sectors - 1)
    radius = np.hypot(d[:, 0], d[:, 1])
    order = np.lexsort((-radius, sector))  # by sector, farthest first
    first = np.r_[True, sector[order][1:] != sector[order][:-1]]
    return order[first]


def mirror_ids(model: FaceModel) -> np.ndarray:
    """Each vertex's mirror twin on the mean face (reflected in the plane ``x = centre``, nearest
    vertex): ``(N,)`` int64. Cached on the model."""
    cached = getattr(model, "_mirror_ids", None)
    if cached is None:
        from scipy.spatial import cKDTree

        mean = model.mean.astype(np.float64)
        mirrored = mean * np.array([-1.0, 1.0, 1.0])
        mirrored[:, 0] += mean[:, 0].min() + mean[:, 0].max()
        cached = cKDTree(mean).query(mirrored)[1].astype(np.int64)
        model._mirror_ids = cached  # type: ignore[attr-defined]  # cached on the face model it belongs to
    return cached


def _unoccluded(face_px: np.ndarray, model: FaceModel, size: tuple[int, int]) -> np.ndarray:
    """Which face vertices no other part of the face hides in the photo: ``(N,)`` bool.

    A vertex is hidden when the face drawn at its pixel is nearer than the vertex by more than a
    slack that grows with the depth map's local slope (a cheek seen at a grazing angle changes
    depth by many px per px, so the surface at a vertex's pixel centre can be well in front of the
    vertex itself). Vertices turned away from the camera but hidden by nothing (the mesh's rim
    beside the cheeks and the forehead) keep their own photo position: the hair, ears or background
    that the photo shows there is what lies behind the face's edge. Vertices outside the photo count
    as unoccluded (their own, replicated-border, position is the best guess).
    """
    from scipy.ndimage import maximum_filter

    from facerecon.render import render

    h, w = size
    depth = render(face_px, model.triangles, size).depth.astype(np.float64)
    finite = np.isfinite(depth)
    filled = np.where(finite, depth, np.nan)
    slope = np.zeros_like(depth)
    slope[:, 1:] = np.fmax(slope[:, 1:], np.abs(np.diff(filled, axis=1)))
    slope[1:, :] = np.fmax(slope[1:, :], np.abs(np.diff(filled, axis=0)))
    slope = maximum_filter(np.nan_to_num(slope, nan=0.0), size=3)
    col = np.clip(np.floor(face_px[:, 0]), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(face_px[:, 1]), 0, h - 1).astype(np.int64)
    tolerance = 0.005 * (float(np.ptp(face_px[:, 0])) or 1.0) + 1.5 * slope[row, col]
    in_front = face_px[:, 2] <= np.where(finite, depth, np.inf)[row, col] + tolerance
    outside = (face_px[:, 0] < 0) | (face_px[:, 0] >= w) | (face_px[:, 1] < 0) | (face_px[:, 1] >= h)
    return in_front | outside


def _visible_sources(face_px: np.ndarray, model: FaceModel, size: tuple[int, int]) -> np.ndarray:
    """Photo position of each face vertex: its own projection unless the face hides it
    (:func:`_unoccluded`); a hidden vertex takes its mirror twin's (faces are near symmetric) when
    the photo shows the twin facing the camera, else the nearest unoccluded vertex's (in 3D)."""
    from scipy.spatial import cKDTree

    from facerecon.data.ground_truth import outward_sign, vertex_normals

    seen = _unoccluded(face_px, model, size)
    src = face_px[:, :2].copy()
    if seen.all() or not seen.any():
        return src
    facing = vertex_normals(face_px, model.triangles)[:, 2] * outward_sign(model) < -0.2
    twin = mirror_ids(model)
    by_twin = ~seen & seen[twin] & facing[twin]
    src[by_twin] = face_px[twin[by_twin], :2]
    rest = np.flatnonzero(~seen & ~by_twin)
    if len(rest):
        _, nearest = cKDTree(face_px[seen]).query(face_px[rest])
        src[rest] = face_px[seen][nearest, :2]
    return src


def _border_points(size: tuple[int, int], per_edge: int) -> np.ndarray:
    h, w = size
    t = np.linspace(0.0, 1.0, per_edge + 1)[:-1]
    top = np.stack([t * w, np.zeros_like(t)], 1)
    right = np.stack([np.full_like(t, w), t * h], 1)
    bottom = np.stack([w - t * w, np.full_like(t, h)], 1)
    left = np.stack([np.zeros_like(t), h - t * h], 1)
    return np.concatenate([top, right, bottom, left])


def build_scene(sample: RawSample, model: FaceModel) -> _Scene:
    """The 3D image mesh of one sample (see the module docstring): face, anchors, triangles."""
    from scipy.spatial import Delaunay

    if sample.params is None:
        raise InputError(f"{sample.id}: face profiling needs a face-model fit (params)")
    p = sample.params
    h, w = sample.image.shape[:2]
    verts = model.vertices(p.shape, p.exp)
    face_px = project_to_image(verts, p.pose, h).astype(np.float64)
    centre_model = head_centre_model(verts)
    centre_px = project_to_image(centre_model[None], p.pose, h)[0].astype(np.float64)
    face_src = _visible_sources(face_px, model, (h, w))
    centre_xy = face_px[model.landmark_ids, :2].mean(axis=0)
    outline = face_px[_outline(face_px, centre_xy, OUTLINE_SECTORS)]
    anchors, follow = [outline], [np.ones(len(outline))]
    for scale, weight in ANCHOR_RINGS:
        ring = np.empty_like(outline)
        ring[:, :2] = centre_xy + scale * (outline[:, :2] - centre_xy)
        # the enlarged head's depth: the outline's depth relative to the head centre, fading with
        # the ring's size (a skull curves back towards its centre beyond the face)
        ring[:, 2] = centre_px[2] + scale**-4 * (outline[:, 2] - centre_px[2])
        keep = (ring[:, 0] > 0) & (ring[:, 0] < w) & (ring[:, 1] > 0) & (ring[:, 1] < h)  # the border anchors take over outside
        anchors.append(ring[keep])
        follow.append(np.full(int(keep.sum()), weight))
    border = _border_points((h, w), BORDER_ANCHORS)
    background_z = max(float(face_px[:, 2].max()), max(float(a[:, 2].max(initial=-np.inf)) for a in anchors))
    anchors.append(np.column_stack([border, np.full(len(border), background_z)]))
    follow.append(np.zeros(len(border)))
    anchors_px = np.concatenate(anchors)
    tri = Delaunay(anchors_px[:, :2]).simplices
    # drop the triangles inside the outline: the face covers that region
    mid = anchors_px[tri, :2].mean(axis=1)
    tri = tri[~_inside_outline(mid, outline[:, :2], centre_xy)]
    return _Scene(face_px, face_src, anchors_px, np.concatenate(follow), tri.astype(np.int64), centre_model)


def _inside_outline(points: np.ndarray, outline_xy: np.ndarray, centre_xy: np.ndarray) -> np.ndarray:
    """Whether 2D points lie inside a polygon that is star-shaped about ``centre_xy`` (radius test
    against the outline's radius interpolated at each point's angle)."""
    d = outline_xy - centre_xy
    angle, radius = np.arctan2(d[:, 1], d[:, 0]), np.hypot(d[:, 0], d[:, 1])
    order = np.argsort(angle)
    q = points - centre_xy
    limit = np.interp(np.arctan2(q[:, 1], q[:, 0]), angle[order], radius[order], period=2 * math.pi)
    return np.hypot(q[:, 0], q[:, 1]) < limit


# ----------------------------------------------------------------------------------------------
# the views


def _fill_uncovered(src: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Pixels no triangle covers take the photo position of the nearest covered pixel."""
    if covered.all() or not covered.any():
        return src
    from scipy.ndimage import distance_transform_edt

    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return src[rows, cols]


def _move_anchors(scene: _Scene, transform: np.ndarray) -> np.ndarray:
    """The anchors after the head moved: the head's turn rigidly, the border still, the rest by the
    harmonic interpolation of the displacement (graph Laplacian of the anchor triangulation)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    n = len(scene.anchors_px)
    used = np.zeros(n, dtype=bool)
    used[scene.anchor_faces.reshape(-1)] = True  # Delaunay leaves out coincident points: they stay
    rigid, free = scene.anchor_follow == 1.0, np.isnan(scene.anchor_follow) & used
    moved = scene.anchors_px.copy()
    moved[rigid] = apply_transform(transform, scene.anchors_px[rigid])
    if not free.any():
        return moved
    edges = np.concatenate([scene.anchor_faces[:, [0, 1]], scene.anchor_faces[:, [1, 2]], scene.anchor_faces[:, [2, 0]]])
    adjacency = coo_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two triangles counts once
    laplacian = (coo_matrix((np.asarray(adjacency.sum(axis=1)).ravel(), (np.arange(n), np.arange(n))), shape=(n, n)) - adjacency).tocsr()
    f, c = np.flatnonzero(free), np.flatnonzero(~free)
    shift = moved - scene.anchors_px
    rhs = -(laplacian[f][:, c] @ shift[c])
    moved[f] += np.asarray(spsolve(laplacian[f][:, f].tocsc(), rhs)).reshape(len(f), 3)
    return moved


def render_view(sample: RawSample, model: FaceModel, scene: _Scene, transform: np.ndarray) -> np.ndarray:
    """The photo of ``sample`` seen after the head moved by ``transform`` (``(3, 4)``, image px).

    Returns:
        ``(H, W, 3)`` uint8, the source's size.
    """
    import cv2

    from facerecon.render import render

    h, w = sample.image.shape[:2]
    face = apply_transform(transform, scene.face_px)
    anchors = _move_anchors(scene, transform)
    # one pass, the face laid over the anchors: the anchor layer keeps its own depth order, behind the face
    anchors[:, 2] += face[:, 2].max() + 1.0 - anchors[:, 2].min()
    n = len(face)
    drawn = render(
        np.concatenate([face, anchors]), np.concatenate([model.triangles, scene.anchor_faces + n]), (h, w),
        {"src": np.concatenate([scene.face_src, scene.anchors_px[:, :2]])},
    )
    src = drawn.attributes["src"]
    src = _fill_uncovered(src, drawn.mask) - 0.5  # image px -> OpenCV's pixel-centre coordinates
    return cv2.remap(
        np.ascontiguousarray(sample.image), np.ascontiguousarray(src[..., 0], dtype=np.float32),
        np.ascontiguousarray(src[..., 1], dtype=np.float32), interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def profile_view(sample: RawSample, model: FaceModel, angles: tuple[float, float, float], *,
                 scene: _Scene | None = None, view_id: str | None = None) -> ProfiledView:
    """One view of ``sample`` with the head turned to the pose ``angles``.

    Args:
        sample: a face-model sample (``params``; AFLW2000-3D / 300W-LP).
        model: the face model of the fit.
        angles: the view's (pitch, yaw, roll), radians (:func:`view_angles` draws them).
        scene: the sample's :func:`build_scene`, when several views share it.
        view_id: the view's sample id (default ``"<source id>@yaw<degrees>"``).

    Returns:
        A :class:`ProfiledView`.
    """
    scene = scene if scene is not None else build_scene(sample, model)
    assert sample.params is not None  # build_scene checked it
    angles = (float(angles[0]), float(angles[1]), float(angles[2]))
    if not all(math.isfinite(a) for a in angles) or abs(angles[1]) > math.radians(MAX_YAW_DEG) + 1e-9:
        raise InputError(f"{sample.id}: view angles must be finite with |yaw| <= {MAX_YAW_DEG:g} degrees, got {angles}")
    new_pose, transform = view_transform(sample.params.pose, angles, scene.centre_model, sample.image.shape[0])
    landmarks68 = None
    if sample.landmarks68 is not None:
        landmarks68 = apply_transform(transform, sample.landmarks68).astype(np.float32)
    view = replace(
        sample,
        id=view_id or f"{sample.id}@yaw{math.degrees(angles[1]):+.0f}",
        image=render_view(sample, model, scene, transform),
        params=Params3DMM(shape=sample.params.shape.copy(), exp=sample.params.exp.copy(), pose=new_pose),
        landmarks68=landmarks68,
        landmarks2d=None if landmarks68 is None else landmarks68[:, :2].copy(),
    )
    return ProfiledView(sample=view, transform=transform, angles=np.asarray(angles, dtype=np.float64))


def profile_views(sample: RawSample, model: FaceModel, count: int, rng: np.random.Generator) -> list[ProfiledView]:
    """``count`` views of ``sample`` turned further in yaw with pitch and roll jitter
    (:func:`view_angles`), sharing one 3D image mesh; ids ``"<source id>@view<k>"``."""
    scene = build_scene(sample, model)
    assert sample.params is not None
    angles = view_angles(sample.params.pose, count, rng)
    return [profile_view(sample, model, a, scene=scene, view_id=f"{sample.id}@view{k}") for k, a in enumerate(angles)]
