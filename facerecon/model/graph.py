"""Mesh topology on the device, graph convolution and the G-ResNet of Pixel2Mesh.

Layout. The public entry points take per-vertex features as ``(B, V, C)``. Inside the network the
features travel *vertex-major*, ``(V, B, C)``: the neighbour sum is then one sparse CSR product
``A @ x.reshape(V, B*C)`` with no transposes. On the project's CPU (B=4, V=7001, C=128, one
thread; ``benchmarks/bench_model.py``, table in docs/model.md "Speed") that sum takes 5.2 ms
forward / 14.5 ms forward+backward, against 56.0 / 122.5 ms for ``index_add_`` over the edge list
and 85.9 / 110.8 ms for a padded neighbour gather.

The topology is shared by the whole batch and kept as dense index buffers (non-persistent: it is
rebuilt from the template, so checkpoints stay small and DDP can broadcast it); the sparse CSR
matrix is assembled from them on the fly, which costs nothing (no copy). The neighbour lists come
from ``facerecon.mesh.topology.csr_adjacency``; :func:`neighbour_mean` over :func:`edge_adjacency`
is also the Laplacian loss's neighbour mean (``facerecon.losses``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Iterable, Sequence, cast

import numpy as np
import torch
from torch import Tensor, nn

from facerecon.errors import InputError
from facerecon.mesh.topology import csr_adjacency

__all__ = [
    "NEIGHBOUR_GAIN",
    "MeshHierarchy",
    "neighbour_sum",
    "neighbour_mean",
    "csr_tensor",
    "edge_adjacency",
    "GraphConv",
    "GResNet",
]


#: W1 is initialised ``1 / 6`` (the valence of a regular triangle mesh) smaller than W0: the
#: neighbour sum of smooth features is about ``degree`` times a single feature, so with equal
#: initial weights every layer would multiply the signal by ~7 and 14 layers overflow float32.
NEIGHBOUR_GAIN = 1.0 / 6.0


def _as_long(x: Any, name: str, cols: int) -> Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.long)
    if t.ndim != 2 or t.shape[1] != cols:
        raise InputError(f"{name} must be an (N, {cols}) integer array, got shape {tuple(t.shape)}")
    return t.contiguous()


def neighbour_sum(adjacency: Tensor, x: Tensor) -> Tensor:
    """``sum_{q in N(p)} x_q`` for every vertex p, batched over a shared topology.

    Args:
        adjacency: (V, V) sparse CSR float32 0/1 matrix (symmetric), see ``MeshHierarchy.adjacency``.
        x: (V, B, C) float, vertex-major features (any float dtype; summed in float32).

    Returns:
        (V, B, C) float32.
    """
    v, b, c = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        flat = x.to(adjacency.dtype).reshape(v, b * c)
        return torch.sparse.mm(adjacency, flat).view(v, b, c)


def neighbour_mean(adjacency: Tensor, x: Tensor) -> Tensor:
    """Mean of the neighbours' values, ``mean_{q in N(p)} x_q`` (isolated vertices give 0).

    Args:
        adjacency: (V, V) sparse CSR 0/1 matrix (symmetric), e.g. ``MeshHierarchy.adjacency`` or
            :func:`edge_adjacency`; the sum is computed in its dtype.
        x: (B, V, C) float per-vertex values.

    Returns:
        (B, V, C) in ``adjacency``'s dtype.
    """
    s = neighbour_sum(adjacency, x.transpose(0, 1).contiguous()).transpose(0, 1)
    crow = adjacency.crow_indices()
    deg = (crow[1:] - crow[:-1]).clamp(min=1).to(s.dtype)
    return s / deg[None, :, None]


def csr_tensor(crow: Tensor, col: Tensor, num_vertices: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(V, V) sparse CSR 0/1 matrix of ``dtype`` from neighbour lists (built on the fly, no copy).

    Args:
        crow: (V+1,) int64 row pointers; col: (nnz,) int64 neighbour indices, on the same device.
    """
    ones = torch.ones(col.shape[0], dtype=dtype, device=col.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, ones, (num_vertices, num_vertices), check_invariants=False)


#: (id(edges), V) -> (weak reference to that tensor, (crow, col) on its device): the edge buffers
#: of a network live as long as it does, so each CSR is built once; a dead tensor never matches.
_CSR_CACHE: dict[tuple[int, int], tuple[Any, tuple[Tensor, Tensor]]] = {}


def edge_adjacency(edges: Tensor, num_vertices: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(V, V) sparse CSR 0/1 adjacency of the undirected ``edges`` (E, 2) int64, on their device.

    The neighbour lists (:func:`facerecon.mesh.topology.csr_adjacency`) are computed once per
    edge tensor and kept while that tensor lives.
    """
    key = (id(edges), int(num_vertices))
    hit = _CSR_CACHE.get(key)
    if hit is not None and hit[0]() is edges:
        crow, col = hit[1]
    else:
        indptr, indices = csr_adjacency(edges.detach().cpu().numpy(), num_vertices)
        crow, col = (torch.from_numpy(a).to(edges.device) for a in (indptr, indices))
        if len(_CSR_CACHE) > 64:  # drop entries of tensors that are gone
            for k in [k for k, (ref, _) in _CSR_CACHE.items() if ref() is None]:
                del _CSR_CACHE[k]
        _CSR_CACHE[key] = (weakref.ref(edges), (crow, col))
    return csr_tensor(crow, col, num_vertices, dtype)


class MeshHierarchy(nn.Module):
    """The template's levels (coarse to fine) with everything the network and losses need.

    Buffers per level ``l`` (all int64, non-persistent): ``faces_l`` (F_l, 3), ``edges_l`` (E_l, 2)
    undirected with ``i < j``, ``adj_crow_l`` / ``adj_col_l`` (CSR neighbour lists), ``degree_l``
    (V_l,); and ``unpool_l`` (E_l, 2) for ``l < L-1``: vertex ``V_l + k`` of level ``l+1`` lies on
    edge ``unpool_l[k]`` of level ``l``. ``vertices`` (V_0, 3) float32 holds the level-0 template
    in its own canonical frame (persistent, so a checkpoint pins the template it was trained on).
    """

    vertices: Tensor  # buffer: the coarsest level's template vertices

    def __init__(
        self,
        vertices: Any,
        faces: Sequence[Any],
        edges: Sequence[Any],
        unpool_edges: Sequence[Any],
    ) -> None:
        """
        Args:
            vertices: (V_0, 3) float, the level-0 template vertices (template units).
            faces: per level (F_l, 3) int vertex indices.
            edges: per level (E_l, 2) int undirected edges.
            unpool_edges: per level but the last, (E_l, 2) int: the edges whose midpoints become
                vertices ``V_l + k`` of level ``l + 1``.
        """
        super().__init__()
        levels = len(faces)
        if levels < 1 or len(edges) != levels or len(unpool_edges) < levels - 1:
            raise InputError(
                f"mesh hierarchy: {len(faces)} face levels, {len(edges)} edge levels and "
                f"{len(unpool_edges)} unpooling levels do not match"
            )
        v0 = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
        if v0.ndim != 2 or v0.shape[1] != 3:
            raise InputError(f"template vertices must be (V, 3), got shape {tuple(v0.shape)}")
        self.register_buffer("vertices", v0.contiguous())
        self.num_levels = levels
        self._num_vertices: list[int] = []
        nv = v0.shape[0]
        for level in range(levels):
            f = _as_long(faces[level], f"faces[{level}]", 3)
            e = _as_long(edges[level], f"edges[{level}]", 2)
            if f.numel() and int(f.max()) >= nv or e.numel() and int(e.max()) >= nv:
                raise InputError(f"mesh level {level}: an index exceeds the {nv} vertices of that level")
            crow, col = (torch.from_numpy(a) for a in csr_adjacency(e.numpy(), nv))
            self.register_buffer(f"faces_{level}", f, persistent=False)
            self.register_buffer(f"edges_{level}", e, persistent=False)
            self.register_buffer(f"adj_crow_{level}", crow, persistent=False)
            self.register_buffer(f"adj_col_{level}", col, persistent=False)
            self.register_buffer(f"degree_{level}", crow[1:] - crow[:-1], persistent=False)
            self._num_vertices.append(nv)
            if level < levels - 1:
                u = _as_long(unpool_edges[level], f"unpool_edges[{level}]", 2)
                self.register_buffer(f"unpool_{level}", u, persistent=False)
                nv = nv + u.shape[0]

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_template(cls, template: Any) -> "MeshHierarchy":
        """From a ``facerecon.mesh.templates.Template`` (``.levels[l].vertices/.faces/.edges``,
        ``.unpool_edges[l]``)."""
        levels = template.levels
        return cls(
            levels[0].vertices,
            [lv.faces for lv in levels],
            [lv.edges for lv in levels],
            list(template.unpool_edges)[: len(levels) - 1],
        )

    @classmethod
    def from_mesh(cls, vertices: np.ndarray, faces: np.ndarray, levels: int) -> "MeshHierarchy":
        """Build ``levels`` levels from any triangle mesh by repeated edge-midpoint subdivision.

        Args:
            vertices: (V, 3) float template vertices.
            faces: (F, 3) int triangles.
            levels: number of levels (>= 1).
        """
        from facerecon.mesh.topology import edges_from_faces, unpool_mesh

        v = np.asarray(vertices, dtype=np.float32)
        f = np.asarray(faces, dtype=np.int64)
        all_faces, all_edges, unpools = [f], [edges_from_faces(f)], []
        for _ in range(levels - 1):
            v, f, e = unpool_mesh(v, f)
            unpools.append(e)
            all_faces.append(f)
            all_edges.append(edges_from_faces(f))
        return cls(np.asarray(vertices, dtype=np.float32), all_faces, all_edges, unpools)

    # ----------------------------------------------------------------------------- accessors
    def num_vertices(self, level: int) -> int:
        """V_l, the vertex count of ``level``."""
        return self._num_vertices[level]

    def faces(self, level: int) -> Tensor:
        """(F_l, 3) int64 triangles of ``level``."""
        return getattr(self, f"faces_{level}")

    def edges(self, level: int) -> Tensor:
        """(E_l, 2) int64 undirected edges of ``level`` (each once, ``i < j``)."""
        return getattr(self, f"edges_{level}")

    def degree(self, level: int) -> Tensor:
        """(V_l,) int64 neighbour counts of ``level``."""
        return getattr(self, f"degree_{level}")

    def unpool_edges(self, level: int) -> Tensor:
        """(E_l, 2) int64: vertex ``V_l + k`` of level ``level + 1`` lies on edge k."""
        return getattr(self, f"unpool_{level}")

    def adjacency(self, level: int) -> Tensor:
        """(V_l, V_l) sparse CSR float32 0/1 adjacency of ``level`` (built on the fly, no copy)."""
        return csr_tensor(getattr(self, f"adj_crow_{level}"), getattr(self, f"adj_col_{level}"), self._num_vertices[level])

    def template_vertices(self, level: int) -> Tensor:
        """(V_level, 3) float32 template vertices at ``level`` (edge midpoints), template units."""
        v = self.vertices
        for lv in range(level):
            u = self.unpool_edges(lv)
            v = torch.cat([v, 0.5 * (v[u[:, 0]] + v[u[:, 1]])], 0)
        return v

    def neighbour_mean(self, x: Tensor, level: int) -> Tensor:
        """Mean of the neighbours' values, ``(B, V_l, C) -> (B, V_l, C)`` float32 (isolated
        vertices give 0); see :func:`neighbour_mean`."""
        return neighbour_mean(self.adjacency(level), x)


class GraphConv(nn.Module):
    """``f'_p = W0 f_p + sum_{q in N(p)} W1 f_q + b`` (Pixel2Mesh), W0/W1 shared by all vertices.

    Whichever side of the neighbour sum has fewer channels is summed: ``A (x W1)`` when the layer
    narrows, ``(A x) W1`` when it widens (same result, fewer operations).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight0 = nn.Parameter(torch.empty(out_channels, in_channels))
        self.weight1 = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, gain: float = 1.0) -> None:
        """Glorot-uniform weights (as Pixel2Mesh) scaled by ``gain``, W1 further by
        ``NEIGHBOUR_GAIN``; zero bias."""
        nn.init.xavier_uniform_(self.weight0, gain=gain)
        nn.init.xavier_uniform_(self.weight1, gain=gain * NEIGHBOUR_GAIN)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward_vertex_major(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Args: x (V, B, C_in) float; adjacency (V, V) sparse CSR. Returns (V, B, C_out)."""
        if self.in_channels < self.out_channels:
            out = nn.functional.linear(x, self.weight0, self.bias)
            agg = neighbour_sum(adjacency, x).to(x.dtype)
            return out + nn.functional.linear(agg, self.weight1)
        # W0 and W1 in one GEMM over the same input (one pass over x), then the neighbour sum of the W1 part
        both = nn.functional.linear(x, torch.cat([self.weight0, self.weight1], 0))
        out, h1 = both.split(self.out_channels, dim=-1)
        if self.bias is not None:
            out = out + self.bias
        return out + neighbour_sum(adjacency, h1.contiguous()).to(out.dtype)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Args: x (B, V, C_in) float; adjacency (V, V) sparse CSR 0/1. Returns (B, V, C_out)."""
        return self.forward_vertex_major(x.transpose(0, 1), adjacency).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


class GResNet(nn.Module):
    """Pixel2Mesh's G-ResNet: graph convolutions with a shortcut every two, ReLU, a 3-channel head.

    ``num_layers`` counts every graph convolution: the input layer, ``(num_layers - 2) / 2``
    residual pairs (``x <- (x + relu(conv2(relu(conv1(x))))) / 2``) and the output layer (14 in
    Pixel2Mesh: 1 + 12 + 1). With ``in_channels=None`` the input layer lives outside (the
    network's perceptual-pooling layer, which fuses the image features) and ``forward`` takes its
    pre-activation output.
    """

    def __init__(
        self,
        in_channels: int | None,
        hidden: int = 128,
        num_layers: int = 14,
        out_channels: int = 3,
        out_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if num_layers < 2 or num_layers % 2:
            raise InputError(f"G-ResNet needs an even number of graph convolutions >= 2, got {num_layers}")
        self.conv_in = GraphConv(in_channels, hidden) if in_channels is not None else None
        self.pairs = nn.ModuleList(
            nn.ModuleList([GraphConv(hidden, hidden), GraphConv(hidden, hidden)]) for _ in range((num_layers - 2) // 2)
        )
        self.conv_out = GraphConv(hidden, out_channels)
        self.conv_out.reset_parameters(gain=out_gain)
        self.hidden = hidden

    def forward_vertex_major(self, x: Tensor, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        """Args: x (V, B, C_in) (or the input layer's output when built with ``in_channels=None``).

        Returns: ``(out (V, B, out_channels), hidden (V, B, hidden))``.
        """
        if self.conv_in is not None:
            x = self.conv_in.forward_vertex_major(x, adjacency)
        x = torch.relu(x)
        for conv1, conv2 in cast("Iterable[tuple[GraphConv, GraphConv]]", self.pairs):  # ModuleLists of two
            y = torch.relu(conv1.forward_vertex_major(x, adjacency))
            y = torch.relu(conv2.forward_vertex_major(y, adjacency))
            x = 0.5 * (x + y)
        return self.conv_out.forward_vertex_major(x, adjacency), x

    def forward(self, x: Tensor, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        """Args: x (B, V, C_in) float; adjacency (V, V) sparse CSR.

        Returns: ``(out (B, V, out_channels), hidden (B, V, hidden))``.
        """
        out, hidden = self.forward_vertex_major(x.transpose(0, 1), adjacency)
        return out.transpose(0, 1), hidden.transpose(0, 1)
