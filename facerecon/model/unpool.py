"""Graph unpooling: one new vertex on every edge, for coordinates and features.

Edge-midpoint (Pixel2Mesh) or adaptive (face paper): the new vertex on edge (a, b) sits at
``a + t (b - a)`` with a learnable ``t`` per edge. ``t = T_MIN + (1 - 2 T_MIN) sigmoid(s)`` with a
free parameter ``s`` (init 0, so t = 0.5): strictly inside (0, 1) whatever the optimiser does,
even in float32 where a plain sigmoid rounds to exactly 1.0 for s > 17.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facerecon.errors import InputError

__all__ = ["Unpool", "T_MIN"]

#: The adaptive position never comes closer than this to an endpoint of its edge (fraction of the edge).
T_MIN = 1e-3


class Unpool(nn.Module):
    """Adds vertex ``V + k`` on edge ``edges[k]`` (the convention of ``facerecon.mesh.topology``)."""

    edges: Tensor  # buffer: (E, 2) the coarse level's edges

    def __init__(self, edges: Tensor, adaptive: bool = False) -> None:
        """
        Args:
            edges: (E, 2) int64 edges of the coarse level, in the order of the new vertices.
            adaptive: learn the position ``t`` on each edge (else the midpoint, t = 0.5).
        """
        super().__init__()
        edges = torch.as_tensor(edges, dtype=torch.long)
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise InputError(f"unpooling edges must be (E, 2), got shape {tuple(edges.shape)}")
        self.register_buffer("edges", edges.contiguous(), persistent=False)
        self.adaptive = adaptive
        self.logit = nn.Parameter(torch.zeros(edges.shape[0])) if adaptive else None

    @property
    def num_new(self) -> int:
        """E, the number of vertices added."""
        return int(self.edges.shape[0])

    def positions(self) -> Tensor:
        """(E,) float32 ``t`` per edge, in [T_MIN, 1 - T_MIN] (0.5 everywhere when not adaptive)."""
        if self.logit is None:
            return torch.full((self.num_new,), 0.5, device=self.edges.device)
        return T_MIN + (1.0 - 2.0 * T_MIN) * torch.sigmoid(self.logit)

    def forward(self, x: Tensor, dim: int = 1) -> Tensor:
        """Append the new vertices' values along the vertex axis ``dim``.

        Args:
            x: (..., V, ...) float values per vertex (coordinates or features), vertex axis ``dim``.
            dim: the vertex axis (1 for (B, V, C), 0 for vertex-major (V, B, C)).

        Returns:
            (..., V + E, ...) the input followed by ``a + t (b - a)`` for every edge (a, b).
        """
        dim = dim % x.ndim
        a = x.index_select(dim, self.edges[:, 0])
        b = x.index_select(dim, self.edges[:, 1])
        shape = [1] * x.ndim
        shape[dim] = self.num_new
        t = self.positions().to(x.dtype).view(shape)
        if torch.is_grad_enabled() and (x.requires_grad or t.requires_grad):
            return torch.cat([x, torch.lerp(a, b, t)], dim=dim)
        # without gradients: the new vertices written in place after a copy of the input
        out_shape = list(x.shape)
        out_shape[dim] += self.num_new
        out = x.new_empty(out_shape)
        out.narrow(dim, 0, x.shape[dim]).copy_(x)
        torch.lerp(a, b, t, out=out.narrow(dim, x.shape[dim], self.num_new))
        return out

    def extra_repr(self) -> str:
        return f"new_vertices={self.num_new}, adaptive={self.adaptive}"
