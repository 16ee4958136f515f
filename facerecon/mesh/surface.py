"""Torch measures of a triangle surface that losses, the face prior and eval share: unit face
normals, the pairs of faces across each interior edge (cached per faces tensor) and the normal
consistency ``mean over interior edges of 1 - cos`` between the two faces' normals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["face_normals", "face_adjacency", "normal_consistency_loss"]


def face_normals(coords: Tensor, faces: Tensor) -> Tensor:
    """(B, V, 3), (F, 3) -> (B, F, 3) unit face normals (right-hand rule over the face's order)."""
    a, b, c = coords[:, faces[:, 0]], coords[:, faces[:, 1]], coords[:, faces[:, 2]]
    return torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a, dim=-1), dim=-1, eps=1e-12)


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
