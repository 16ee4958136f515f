"""Torch measures of a triangle surface that losses, the face prior and eval share: unit face
and area-weighted vertex normals, the pairs of faces across each interior edge (cached per faces tensor) and the normal
consistency ``mean over interior edges of 1 - cos`` between the two faces' normals.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["face_cross", "face_normals", "vertex_normals", "face_incidence", "face_adjacency", "normal_consistency_loss"]


def face_cross(coords: Tensor, faces: Tensor) -> Tensor:
    """(B, V, 3), (F, 3) -> (B, F, 3) ``(b - a) x (c - a)`` of each face: its normal times twice its
    area (right-hand rule over the face's order)."""
    a, b, c = coords[:, faces[:, 0]], coords[:, faces[:, 1]], coords[:, faces[:, 2]]
    return torch.linalg.cross(b - a, c - a, dim=-1)


def face_normals(coords: Tensor, faces: Tensor) -> Tensor:
    """(B, V, 3), (F, 3) -> (B, F, 3) unit face normals (right-hand rule over the face's order)."""
    return torch.nn.functional.normalize(face_cross(coords, faces), dim=-1, eps=1e-12)


def vertex_normals(coords: Tensor, faces: Tensor, incidence: Tensor | None = None) -> Tensor:
    """(B, V, 3), (F, 3) -> (B, V, 3) area-weighted unit vertex normals: each vertex sums the
    (twice-area) normals of its faces. ``incidence``: the (V, F) CSR 0/1 matrix of
    :func:`face_incidence` (one sparse product instead of three scatters), built here when None."""
    if incidence is None:
        incidence = face_incidence(faces, coords.shape[1])
    fn = face_cross(coords, faces).float()
    bsz, nf, _ = fn.shape
    with torch.autocast(device_type=coords.device.type, enabled=False):
        vn = torch.sparse.mm(incidence, fn.transpose(0, 1).reshape(nf, bsz * 3))
    return torch.nn.functional.normalize(vn.view(-1, bsz, 3).transpose(0, 1), dim=-1, eps=1e-12)


def face_incidence(faces: Tensor, num_vertices: int) -> Tensor:
    """(V, F) sparse CSR float32 0/1 matrix: entry (v, f) is 1 when face f has vertex v."""
    faces = torch.as_tensor(faces, dtype=torch.long)
    nf = faces.shape[0]
    rows = faces.reshape(-1)
    cols = torch.arange(nf, device=faces.device).repeat_interleave(3)
    order = torch.argsort(rows * nf + cols)
    rows, cols = rows[order], cols[order]
    crow = torch.zeros(num_vertices + 1, dtype=torch.long, device=faces.device)
    crow[1:] = torch.bincount(rows, minlength=num_vertices).cumsum(0)
    ones = torch.ones(rows.shape[0], dtype=torch.float32, device=faces.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, ones, (num_vertices, nf), check_invariants=False)


#: id(faces) -> (weak reference to that tensor, its adjacency): the topology buffers of a network
#: live as long as it does, so each is computed once; a dead tensor's id never matches its ref.
_ADJACENCY_CACHE: dict[int, tuple[Any, Tensor]] = {}


def face_adjacency(faces: Tensor) -> Tensor:
    """(F, 3) -> (A, 2) int64 pairs of faces that share an edge (interior edges, each once)."""
    import weakref

    hit = _ADJACENCY_CACHE.get(id(faces))
    if hit is not None and hit[0]() is faces:
        return hit[1]
    f = faces.detach().cpu()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    owner = torch.arange(f.shape[0]).repeat(3)
    code = e[:, 0] * (int(f.max()) + 1) + e[:, 1]
    order = torch.argsort(code)
    code, owner = code[order], owner[order]
    same = code[1:] == code[:-1]
    pairs = torch.stack([owner[:-1][same], owner[1:][same]], dim=1).to(faces.device)
    if len(_ADJACENCY_CACHE) > 64:  # drop entries of tensors that are gone
        for k in [k for k, (ref, _) in _ADJACENCY_CACHE.items() if ref() is None]:
            del _ADJACENCY_CACHE[k]
    _ADJACENCY_CACHE[id(faces)] = (weakref.ref(faces), pairs)
    return pairs


def normal_consistency_loss(coords: Tensor, faces: Tensor) -> Tensor:
    """``mean over interior edges of 1 - cos(n_f, n_g)`` for the two faces f, g of each edge."""
    n = face_normals(coords, faces)
    pairs = face_adjacency(faces)
    return (1.0 - (n[:, pairs[:, 0]] * n[:, pairs[:, 1]]).sum(-1)).mean()
