"""Evenly spread, deterministic point sets on a hemisphere and an ellipsoid, triangulated.

The generators use only IEEE-exact arithmetic (+, -, *, /, sqrt) inside their iterations, plus
``math.sin``/``math.cos`` for the starting points, and a convex hull (qhull) for the topology. No
BLAS, no random numbers, no thread-count dependence, so the same parameters give the same
float64 coordinates on every run; callers round to float32 before storing.

Both surfaces are convex, so the convex hull of points on them is a valid triangulation that uses
every point (the spherical Delaunay triangulation for the sphere). The hemisphere's hull gets an
extra point at the opposite pole ``(0, 0, +1)``; dropping the faces that touch it leaves a disk
whose boundary is the rim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facerecon.mesh.topology import edge_lengths, edges_from_faces

__all__ = ["RelaxParams", "hemisphere_mesh", "sphere_mesh", "ellipsoid_mesh"]

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@dataclass(frozen=True)
class RelaxParams:
    """Knobs of the relaxation (stored in a template's metadata so it can be regenerated).

    Attributes:
        iterations: force-balance steps (Persson-Strang "distmesh" springs, repulsive only).
        retriangulate_every: steps between re-triangulations (convex hull) of the moving points.
        step: step size (fraction of the spring force applied per iteration).
        stretch: distmesh's ``Fscale``: target lengths are this much longer than the mean, so
            springs only push (1.2 is the classic value).
        grading: hemisphere only: target edge length grows as ``1 + grading * depth`` with the
            depth ``-z`` below the rim plane (unit sphere), to bridge fine rim spacing and a
            coarser dome when the rim has more vertices than an even mesh would.
        polish_iterations: final steps minimising a smooth max/min edge-length ratio on the fixed
            topology (0 to skip).
        polish_power: the exponent of the soft max (higher: closer to the true max).
    """

    iterations: int = 600
    retriangulate_every: int = 10
    step: float = 0.2
    stretch: float = 1.2
    grading: float = 0.0
    polish_iterations: int = 0
    polish_power: float = 16.0


# --------------------------------------------------------------------------------------------
# primitives (exact arithmetic only)


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x[:, 0] * x[:, 0] + x[:, 1] * x[:, 1] + x[:, 2] * x[:, 2])


def _to_unit_sphere(points: np.ndarray) -> np.ndarray:
    return points / _norm(points)[:, None]


def _hull_faces(points: np.ndarray) -> np.ndarray:
    """Outward-oriented convex-hull triangles of ``points`` (N, 3) float64, (F, 3) int64."""
    from scipy.spatial import ConvexHull

    hull = ConvexHull(points, qhull_options="Qt")  # Qt: triangulated output, no merged facets
    faces = hull.simplices.astype(np.int64)
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    n = np.cross(b - a, c - a)
    outward = hull.equations[:, :3]
    flip = (n * outward).sum(axis=1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return _canonical_faces(faces)


def _canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Rotate each face to start at its smallest index (winding kept), then sort the rows."""
    rot = np.argmin(faces, axis=1)
    idx = (rot[:, None] + np.arange(3)[None, :]) % 3
    faces = np.take_along_axis(faces, idx, axis=1)
    return faces[np.lexsort((faces[:, 2], faces[:, 1], faces[:, 0]))]


def _springs(points: np.ndarray, edges: np.ndarray, size: np.ndarray, stretch: float) -> np.ndarray:
    """Distmesh repulsive spring forces, (N, 3) float64."""
    vec = points[edges[:, 1]] - points[edges[:, 0]]
    length = _norm(vec)
    target = size * stretch * np.sqrt((length * length).sum() / (size * size).sum())
    push = np.maximum(target - length, 0.0) / length
    f = vec * push[:, None]
    force = np.zeros_like(points)
    np.add.at(force, edges[:, 0], -f)
    np.add.at(force, edges[:, 1], f)
    return force


def _pair_repulsion(points: np.ndarray, reach: float) -> np.ndarray:
    """Distmesh-style push between every pair of points closer than ``reach``, (N, 3) float64.

    Unlike edge springs this does not depend on a triangulation, so points cannot pile up
    unseen where a (convex hull) triangulation misses a short connection.
    """
    from scipy.spatial import cKDTree

    pairs = cKDTree(points).query_pairs(reach, output_type="ndarray").astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # a fixed order: sums are reproducible
    vec = points[pairs[:, 1]] - points[pairs[:, 0]]
    length = _norm(vec)
    f = vec * ((reach - length) / length)[:, None]
    force = np.zeros_like(points)
    np.add.at(force, pairs[:, 0], -f)
    np.add.at(force, pairs[:, 1], f)
    return force


def _polish_step(points: np.ndarray, edges: np.ndarray, power: float, floor: float) -> np.ndarray:
    """Gradient of ``sum (L/Lmax)^p + sum (floor/L)^p`` w.r.t. the points, (N, 3) float64.

    The first term pulls the longest edges in, the second keeps every edge at least ``floor``
    long; together they lower the ratio of the longest to the shortest edge.
    """
    vec = points[edges[:, 1]] - points[edges[:, 0]]
    length = _norm(vec)
    top = length.max()
    grow = (power / top) * (length / top) ** (power - 1.0)
    shrink = -(power / floor) * (floor / length) ** (power + 1.0)
    g = vec * ((grow + shrink) / length)[:, None]
    grad = np.zeros_like(points)
    np.add.at(grad, edges[:, 1], g)
    np.add.at(grad, edges[:, 0], -g)
    return grad


def _opposite_angle_cos(p: np.ndarray, apex: int, a: int, b: int) -> float:
    u = p[a] - p[apex]
    v = p[b] - p[apex]
    return float((u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / math.sqrt(
        (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]) * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])))


def _delaunay_flips(points: np.ndarray, faces: np.ndarray, max_passes: int = 50) -> np.ndarray:
    """Flip edges until every interior edge is locally Delaunay in the real (3D) metric.

    An edge ``(a, b)`` with opposite vertices ``c`` and ``d`` is flipped to ``(c, d)`` when the
    angles at ``c`` and ``d`` sum to more than pi (and ``(c, d)`` is not already an edge). Faces
    keep their orientation. Edges are visited in sorted order, so the result is reproducible.

    Args:
        points: (N, 3) float64 vertex positions.
        faces: (F, 3) int64 consistently oriented triangles.

    Returns:
        (F, 3) int64, the flipped faces in canonical order (see ``_canonical_faces``).
    """
    faces = faces.copy()
    for _ in range(max_passes):
        owner: dict[tuple[int, int], int] = {}
        for f, (i, j, k) in enumerate(faces.tolist()):
            owner[(i, j)] = f
            owner[(j, k)] = f
            owner[(k, i)] = f
        existing = {(min(a, b), max(a, b)) for a, b in owner}
        touched = np.zeros(len(faces), dtype=bool)
        flipped = 0
        for a, b in sorted(e for e in existing):
            f1, f2 = owner.get((a, b)), owner.get((b, a))
            if f1 is None or f2 is None or touched[f1] or touched[f2]:
                continue
            c = int(sum(faces[f1]) - a - b)
            d = int(sum(faces[f2]) - a - b)
            if (min(c, d), max(c, d)) in existing:
                continue
            # both angles lie in (0, pi): their sum exceeds pi exactly when sin(c + d) < 0
            cos_c = _opposite_angle_cos(points, c, a, b)
            cos_d = _opposite_angle_cos(points, d, a, b)
            sin_c = math.sqrt(max(0.0, 1.0 - cos_c * cos_c))
            sin_d = math.sqrt(max(0.0, 1.0 - cos_d * cos_d))
            if sin_c * cos_d + cos_c * sin_d >= -1e-12:  # sin(c + d) >= 0: sum <= pi, keep
                continue
            faces[f1] = (c, a, d)
            faces[f2] = (d, b, c)
            touched[f1] = touched[f2] = True
            existing.discard((a, b))
            existing.add((min(c, d), max(c, d)))
            flipped += 1
        if not flipped:
            break
    return _canonical_faces(faces)


# --------------------------------------------------------------------------------------------
# hemisphere


def _hemisphere_start(n_rim: int, n_interior: int) -> np.ndarray:
    """Rim points evenly on the unit circle at z = 0, interior points on a golden spiral on the dome."""
    rim = np.array([[math.cos(2.0 * math.pi * k / n_rim), math.sin(2.0 * math.pi * k / n_rim), 0.0] for k in range(n_rim)])
    inner = []
    for i in range(n_interior):
        z = -1.0 + 0.9 * (i + 0.5) / n_interior  # equal-area bands on the dome, kept off the rim
        r = math.sqrt(max(0.0, 1.0 - z * z))
        t = _GOLDEN_ANGLE * i
        inner.append([r * math.cos(t), r * math.sin(t), z])
    return np.concatenate([rim, np.asarray(inner, dtype=np.float64).reshape(-1, 3)], axis=0)


def _hemisphere_faces(points: np.ndarray) -> np.ndarray:
    n = points.shape[0]
    faces = _hull_faces(np.concatenate([points, [[0.0, 0.0, 1.0]]], axis=0))
    return faces[(faces != n).all(axis=1)]


def _clamp_dome(points: np.ndarray, n_rim: int, min_depth: float) -> None:
    """Keep interior points on the unit dome and at least ``min_depth`` below the rim plane."""
    inner = points[n_rim:]
    inner[:, 2] = np.minimum(inner[:, 2], -min_depth)
    points[n_rim:] = _to_unit_sphere(inner)


def hemisphere_mesh(n_rim: int, n_interior: int, params: RelaxParams) -> tuple[np.ndarray, np.ndarray]:
    """An evenly spread open unit hemisphere (dome towards -z, rim on z = 0).

    Args:
        n_rim: boundary vertices (evenly spaced on the rim circle, fixed).
        n_interior: vertices strictly inside (on the dome, z < 0).
        params: relaxation settings.

    Returns:
        ``(points, faces)``: (n_rim + n_interior, 3) float64 on the unit sphere, rim vertices
        first in loop order; (2 n_interior + n_rim - 2, 3) int64, counter-clockwise seen from
        outside (normals away from the centre).
    """
    points = _hemisphere_start(n_rim, n_interior)
    rim_edge = 2.0 * math.sin(math.pi / n_rim)
    min_depth = 0.25 * rim_edge
    faces = _hemisphere_faces(points)
    edges = edges_from_faces(faces)
    for it in range(params.iterations):
        if it % params.retriangulate_every == 0:
            faces = _hemisphere_faces(points)
            edges = edges_from_faces(faces)
        mid_depth = -0.5 * (points[edges[:, 0], 2] + points[edges[:, 1], 2])
        size = 1.0 + params.grading * mid_depth
        force = _springs(points, edges, size, params.stretch)
        force[:n_rim] = 0.0
        points = points + params.step * force
        _clamp_dome(points, n_rim, min_depth)
    faces = _hemisphere_faces(points)
    edges = edges_from_faces(faces)
    for it in range(params.polish_iterations):
        if it % params.retriangulate_every == 0:
            edges = edges_from_faces(_hemisphere_faces(points))
        grad = _polish_step(points, edges, params.polish_power, rim_edge)
        grad[:n_rim] = 0.0
        scale = _norm(grad).max()
        if scale == 0.0:
            break
        points = points - (0.02 * rim_edge / scale) * grad
        _clamp_dome(points, n_rim, min_depth)
    return points, _hemisphere_faces(points)


# --------------------------------------------------------------------------------------------
# sphere / ellipsoid


def _fibonacci_sphere(n: int) -> np.ndarray:
    pts = []
    for i in range(n):
        z = 1.0 - 2.0 * (i + 0.5) / n
        r = math.sqrt(max(0.0, 1.0 - z * z))
        t = _GOLDEN_ANGLE * i
        pts.append([r * math.cos(t), r * math.sin(t), z])
    return np.asarray(pts, dtype=np.float64)


def ellipsoid_mesh(n: int, radii: tuple[float, float, float], params: RelaxParams) -> tuple[np.ndarray, np.ndarray]:
    """An evenly spread closed ellipsoid centred at the origin.

    Points are relaxed on the ellipsoid surface itself (pairwise repulsion in its real metric,
    then radial projection back onto it), so the spacing is even on the ellipsoid, not just on
    the sphere; the convex hull is then made Delaunay in the real metric by edge flips, and the
    polish evens out the edge lengths on that fixed topology.

    Args:
        n: vertices (>= 4).
        radii: semi-axes along x, y, z (any positive unit; the output has the same unit).
        params: relaxation settings.

    Returns:
        ``(points, faces)``: (n, 3) float64 on the ellipsoid; (2n - 4, 3) int64, counter-clockwise
        seen from outside.
    """
    r = np.asarray(radii, dtype=np.float64)

    def project(p: np.ndarray) -> np.ndarray:
        return _to_unit_sphere(p / r) * r

    points = project(_fibonacci_sphere(n) * r)
    for it in range(params.iterations):
        if it % params.retriangulate_every == 0:
            faces = _hull_faces(points)
            edges = edges_from_faces(faces)
            length = edge_lengths(points, edges)
            reach = params.stretch * math.sqrt((length * length).mean())
        points = project(points + params.step * _pair_repulsion(points, reach))
    faces = _delaunay_flips(points, _hull_faces(points))
    edges = edges_from_faces(faces)
    for _ in range(params.polish_iterations):
        vec = points[edges[:, 1]] - points[edges[:, 0]]
        floor = _norm(vec).min()
        grad = _polish_step(points, edges, params.polish_power, floor)
        scale = _norm(grad).max()
        if scale == 0.0:
            break
        points = project(points - (0.02 * floor / scale) * grad)
    return points, faces


def sphere_mesh(n: int, params: RelaxParams) -> tuple[np.ndarray, np.ndarray]:
    """An evenly spread unit sphere: ``ellipsoid_mesh`` with radii (1, 1, 1)."""
    return ellipsoid_mesh(n, (1.0, 1.0, 1.0), params)
