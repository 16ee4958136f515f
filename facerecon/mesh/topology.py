"""Mesh connectivity in plain numpy: edge lists, CSR adjacency, boundary loops, edge-midpoint unpooling.

Everything here is deterministic and independent of thread count (no BLAS, no hashing order):
edges and neighbour lists come out sorted, so the same faces always give the same arrays.
"""

from __future__ import annotations

import numpy as np

from facerecon.errors import InputError

__all__ = [
    "edges_from_faces",
    "csr_adjacency",
    "boundary_edges",
    "boundary_loops",
    "unpool_mesh",
    "edge_lengths",
]


def _check_faces(faces: np.ndarray, num_vertices: int | None = None) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise InputError(f"faces must be an (F, 3) integer array, got {faces.dtype} {faces.shape}")
    faces = faces.astype(np.int64, copy=False)
    if faces.size and faces.min() < 0:
        raise InputError("faces hold a negative vertex index")
    if num_vertices is not None and faces.size and faces.max() >= num_vertices:
        raise InputError(f"faces reference vertex {int(faces.max())} but there are only {num_vertices} vertices")
    return faces


def edges_from_faces(faces: np.ndarray) -> np.ndarray:
    """The undirected edges of a triangle mesh, each once.

    Args:
        faces: (F, 3) integer vertex indices.

    Returns:
        (E, 2) int64, ``i < j`` in every row, rows sorted lexicographically.
    """
    faces = _check_faces(faces)
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    half.sort(axis=1)
    return np.unique(half, axis=0).astype(np.int64)


def csr_adjacency(edges: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex neighbour lists in compressed sparse row form.

    Args:
        edges: (E, 2) integer vertex indices, each undirected edge once.
        num_vertices: V.

    Returns:
        ``(indptr, indices)``: (V+1,) and (2E,) int64; the neighbours of vertex ``v`` are
        ``indices[indptr[v]:indptr[v+1]]``, sorted ascending.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    counts = np.bincount(src, minlength=num_vertices)
    indptr = np.zeros(num_vertices + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, dst.astype(np.int64)


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed boundary half-edges (used by exactly one face), in the faces' winding direction.

    Args:
        faces: (F, 3) integer vertex indices.

    Returns:
        (B, 2) int64 ``(from, to)`` pairs, sorted by ``from``.
    """
    faces = _check_faces(faces)
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    key = np.sort(half, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    single = half[counts[inverse.ravel()] == 1]
    return single[np.argsort(single[:, 0], kind="stable")].astype(np.int64)


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The boundary of a manifold mesh as closed vertex loops, each in the faces' winding direction.

    Each loop starts at its smallest vertex index. Loops are ordered by that first vertex.

    Args:
        faces: (F, 3) integer vertex indices.

    Returns:
        A list of (n_i,) int64 arrays (empty for a closed mesh).

    Raises:
        InputError: when a boundary vertex has more than one outgoing boundary edge (not manifold).
    """
    half = boundary_edges(faces)
    nxt: dict[int, int] = {}
    for a, b in half.tolist():
        if a in nxt:
            raise InputError(f"vertex {a} lies on two boundary loops: the mesh is not manifold")
        nxt[a] = b
    loops: list[np.ndarray] = []
    seen: set[int] = set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        v = nxt[start]
        while v != start:
            if v in seen or v not in nxt:
                raise InputError(f"the boundary through vertex {start} is not a simple closed loop")
            loop.append(v)
            seen.add(v)
            v = nxt[v]
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def edge_lengths(vertices: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Euclidean edge lengths.

    Args:
        vertices: (V, 3) float coordinates (any unit).
        edges: (E, 2) integer vertex indices.

    Returns:
        (E,) float64 lengths in the unit of ``vertices``.
    """
    v = np.asarray(vertices, dtype=np.float64)
    d = v[edges[:, 1]] - v[edges[:, 0]]
    return np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])


def unpool_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge-midpoint subdivision (Pixel2Mesh graph unpooling): one new vertex per edge, each face -> 4.

    New vertex ``V + k`` is the midpoint of ``edges[k]``. Face ``f = (a, b, c)`` becomes rows
    ``4f .. 4f+3`` of the output: ``(a, m_ab, m_ca)``, ``(m_ab, b, m_bc)``, ``(m_ca, m_bc, c)``,
    ``(m_ab, m_bc, m_ca)``, so the winding (and so the normal direction) is kept.

    Args:
        vertices: (V, 3) float coordinates; the output keeps their dtype (float32 midpoints are
            the correctly rounded float32 of the exact midpoint).
        faces: (F, 3) integer vertex indices.

    Returns:
        ``(new_vertices, new_faces, edges)``: (V+E, 3) same dtype as ``vertices``; (4F, 3) int64;
        (E, 2) int64, the edges of the input mesh (sorted, ``i < j``), whose midpoints were added.
    """
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise InputError(f"vertices must be a (V, 3) array, got shape {vertices.shape}")
    num_v = vertices.shape[0]
    faces = _check_faces(faces, num_v)
    edges = edges_from_faces(faces)
    midpoints = (vertices[edges[:, 0]] + vertices[edges[:, 1]]) / vertices.dtype.type(2)
    new_vertices = np.concatenate([vertices, midpoints.astype(vertices.dtype, copy=False)], axis=0)

    def mid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        key = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
        # edges are sorted lexicographically: locate each key by its flat code
        code = key[:, 0] * num_v + key[:, 1]
        table = edges[:, 0] * num_v + edges[:, 1]
        return num_v + np.searchsorted(table, code)

    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    m_ab, m_bc, m_ca = mid(a, b), mid(b, c), mid(c, a)
    new_faces = np.stack(
        [
            np.stack([a, m_ab, m_ca], axis=1),
            np.stack([m_ab, b, m_bc], axis=1),
            np.stack([m_ca, m_bc, c], axis=1),
            np.stack([m_ab, m_bc, m_ca], axis=1),
        ],
        axis=1,
    ).reshape(-1, 3)
    return new_vertices, new_faces.astype(np.int64), edges
