"""ONNX export of facerecon's networks (every kind: model v1, model v2 with graph blocks or the
spiral decoder) and of MTCNN's three networks.

The training modules use operations that export badly or not at all (sparse CSR products for the
neighbour sums, ``embedding_bag`` taps, ``torch.linalg`` solves and SVDs, in-place writes). Each
gets an export-time equivalent here, built from the trained module's own weights and tested equal
to it (``tests/test_onnx_export.py``):

* neighbour sums: a padded ``(V, D)`` neighbour table (padding points at an appended zero row),
  one row gather and one add per neighbour slot (:class:`NeighbourTable`);
* perceptual pooling: every map projected by its part of W0 / W1 first, the maps stacked in one
  channels-last table, the bilinear taps of all maps computed at once, one gather and one batched
  ``MatMul`` (:func:`_bilinear_stacked`; border padding, ``align_corners=False``). ONNX Runtime's
  ``GridSample`` is several times slower on the CPU. The five-point alignment's warp: its affine
  grid computed in the graph and the same gathers with zero padding (:func:`_bilinear`);
* the resize to the network's input size (antialiased bilinear) and O-Net's 48 px input: one
  constant matrix per axis (a separable linear map, baked from ``torch.nn.functional.interpolate``);
* the scaled-orthographic pose fit: the pseudo-inverse of the fixed model points baked, and the
  nearest scaled rotation of a 2x3 matrix in closed form (``(M M^T)^(-1/2) M``) instead of an SVD;
* unpooling: two gathers and ``a + t (b - a)`` with ``t`` baked; the landmark head's softmax baked;
* vertex normals (spiral decoder): face normals by gathers, summed per vertex through a padded
  vertex-to-face table.

Batch norms are folded into their convolutions (``facerecon.model.backbones.fold_batch_norms``)
before tracing; constants are folded by the exporter (in ``PRESERVE`` training mode: its own
eval-mode batch-norm fusion mis-wires batch norms whose parameters are identical).
The network's ONNX input is the crops as the predict path cuts them, ``(B, 224, 224, 3)`` uint8,
and for model v2 MTCNN's five points ``(B, 5, 2)`` crop units (NaN rows: none); its outputs are
``vertices`` (B, V, 3) crop units, ``landmarks`` (B, 68, 3) where the model has them, ``colors``
where it has a colour head, and ``stage0``, ``stage1``, ... (the mesh after each block). The file's
metadata holds what a runtime needs besides (:data:`META_KEY`): the triangles of each stage, the
landmark reference for the head pose, the input size.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facerecon.errors import FaceReconError, InputError
from facerecon.runtime.session import META_KEY, MTCNN_FILES

if TYPE_CHECKING:
    from facerecon.mtcnn import PNet

__all__ = ["META_KEY", "OPSET", "export_onnx", "export_network", "export_mtcnn", "export_module", "ExportNetwork", "NeighbourTable", "resize_matrix"]

#: The ONNX opset written.
OPSET = 17

#: A trained module read by the export-time equivalents below (a network of any kind, or one of its
#: blocks, convolutions, unpoolings, heads): they read its weights, buffers and sizes by name,
#: across classes that share no interface, so the attributes are typed where they are used.
TrainedModule = Any


# ------------------------------------------------------------------------------ building blocks
def neighbour_table(crow: Tensor, col: Tensor, num_vertices: int) -> Tensor:
    """(V, D) int64 neighbour indices from CSR lists, D the largest degree, padded with V (a row
    of zeros appended to the features)."""
    crow, col = crow.cpu(), col.cpu()
    deg = (crow[1:] - crow[:-1]).tolist()
    table = torch.full((num_vertices, max(1, max(deg, default=1))), num_vertices, dtype=torch.long)
    for v, d in enumerate(deg):
        table[v, :d] = col[crow[v] : crow[v] + d]
    return table


class NeighbourTable(nn.Module):
    """``sum_{q in N(p)} x_q`` as row gathers over a padded neighbour table.

    A gather costs per row more than per byte, and the widest slots of the table are nearly
    empty (on the hemisphere 25 vertices have more than 6 neighbours, up to 9), so the slots
    that more than a sixteenth of the vertices fill are gathered for every vertex and the rest
    for the vertices that use them only, added to their rows (``ScatterND``).
    """

    table: Tensor  # buffers: (V, D0) neighbour indices of every vertex
    rows: Tensor | None  # (R,) the vertices with more than D0 neighbours
    rest: Tensor | None  # (R, D - D0) their other neighbours

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        v, d = table.shape
        used = (table < v).sum(0)  # vertices that fill each slot (padding: index V)
        full = max(1, sum(1 for k in range(d) if 16 * int(used[k]) > v))
        rows = (table[:, full:] < v).any(1).nonzero()[:, 0] if full < d else table.new_zeros(0)
        self.register_buffer("table", table[:, :full].contiguous())
        self.register_buffer("rows", rows if len(rows) else None)
        self.register_buffer("rest", table[rows, full:].contiguous() if len(rows) else None)

    def forward(self, x: Tensor) -> Tensor:
        """(V, B, C) vertex-major -> (V, B, C): one row gather and one add per neighbour slot
        (ONNX Runtime's ``ReduceSum`` over a middle axis of a (V, D, B, C) gather is several times
        slower, and the gather itself leaves the cache)."""
        padded = F.pad(x, (0, 0, 0, 0, 0, 1))
        out = padded[self.table[:, 0]]
        for k in range(1, self.table.shape[1]):
            out = out + padded[self.table[:, k]]
        if self.rows is not None and self.rest is not None:
            extra = out[self.rows]
            for k in range(self.rest.shape[1]):
                extra = extra + padded[self.rest[:, k]]
            out = out.index_put((self.rows,), extra)
        return out


def _graph_conv(conv: TrainedModule, x: Tensor, nsum: NeighbourTable) -> Tensor:
    """``GraphConv.forward_vertex_major`` with the neighbour sum as a gather."""
    if conv.in_channels < conv.out_channels:
        out = F.linear(x, conv.weight0, conv.bias)
        return out + F.linear(nsum(x), conv.weight1)
    both = F.linear(x, torch.cat([conv.weight0, conv.weight1], 0))
    out, h1 = both[..., : conv.out_channels], both[..., conv.out_channels :]
    if conv.bias is not None:
        out = out + conv.bias
    return out + nsum(h1)


def _bilinear(table: Tensor, size: tuple[int, ...], grid: Tensor) -> Tensor:
    """``grid_sample(..., mode="bilinear", padding_mode="border", align_corners=False)`` as four
    row gathers (ONNX Runtime's ``GridSample`` is several times slower at many channels).

    Args:
        table: (B, H W, C) a map's pixels, channels last (row-major).
        size: (H, W) of the map.
        grid: (B, N, 2) sampling locations.

    Returns:
        (B, N, C).
    """
    h, w = int(size[0]), int(size[1])
    scale = torch.tensor([w, h], dtype=grid.dtype)
    pos = torch.minimum(torch.clamp(((grid + 1.0) * scale - 1.0) * 0.5, min=0.0), scale - 1.0)
    lo = torch.floor(pos)
    w_hi = pos - lo
    w_lo = 1.0 - w_hi
    lo_i = lo.long()
    c = table.shape[-1]
    flat = table.reshape(-1, c)
    offset = (torch.arange(table.shape[0]) * (h * w))[:, None]
    terms = []
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = torch.clamp(lo_i[..., 0] + dx, 0, w - 1), torch.clamp(lo_i[..., 1] + dy, 0, h - 1)
            weight = (w_hi[..., 0] if dx else w_lo[..., 0]) * (w_hi[..., 1] if dy else w_lo[..., 1])
            terms.append(flat[offset + yi * w + xi] * weight[..., None])
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def _table(fmap: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H W, C)."""
    return fmap.permute(0, 2, 3, 1).reshape(fmap.shape[0], -1, fmap.shape[1])


def _sample(fmap: Tensor, grid: Tensor) -> Tensor:
    """(B, C, H, W), (B, V, 2) -> (V, B, C) bilinear samples (border, align_corners=False)."""
    return _bilinear(_table(fmap), tuple(fmap.shape[-2:]), grid).transpose(0, 1)


def _bilinear_stacked(table: Tensor, sizes: Sequence[tuple[int, ...]], grid: Tensor) -> Tensor:
    """``sum_i grid_sample(map_i, grid)`` (bilinear, border, ``align_corners=False``) of M maps
    stacked in one channels-last table: the taps of all maps computed at once, one gather.

    Args:
        table: (B, R, C) the maps' pixels, row-major, map after map (R = sum H_i W_i).
        sizes: (H_i, W_i) of each map.
        grid: (B, V, 2) sampling locations.

    Returns:
        (B, V, C).
    """
    starts = np.cumsum([0] + [h * w for h, w in sizes])[:-1].tolist()
    scale = torch.tensor([[w, h] for h, w in sizes], dtype=grid.dtype)  # (M, 2)
    pos = ((grid[:, :, None, :] + 1.0) * scale - 1.0) * 0.5  # (B, V, M, 2)
    pos = torch.minimum(torch.clamp(pos, min=0.0), scale - 1.0)
    lo = torch.floor(pos)
    w_hi = pos - lo
    w_lo = 1.0 - w_hi
    last = (scale - 1.0).long()
    lo_i = torch.minimum(torch.clamp(lo.long(), min=0), last)  # clamped again: NaN locations stay in bounds
    hi_i = torch.minimum(lo_i + 1, last)
    width = torch.tensor([w for _, w in sizes], dtype=torch.long)
    rows = table.shape[1]
    base = torch.tensor(starts, dtype=torch.long) + (torch.arange(table.shape[0]) * rows)[:, None, None]  # (B, 1, M)
    y0, y1 = lo_i[..., 1] * width, hi_i[..., 1] * width
    x0, x1 = lo_i[..., 0] + base, hi_i[..., 0] + base
    index = torch.stack([y0 + x0, y0 + x1, y1 + x0, y1 + x1], dim=-1)  # (B, V, M, 4)
    wx0, wx1, wy0, wy1 = w_lo[..., 0], w_hi[..., 0], w_lo[..., 1], w_hi[..., 1]
    weight = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], dim=-1)
    gathered = table.reshape(-1, table.shape[-1])[index.flatten(2)]  # (B, V, 4 M, C)
    return (weight.flatten(2)[:, :, None, :] @ gathered).squeeze(2)  # a MatMul: ~2x a Mul + ReduceSum


def knot_weights(n: int, knots: int) -> Tensor:
    """(2 N - 1, n) float32 with N = ``knots`` (a multiple of n): a map of n pixels sampled like
    ``grid_sample(..., mode="bilinear", padding_mode="border", align_corners=False)`` at the
    crop locations ``t = m / (2 N)``, m = 1 .. 2N-1 (t = (x + 1) / 2 from 0 to 1 across the
    crop). These hold the pixel centres ``(k + 1/2) / n`` of every map whose size divides N."""
    m = np.arange(1, 2 * knots, dtype=np.float64)
    u = np.clip(m * n / (2 * knots) - 0.5, 0.0, n - 1.0)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = u - lo
    out = np.zeros((2 * knots - 1, n))
    rows = np.arange(2 * knots - 1)
    np.add.at(out, (rows, lo), 1.0 - frac)
    np.add.at(out, (rows, hi), frac)
    return torch.from_numpy(out.astype(np.float32))


def union_pays(sizes: Sequence[tuple[int, int]], num_vertices: int) -> bool:
    """Whether sampling M maps from their union table (:func:`_union_table`, four taps a vertex)
    is cheaper than their own taps (:func:`_bilinear_stacked`, 4 M a vertex): when the stacked
    gather would read at least twice as many rows as the union table has (measured on the
    shipped model: its two finest levels, 1,821 and 7,001 vertices, not 141 and 491)."""
    ny = int(np.lcm.reduce([h for h, _ in sizes]))
    nx = int(np.lcm.reduce([w for _, w in sizes]))
    return len(sizes) > 1 and 4 * len(sizes) * num_vertices >= 2 * (2 * ny - 1) * (2 * nx - 1)


def _union_table(tables: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, tuple[int, int]]:
    """The sum of the maps' bilinear interpolants on the grid :func:`knot_weights` describes,
    ``(B, ky, kx, C)`` with ``(ky, kx) = (2 Ny - 1, 2 Nx - 1)``: each map resampled there by a
    constant matrix per axis (rows first, then the columns of all maps in one ``MatMul``).

    Args:
        tables: (B, H_i, W_i, C) the maps, channels last.
        sizes: (H_i, W_i) of each map.
    """
    ny = int(np.lcm.reduce([h for h, _ in sizes]))
    nx = int(np.lcm.reduce([w for _, w in sizes]))
    c = int(tables[0].shape[-1])
    rows = [(knot_weights(h, ny) @ t.reshape(-1, h, w * c)).reshape(-1, 2 * ny - 1, w, c) for t, (h, w) in zip(tables, sizes)]
    columns = torch.cat([knot_weights(w, nx) for _, w in sizes], 1)
    return columns @ torch.cat(rows, 2), (2 * ny - 1, 2 * nx - 1)


def _bilinear_union(tables: Sequence[Tensor], sizes: Sequence[tuple[int, int]], grid: Tensor) -> Tensor:
    """``sum_i grid_sample(map_i, grid)`` (bilinear, border, ``align_corners=False``) from one
    table: the maps' summed interpolants at the union of their pixel centres (:func:`_union_table`).
    Between two neighbouring knots of that grid every map is linear along each axis, so their
    sum is bilinear in each cell and four taps in the union table give it exactly (up to
    rounding), where each map's own taps take four a map.

    Args:
        tables: (B, H_i, W_i, C) the maps, channels last.
        sizes: (H_i, W_i) of each map.
        grid: (B, V, 2) sampling locations.

    Returns:
        (B V, C), batch-major.
    """
    table, (ky, kx) = _union_table(tables, sizes)
    scale = torch.tensor([(kx + 1) // 2, (ky + 1) // 2], dtype=grid.dtype)
    last = torch.tensor([kx - 1, ky - 1], dtype=grid.dtype)
    pos = torch.minimum(torch.clamp((grid + 1.0) * scale - 1.0, min=0.0), last)  # knot m at t = m / (2 N)
    lo = torch.floor(pos)
    w_hi = pos - lo
    w_lo = 1.0 - w_hi
    lo_i = torch.minimum(torch.clamp(lo.long(), min=0), last.long())  # clamped again: NaN locations stay in bounds
    hi_i = torch.minimum(lo_i + 1, last.long())
    base = (torch.arange(table.shape[0]) * (ky * kx))[:, None]
    y0, y1 = (lo_i[..., 1] * kx + base).reshape(-1), (hi_i[..., 1] * kx + base).reshape(-1)
    x0, x1 = lo_i[..., 0].reshape(-1), hi_i[..., 0].reshape(-1)
    wx0, wx1 = w_lo[..., 0].reshape(-1, 1), w_hi[..., 0].reshape(-1, 1)
    wy0, wy1 = w_lo[..., 1].reshape(-1, 1), w_hi[..., 1].reshape(-1, 1)
    flat = table.reshape(-1, table.shape[-1])
    # one row gather per tap: a (4, B V, C) gather summed by ReduceSum, or a batched MatMul, is slower
    return (flat[y0 + x0] * wx0 + flat[y0 + x1] * wx1) * wy0 + (flat[y1 + x0] * wx0 + flat[y1 + x1] * wx1) * wy1


def _pool_conv(pc: TrainedModule, maps: Sequence[Tensor], grid: Tensor, extra: Tensor, nsum: NeighbourTable) -> Tensor:
    """``PerceptualGraphConv.forward``: every map projected by its part of W0 and W1 first (a 1x1
    convolution, the ``pre`` order: the sum is the same in either order), then all maps sampled
    at once: from their union table on fine levels (:func:`union_pays`), else in one stacked
    gather."""
    c_img = sum(pc.image_channels)
    h = pc.out_channels
    tables = []
    for i, fmap in enumerate(maps):
        w0, w1 = pc._image_weights(i)
        tables.append(F.linear(_table(fmap), torch.cat([w0, w1], 0)))
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    b, v = grid.shape[:2]
    if union_pays(sizes, int(v)):
        grids = [t.reshape(-1, hw[0], hw[1], 2 * h) for t, hw in zip(tables, sizes)]
        sampled = _bilinear_union(grids, sizes, grid).reshape(b, v, 2 * h).transpose(0, 1)
    else:
        sampled = _bilinear_stacked(torch.cat(tables, 1), sizes, grid).transpose(0, 1)
    bias = torch.cat([pc.bias, torch.zeros_like(pc.bias)])
    both = F.linear(extra, torch.cat([pc.weight0[:, c_img:], pc.weight1[:, c_img:]], 0), bias) + sampled
    return both[..., :h] + nsum(both[..., h:])


def _deform_block(block: TrainedModule, maps: Sequence[Tensor], grid: Tensor, extra: Tensor, nsum: NeighbourTable) -> tuple[Tensor, Tensor]:
    """``DeformBlock.forward``: (out (V, B, 3), hidden (V, B, H))."""
    x = torch.relu(_pool_conv(block.pool_conv, maps, grid, extra, nsum))
    g = block.gresnet
    for conv1, conv2 in g.pairs:
        y = torch.relu(_graph_conv(conv1, x, nsum))
        y = torch.relu(_graph_conv(conv2, y, nsum))
        x = 0.5 * (x + y)
    return _graph_conv(g.conv_out, x, nsum), x


def _unpool(unpool: TrainedModule, x: Tensor, dim: int) -> Tensor:
    """``Unpool.forward``: the new vertices ``a + t (b - a)`` appended along ``dim``."""
    edges = unpool.edges
    a = x.index_select(dim, edges[:, 0])
    b = x.index_select(dim, edges[:, 1])
    shape = [1] * x.ndim
    shape[dim] = -1
    t = unpool.positions().detach().to(x.dtype).view(shape)
    return torch.cat([x, a + t * (b - a)], dim=dim)


def carry_matrix(unpools: Sequence[TrainedModule], num_vertices: int) -> Tensor:
    """(V_last, V) float32: the unpoolings ``unpools`` (coarse to fine) applied one after the other
    to a per-vertex quantity of ``num_vertices`` vertices, as one matrix (each unpooling is linear:
    a new vertex is ``a + t (b - a)`` of its edge's ends, ``t`` fixed once trained)."""
    x = torch.eye(num_vertices)
    for unpool in unpools:
        x = _unpool(unpool, x, 0)
    return x


def sparse_rows(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``(index (R, K) int64, weight (R, K) float32)`` with ``matrix[r] @ x = sum_k weight[r, k]
    x[index[r, k]]``, K the most non-zeros of a row (shorter rows padded with weight 0)."""
    nz = matrix != 0
    k = max(1, int(nz.sum(1).max()))
    order = torch.argsort((~nz).to(torch.int8), dim=1, stable=True)[:, :k]  # the non-zero columns first
    return order.contiguous(), torch.gather(matrix, 1, order).float().contiguous()


def resize_matrix(src: int, dst: int) -> Tensor:
    """(dst, src) float32: ``interpolate(..., mode="bilinear", align_corners=False,
    antialias=True)`` along one axis as a matrix (the filter is separable and linear)."""
    # a basis image per input row, 8 columns wide: with a single column PyTorch's CPU kernel takes
    # another path whose weights differ from the ones it uses on real images
    eye = torch.eye(src, dtype=torch.float32)[:, None, :, None].expand(src, 1, src, 8)
    cols = F.interpolate(eye.contiguous(), size=(dst, 8), mode="bilinear", align_corners=False, antialias=True)
    return cols[:, 0, :, 0].t().contiguous()


class BandedResize(nn.Module):
    """``matrix @ x`` along the second last axis of ``x``, for a resize matrix (dst, src): its rows
    come in ``g = gcd(dst, src)`` blocks of ``dst / g`` that read a window of ``width`` input rows
    starting every ``src / g`` rows, so one batched ``MatMul`` of the blocks with the windows does
    the work of the dense product on ~``src / width`` times fewer multiply-adds (the filter has a
    few taps). A matrix without that structure is kept dense."""

    blocks: Tensor  # buffers: (g, dst / g, width), or the dense (dst, src) matrix
    dense: Tensor

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        dst, src = matrix.shape
        g = math.gcd(dst, src)
        self.rows_out, self.step, self.groups, self.src = dst // g, src // g, g, src
        nonzero = matrix != 0
        spans = [nonzero[b * self.rows_out : (b + 1) * self.rows_out].any(0).nonzero()[:, 0] for b in range(g)]
        self.lo = min(int(c.min()) - self.step * b for b, c in enumerate(spans))
        self.width = max(int(c.max()) - self.step * b for b, c in enumerate(spans)) - self.lo + 1
        padded = F.pad(matrix, (-self.lo, self.step * (g + 2)))
        blocks = torch.stack([padded[b * self.rows_out : (b + 1) * self.rows_out, self.step * b : self.step * b + self.width] for b in range(g)])
        self.banded = g > 1 and self.width <= 2 * self.step
        self.register_buffer("blocks", blocks if self.banded else None)
        self.register_buffer("dense", None if self.banded else matrix.clone())

    def forward(self, x: Tensor) -> Tensor:
        if not self.banded:
            return self.dense @ x
        n = self.groups + 1  # row blocks after padding: every window lies in a block and the next
        xp = F.pad(x, (0, 0, -self.lo, n * self.step - self.src + self.lo))
        xb = xp.reshape(*x.shape[:-2], n, self.step, x.shape[-1])
        window = torch.cat([xb[..., :-1, :, :], xb[..., 1:, : self.width - self.step, :]], -2)
        return (self.blocks @ window).reshape(*x.shape[:-2], -1, x.shape[-1])


def _resize(image: Tensor, resize: BandedResize | None) -> Tensor:
    """(B, C, S, S) -> (B, C, s, s) with :func:`resize_matrix` ``(s, S)`` on both axes."""
    if resize is None:
        return image
    return resize(resize(image).transpose(-1, -2)).transpose(-1, -2)


def _grid_pool(fmap: Tensor, cells: int) -> Tensor:
    """``adaptive_avg_pool2d(fmap, cells).flatten(1)`` as slices of the map's fixed size (the
    exporter cannot size an adaptive pool on a map whose size it does not know)."""
    h, w = (int(n) for n in fmap.shape[-2:])
    bins = [[(i * n // cells, -(-(i + 1) * n // cells)) for i in range(cells)] for n in (h, w)]
    parts = [fmap[:, :, y0:y1, x0:x1].mean((2, 3)) for y0, y1 in bins[0] for x0, x1 in bins[1]]
    return torch.stack(parts, dim=2).flatten(1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over the last axis (3)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=-1)


def _inv2(m: Tensor) -> Tensor:
    """(B, 2, 2) inverses in closed form."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - b * c
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], 1) / det[:, None, None]


def _nearest_scaled_rotation(m: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2, 3) -> (mean singular value (B,), ``U V^T`` (B, 2, 3)) of ``m = U S V^T``, in closed
    form: ``U V^T = (m m^T)^(-1/2) m`` and ``s1 + s2 = sqrt(tr A + 2 sqrt(det A))`` for
    ``A = m m^T`` (``sqrt(A) = (A + sqrt(det A) I) / (s1 + s2)``)."""
    a = m @ m.transpose(1, 2)
    det = (a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]).clamp(min=0.0)
    sd = torch.sqrt(det)
    st = torch.sqrt(a[:, 0, 0] + a[:, 1, 1] + 2.0 * sd)
    eye = torch.eye(2, dtype=m.dtype)
    root = (a + sd[:, None, None] * eye) / st[:, None, None]
    return 0.5 * st, _inv2(root) @ m


def _rotation_6d(d6: Tensor) -> Tensor:
    """``facerecon.model.face_prior.rotation_6d`` with the cross product written out."""
    a1 = d6[:, 0:3] + torch.tensor([1.0, 0.0, 0.0])
    a2 = d6[:, 3:6] + torch.tensor([0.0, 1.0, 0.0])
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, _cross(b1, b2)], dim=1)


def _affine_grid(theta: Tensor, size: int) -> Tensor:
    """``affine_grid(theta, [B, C, size, size], align_corners=False)`` as (B, size * size, 2)."""
    lin = (torch.arange(size, dtype=torch.float32) * 2.0 + 1.0) / size - 1.0
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    base = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, size * size, 3)
    return base @ theta.transpose(1, 2)


def _vertex_face_table(faces: Tensor, num_vertices: int) -> Tensor:
    """(V, D) int64: the faces of each vertex, padded with F (a zero row appended)."""
    faces = faces.cpu()
    lists: list[list[int]] = [[] for _ in range(num_vertices)]
    for f, tri in enumerate(faces.tolist()):
        for v in tri:
            lists[v].append(f)
    width = max(1, max(len(x) for x in lists))
    table = torch.full((num_vertices, width), faces.shape[0], dtype=torch.long)
    for v, fs in enumerate(lists):
        table[v, : len(fs)] = torch.tensor(fs, dtype=torch.long)
    return table


# ------------------------------------------------------------------------------ the network
class ExportNetwork(nn.Module):
    """A trained facerecon network (``FaceReconNet`` or ``PriorFaceNet``, graph or spiral decoder)
    in export form: the same function, written with operations ONNX Runtime runs well.

    ``forward(crops (B, S, S, 3) uint8[, landmarks5 (B, 5, 2)])`` returns a tuple in
    :attr:`output_names` order.
    """

    net: TrainedModule
    carry_index: Tensor | None  # (K, V_last): the carry_matrix's non-zeros, row by row (sparse_rows)
    carry_weight: Tensor | None  # (K, V_last)
    basis_cm: Tensor | None  # (K, 3 V_last) the prior's modes, coordinate-major
    mean_cm: Tensor | None  # (3 V_last,)
    landmark_weights_t: Tensor | None  # (V_last, 68)
    resize: BandedResize | None
    landmark_weights: Tensor | None
    pinv: Tensor
    onet_resize: BandedResize | None
    normal_faces: Tensor
    vertex_faces: Tensor

    def __init__(self, network: TrainedModule, crop_size: int) -> None:
        super().__init__()
        self.net = network.eval()
        cfg = network.cfg
        self.prior = bool(cfg.starts_from_prior)
        self.spiral = self.prior and network.spiral_decoder is not None
        size = cfg.image_size or crop_size
        self.size = int(size)
        self.crop_size = int(crop_size)
        self.resize = BandedResize(resize_matrix(crop_size, size)) if size != crop_size else None
        from facerecon.model.backbones import fold_batch_norms

        self.stages = [fold_batch_norms(stage) for stage in network.backbone._stages]  # plain list: not state
        h = network.hierarchy
        self.nsums = nn.ModuleList(
            NeighbourTable(neighbour_table(getattr(h, f"adj_crow_{l}"), getattr(h, f"adj_col_{l}"), h.num_vertices(l)))
            for l in range(network.num_blocks)
        )
        head = network.landmark_head
        self.register_buffer("landmark_weights", None if head is None else torch.softmax(head.logits.detach().float(), dim=1))
        carry_index = carry_weight = basis_cm = mean_cm = landmark_weights_t = None
        if self.prior and not self.spiral and len(network.blocks) < network.num_blocks:
            carry = carry_matrix(network.unpools[len(network.blocks) - 1 :], h.num_vertices(len(network.blocks) - 1))
            index, weight = sparse_rows(carry)
            carry_index, carry_weight = index.T.contiguous(), weight.T.contiguous()  # (K, V_last)
            k = network.prior_basis.shape[0]
            basis_cm = network.prior_basis.detach().float().permute(0, 2, 1).reshape(k, -1).contiguous()
            mean_cm = network.prior_mean.detach().float().T.reshape(-1).contiguous()
            if network.landmark_head is not None:
                landmark_weights_t = torch.softmax(network.landmark_head.logits.detach().float(), dim=1).T.contiguous()
        # the coordinate-major forms of the finest level (_carried_forward)
        self.register_buffer("carry_index", carry_index)
        self.register_buffer("carry_weight", carry_weight)
        self.register_buffer("basis_cm", basis_cm)
        self.register_buffer("mean_cm", mean_cm)
        self.register_buffer("landmark_weights_t", landmark_weights_t)
        if self.prior:
            self._init_prior(network)
        if self.spiral:
            last = network.num_blocks - 1
            self.register_buffer("normal_faces", h.faces(last).clone())
            self.register_buffer("vertex_faces", _vertex_face_table(h.faces(last), h.num_vertices(last)))
        self.output_names = ["vertices"] + (["landmarks"] if head is not None else [])
        self.output_names += ["colors"] if getattr(network, "colour_head", None) is not None else []
        self.output_names += [f"stage{k}" for k in range(len(self.stage_faces()))]

    def _init_prior(self, net: TrainedModule) -> None:
        five3d = net.prior_five3d.float()
        if not bool(five3d.abs().sum() > 0):
            raise InputError("this model v2 network has no face prior yet (it is set when training starts): nothing to export")
        xc = five3d - five3d.mean(0, keepdim=True)
        self.register_buffer("pinv", torch.linalg.solve(xc.T @ xc, xc.T))  # as fit_scaled_orthographic
        self.aligned = bool(net.cfg.prior.five_point and bool(net.prior_five_ref.abs().sum() > 0))
        self.onet_resize = BandedResize(resize_matrix(self.size, 48)) if net.onet is not None else None

    @property
    def input_names(self) -> list[str]:
        return ["crops", "landmarks5"] if self.prior else ["crops"]

    def stage_faces(self) -> list[Tensor]:
        """The triangles of each ``stage`` output."""
        h, last = self.net.hierarchy, self.net.num_blocks - 1
        if self.spiral:
            return [h.faces(last), h.faces(last)]
        return [h.faces(l) for l in range(self.net.num_blocks)]

    def forward(self, crops: Tensor, landmarks5: Tensor | None = None) -> tuple[Tensor, ...]:
        image = crops.permute(0, 3, 1, 2).float() / 255.0
        image = _resize(image, self.resize)
        if self.prior:
            if landmarks5 is None:
                raise InputError("a model v2 network takes MTCNN's five points (landmarks5)")
            stages, landmarks, colors = self._prior_forward(image, landmarks5)
        else:
            stages, landmarks, colors = self._template_forward(image)
        out = [stages[-1]] + ([landmarks] if landmarks is not None else []) + ([colors] if colors is not None else [])
        return tuple(out + stages)

    def _backbone(self, image: Tensor) -> list[Tensor]:
        """``Backbone.forward`` on the stages with their batch norms folded into the convolutions."""
        x = self.net.backbone.preprocess(image)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def _nsum(self, level: int) -> NeighbourTable:
        """The neighbour sum of mesh level ``level``."""
        return cast(NeighbourTable, self.nsums[level])

    def _landmarks(self, vertices: Tensor) -> Tensor | None:
        return None if self.landmark_weights is None else self.landmark_weights @ vertices

    # -------------------------------------------------------------------- model v1
    def _template_forward(self, image: Tensor) -> tuple[list[Tensor], Tensor | None, Tensor | None]:
        net = self.net
        maps = self._backbone(image)
        coords = net.initial_coords().unsqueeze(0).expand(image.shape[0], -1, -1)
        feats: Tensor | None = None
        stages = []
        for level, block in enumerate(net.blocks):
            if level > 0 and feats is not None:
                coords = _unpool(net.unpools[level - 1], coords, 1)
                feats = _unpool(net.unpools[level - 1], feats, 0)
            extra = coords.transpose(0, 1)
            if feats is not None:
                extra = torch.cat([extra, feats], dim=2)
            out, feats = _deform_block(block, maps, net._project(coords), extra, self._nsum(level))
            out = out.transpose(0, 1)
            coords = coords + out if net.cfg.pixel2mesh.coord_mode == "offset" else out
            stages.append(coords)
        colors = None
        if net.colour_head is not None and feats is not None:
            nsum = self._nsum(net.num_blocks - 1)
            x = torch.relu(_graph_conv(net.colour_head.conv1, feats, nsum))
            colors = torch.sigmoid(_graph_conv(net.colour_head.conv2, x, nsum)).transpose(0, 1)
        return stages, self._landmarks(coords), colors

    # -------------------------------------------------------------------- model v2
    def _align(self, five: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``PriorFaceNet._align`` (``face_prior.similarity_2d``) as a few matrix products:
        ``(A (B, 2, 2), t (B, 2), aligned five points (B, 5, 2), to_crop (B, 3, 4))`` with
        ``aligned = crop @ A.T + t`` and ``to_crop`` the inverse map of (x, y, z) (depth divided by
        the similarity's scale) as one affine matrix. In 2-D the least-squares similarity is one
        complex number ``a + i b = sum(conj(z_s) z_t) / sum(|z_s|^2)`` over the centred points,
        both sums products with constants of the reference."""
        ref = self.net.prior_five_ref.float()
        ok = torch.isfinite(five).all(-1).all(-1)
        five = torch.where(ok[:, None, None], five, ref[None])
        if self.aligned:
            mu_t = ref.mean(0)
            xt = ref - mu_t
            pair = torch.stack([xt.reshape(-1), torch.stack([xt[:, 1], -xt[:, 0]], 1).reshape(-1)], 1)  # (10, 2)
            mu_s = five.mean(1)
            xs = (five - mu_s[:, None, :]).reshape(-1, 10)
            ab = (xs @ pair) / (xs * xs).sum(1, keepdim=True).clamp(min=1e-12)  # (a, b)
            a = (ab @ torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 1.0, 0.0]])).reshape(-1, 2, 2)
            t = mu_t - (a @ mu_s[:, :, None]).squeeze(-1)
            norm2 = (ab * ab).sum(1, keepdim=True)
            # the inverse (a, b) / |.|^2 and its translation; depth / |(a, b)|
            inv = torch.cat([ab / norm2, norm2.rsqrt()], 1) @ torch.tensor(
                [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 8 + [1.0]]
            )
            m3 = inv.reshape(-1, 3, 3)
            to_crop = torch.cat([m3, -(m3[:, :, :2] @ t[:, :, None])], 2)
        else:
            a = torch.zeros_like(five[:, :2, :]) + torch.eye(2)
            t = torch.zeros_like(five[:, 0, :])
            to_crop = torch.zeros_like(five[:, :3, :4]) + torch.eye(3, 4)
        return a, t, five @ a.transpose(1, 2) + t[:, None, :], to_crop

    def _pose(self, five_fit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``fit_scaled_orthographic(prior_five3d, five_fit)`` without solves or SVDs."""
        x = self.net.prior_five3d.float()
        yc = five_fit - five_fit.mean(1, keepdim=True)
        m = (self.pinv @ yc).transpose(1, 2)
        s, r12 = _nearest_scaled_rotation(m)
        rot = torch.cat([r12, _cross(r12[:, 0], r12[:, 1])[:, None, :]], dim=1)
        t = five_fit.mean(1) - s[:, None] * (x.mean(0) @ r12.transpose(1, 2))
        return s, rot, t

    def _prior_forward(self, image: Tensor, landmarks5: Tensor) -> tuple[list[Tensor], Tensor | None, None]:
        net = self.net
        size = self.size
        a, t, five_al, to_crop3 = self._align(landmarks5.float())
        if self.aligned:
            theta = to_crop3[:, :2, [0, 1, 3]]  # aligned -> crop
            # ONNX Runtime's GridSample: ~8x the four row gathers of a 3-channel image (it is the
            # pooling's many channels at few points that it runs slowly)
            grid = _affine_grid(theta, size).reshape(-1, size, size, 2)
            image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        maps = self._backbone(image)
        g = _grid_pool(maps[-1], 4) if net.cfg.prior.head_pool == "grid" else maps[-1].mean((2, 3))
        ref = net.prior_five_ref.float()
        parts = [g, (five_al - ref[None]).reshape(-1, 10) * 10.0]
        if net.onet is not None:
            parts.append(net.onet.features((_resize(image, self.onet_resize) * 255.0 - 127.5) * 0.0078125))
        h = net.head(torch.cat(parts, dim=1))
        out = net.head_out(h)
        d6, dlog_s, dt, coeff = out[:, :6], out[:, 6], out[:, 7:10], out[:, 10:]
        five_fit = five_al if self.aligned else torch.zeros_like(five_al) + ref[None]
        s0, r0, t0 = self._pose(five_fit)
        rot = r0 @ _rotation_6d(0.1 * d6)
        s = s0 * torch.exp(0.1 * dlog_s)
        lm_z = s * (net.prior_landmarks.mean(0) @ rot.transpose(1, 2))[:, 2]
        shift = torch.cat([t0 + 0.1 * dt[:, :2], (0.1 * dt[:, 2] - lm_z)[:, None]], dim=1)
        if self.carry_index is not None:
            return self._carried_forward(coeff, s[:, None, None] * rot, shift, to_crop3, maps)
        k = net.prior_basis.shape[0]
        shape = net.prior_mean[None] + ((coeff * net.prior_std[None]) @ net.prior_basis.reshape(k, -1)).reshape(coeff.shape[0], -1, 3)
        base = s[:, None, None] * shape @ rot.transpose(1, 2)
        base = base + shift[:, None, :]
        linear, shift3 = to_crop3[:, :, :3].transpose(1, 2), to_crop3[:, None, :, 3]

        def to_crop(x: Tensor) -> Tensor:
            return x @ linear + shift3

        if self.spiral:
            stages = [to_crop(c) for c in self._spiral(base, h, image, maps)]
        else:
            stages = [to_crop(c) for c in self._graph_blocks(base, maps)]
        return stages, self._landmarks(stages[-1]), None

    def _graph_blocks(self, base: Tensor, maps: Sequence[Tensor]) -> list[Tensor]:
        """The graph blocks on the base face (B, V, 3): each level's refined face, aligned frame."""
        net = self.net
        residual: Tensor | None = None
        feats: Tensor | None = None
        out = []
        for level, block in enumerate(net.blocks):
            base_l = base[:, : net.hierarchy.num_vertices(level)]
            if residual is None or feats is None:
                coords_in = base_l
            else:
                residual = _unpool(net.unpools[level - 1], residual, 1)
                feats = _unpool(net.unpools[level - 1], feats, 0)
                coords_in = base_l + residual
            extra = coords_in.transpose(0, 1)
            if feats is not None:
                extra = torch.cat([extra, feats], dim=2)
            delta, feats = _deform_block(block, maps, coords_in[..., :2], extra, self._nsum(level))
            delta = delta.transpose(0, 1)
            residual = delta if residual is None else residual + delta
            out.append(base_l + residual)
        return out

    def _carried_forward(self, coeff: Tensor, rot: Tensor, shift: Tensor, to_crop3: Tensor, maps: Sequence[Tensor]) -> tuple[list[Tensor], Tensor | None, None]:
        """Model v2 with graph blocks on its coarse levels only (``model.graph.refined_levels``):
        the finer levels are the base face plus the last block's residual carried by the
        unpoolings, ``sum_k w_k r[i_k]`` (:func:`sparse_rows` of :func:`carry_matrix`; the coarser
        levels are the finest one's first rows: each unpooling appends its new vertices).

        The finest level is computed coordinate-major, ``(B, 3, V)``: element-wise operations and
        products over a last axis of 3 run ~10x slower in ONNX Runtime than over one of V.

        Args:
            coeff: (B, K) shape coefficients; rot: (B, 3, 3) scaled rotation; shift: (B, 3);
            to_crop3: (B, 3, 4) aligned frame -> crop units; maps: the backbone's feature maps.
        """
        net = self.net
        assert self.carry_index is not None and self.carry_weight is not None and self.basis_cm is not None and self.mean_cm is not None
        b = coeff.shape[0]
        base_cm = rot @ (self.mean_cm + (coeff * net.prior_std[None]) @ self.basis_cm).reshape(b, 3, -1) + shift[:, :, None]
        linear, shift3 = to_crop3[:, :, :3], to_crop3[:, :, 3:]
        refined = len(net.blocks)
        coarse = self._graph_blocks(base_cm[:, :, : net.hierarchy.num_vertices(refined - 1)].transpose(1, 2), maps)
        residual = (coarse[-1] - base_cm[:, :, : coarse[-1].shape[1]].transpose(1, 2)).transpose(1, 2)  # (B, 3, V_r)
        carried = residual[:, :, self.carry_index[0]] * self.carry_weight[0]
        for k in range(1, self.carry_index.shape[0]):
            carried = carried + residual[:, :, self.carry_index[k]] * self.carry_weight[k]
        final_cm = linear @ (base_cm + carried) + shift3
        landmarks = None if self.landmark_weights_t is None else (final_cm @ self.landmark_weights_t).transpose(1, 2)
        final = final_cm.transpose(1, 2)
        stages = [c @ linear.transpose(1, 2) + shift3.transpose(1, 2) for c in coarse]
        stages += [final[:, : net.hierarchy.num_vertices(level)] for level in range(refined, net.num_blocks - 1)]
        return stages + [final], landmarks, None

    # -------------------------------------------------------------------- spiral decoder
    def _normals(self, coords: Tensor) -> Tensor:
        """``VertexNormals``: area-weighted unit vertex normals, (B, V, 3)."""
        f = self.normal_faces
        a, b, c = coords[:, f[:, 0]], coords[:, f[:, 1]], coords[:, f[:, 2]]
        fn = _cross(b - a, c - a)
        fn = torch.cat([fn, torch.zeros_like(fn[:, :1])], dim=1)
        vn = fn[:, self.vertex_faces].sum(2)
        return F.normalize(vn, dim=-1, eps=1e-12)

    def _spiral(self, base: Tensor, embedding: Tensor, image: Tensor, maps: Sequence[Tensor]) -> list[Tensor]:
        dec, ref = self.net.spiral_decoder, self.net.spiral_refine
        x = F.elu(dec.fc(embedding)).reshape(-1, dec.v0, dec.widths[0])
        for level, conv in enumerate(dec.convs):
            x = F.elu(_spiral_conv(conv, x))
            if level + 1 < dec.levels:
                x = _unpool(dec.unpools[level], x, 1)
        coarse = base + _spiral_conv(dec.head, x)
        xy = coarse[..., :2]
        rgb = _sample(image, xy).transpose(0, 1)
        x = F.elu(_spiral_conv(ref.down1, torch.cat([self._normals(coarse), rgb], dim=-1)))
        x = F.elu(_spiral_conv(ref.down2, x[:, : ref.n_mid]))
        x = F.elu(_spiral_conv(ref.down3, x[:, : ref.n_coarse]))
        x = x + ref.addf3(_sample(maps[-1], xy[:, : ref.n_coarse]).transpose(0, 1))
        x = F.elu(_spiral_conv(ref.up2, _unpool(ref.unpool_mid, x, 1)))
        x = x + ref.addf2(_sample(maps[-2], xy[:, : ref.n_mid]).transpose(0, 1))
        x = F.elu(_spiral_conv(ref.up1, _unpool(ref.unpool_fine, x, 1)))
        return [coarse, coarse + _spiral_conv(ref.out, x)]


def _spiral_conv(conv: TrainedModule, x: Tensor) -> Tensor:
    """``SpiralConv.forward``: the spiral's features gathered (zero row appended), one linear layer."""
    padded = F.pad(x, (0, 0, 0, 1))
    v, length = conv.indices.shape
    gathered = padded[:, conv.indices.reshape(-1)].reshape(-1, v, length * x.shape[-1])
    return conv.linear(gathered)


# ------------------------------------------------------------------------------ writing
def _npz_text(arrays: dict[str, np.ndarray]) -> str:
    buf = io.BytesIO()
    named: dict[str, Any] = dict(arrays)  # numpy's stub types the keywords as its allow_pickle flag
    np.savez_compressed(buf, **named)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def export_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | os.PathLike[str],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Trace ``module`` on ``args`` into an ONNX file at ``path`` (written atomically), with
    ``metadata`` as the model's metadata properties.

    Raises:
        DependencyError: the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ImportError:
        from facerecon.errors import DependencyError

        raise DependencyError("ONNX export needs the onnx package: pip install onnx") from None
    from facerecon.io_utils import atomic_write_bytes

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            # PRESERVE (the module is in eval mode): the exporter's own batch-norm fusion in EVAL mode
            # mis-wires batch norms whose parameters are identical (freshly initialised ones)
            module, args, buf, dynamo=False,  # type: ignore[arg-type]  # torch's annotation omits the file objects it writes to opset_version=OPSET, do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=list(input_names), output_names=list(output_names), dynamic_axes=dynamic,
        )
    model = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    atomic_write_bytes(path, model.SerializeToString(), durable=False)
    return path


def network_metadata(wrapper: ExportNetwork, landmark_reference: np.ndarray | None, source: str) -> dict[str, str]:
    """The JSON the runtime reads (:data:`META_KEY`): kind, sizes, stage triangles, landmark reference,
    mean face."""
    from facerecon import __version__

    net = wrapper.net
    arrays = {f"faces{k}": f.cpu().numpy().astype(np.int32) for k, f in enumerate(wrapper.stage_faces())}
    if landmark_reference is not None:
        arrays["landmark_reference"] = np.asarray(landmark_reference, dtype=np.float64)
    prior = getattr(net, "prior_mean", None)  # model v2's mean face: the colours of PNCC maps
    if prior is not None and float(prior.detach().abs().max()) > 0:
        arrays["reference_face"] = prior.detach().cpu().numpy().astype(np.float64)
    kind = "v2-spiral" if wrapper.spiral else "v2" if wrapper.prior else "v1"
    info = {
        "format": 1,
        "kind": kind,
        "crop_size": wrapper.crop_size,
        "inputs": wrapper.input_names,
        "outputs": wrapper.output_names,
        "backbone": net.cfg.backbone,
        "template": net.cfg.template,
        "facerecon_version": __version__,
        "source": source,
        "arrays": _npz_text(arrays),
    }
    return {META_KEY: json.dumps(info)}


def export_network(
    network: nn.Module,
    path: str | os.PathLike[str],
    landmark_reference: np.ndarray | None = None,
    crop_size: int | None = None,
    source: str = "",
) -> Path:
    """Export a built network (eval mode, on the CPU) as ONNX (see the module docstring)."""
    from facerecon.crop import CROP_SIZE

    crop_size = int(crop_size or CROP_SIZE)
    wrapper = ExportNetwork(network.cpu().eval(), crop_size)
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (2, crop_size, crop_size, 3), dtype=torch.uint8, generator=gen)
    args: tuple[Tensor, ...] = (crops,)
    if wrapper.prior:
        args = (crops, wrapper.net.prior_five_ref.detach().float().cpu()[None].repeat(2, 1, 1))
    dynamic = {name: {0: "batch"} for name in wrapper.input_names + wrapper.output_names}
    meta = network_metadata(wrapper, landmark_reference, source)
    return export_module(wrapper, args, path, wrapper.input_names, wrapper.output_names, dynamic, meta)


def export_onnx(checkpoint: str | os.PathLike[str] | None, path: str | os.PathLike[str]) -> Path:
    """Export the network of ``checkpoint`` (default: the shipped model) to ``path`` (.onnx).

    Raises:
        InputError: the checkpoint cannot be read (see ``facerecon.engine.predict.load_model``).
    """
    from facerecon.engine.predict import load_model, resolve_checkpoint

    source = resolve_checkpoint(checkpoint)
    model = load_model(source, device="cpu")
    if model.config.model.kind == "facevision":
        raise InputError(
            f"{source}: a FaceVision-GAN checkpoint is not exported to ONNX (its mesh is made from the network's maps "
            "after the network); 'facerecon predict --checkpoint' runs it on the PyTorch runtime"
        )
    try:
        return export_network(model.network, path, model.landmark_reference, source=source.name)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:  # pragma: no cover
        raise FaceReconError(f"ONNX export of {source} failed: {' '.join(str(exc).split())[:300]}") from None


# ------------------------------------------------------------------------------ MTCNN
def _prelu(prelu: nn.PReLU, x: Tensor, general: str = "prelu") -> Tensor:
    """``prelu(x)`` (channels on axis 1) bit for bit, in element-wise operations ONNX Runtime runs
    fast (the dense layers' PReLUs; after a convolution, :class:`_BlockedPReLU` is faster still).

    Its ``PRelu`` kernel broadcasts the per-channel slope element by element: ~5x the time of a
    ``Mul`` and a ``Max``, which give ``max(x, a x)``, PReLU itself wherever every slope
    ``a <= 1``. A layer with a slope above 1 needs more: ``general="prelu"`` keeps ``PRelu``,
    ``"split"`` writes ``relu(x) + a min(x, 0)`` (one term is exactly 0; four passes over the
    tensor, faster than ``PRelu`` on R-Net's first layer, slower on P-Net's mosaic)."""
    a = prelu.weight.detach().reshape(1, -1, *([1] * (x.dim() - 2)))
    if bool((a <= 1).all()):
        return torch.maximum(x, x * a)
    if general == "split":
        return torch.relu(x) + torch.clamp(x, max=0.0) * a
    return prelu(x)


class _BlockedPReLU(nn.Module):
    """A PReLU after a convolution as ``x + (1 - a) relu(-x)``: the negation and the per-channel
    scale as 1x1 depthwise convolutions, the sum an addition. ONNX Runtime keeps all of these in
    its blocked channel layout (NCHWc, the layout of its fast convolutions), fusing the ``relu``
    and the addition into the convolutions, where ``PRelu`` or :func:`_prelu`'s element-wise
    operations make it reorder the tensor to plain NCHW and back around every layer: R-Net runs
    in about 0.7 of the time, O-Net in 0.8 (``benchmarks/bench_runtime.py``). Equal to PReLU
    within float32 rounding (``x`` itself where ``x >= 0``; ``x + (1 - a)(-x)`` where ``x < 0``),
    for slopes of either sign and above 1."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        a = prelu.weight.detach().reshape(-1, 1, 1, 1)
        self.register_buffer("negate", -torch.ones_like(a))
        self.register_buffer("scale", 1.0 - a)

    negate: Tensor
    scale: Tensor

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return x + F.conv2d(torch.relu(F.conv2d(x, self.negate, groups=c)), self.scale, groups=c)


def _padded_channels(conv: nn.Conv2d, prelu: nn.PReLU, following: nn.Conv2d, multiple: int = 16) -> tuple[nn.Conv2d, nn.PReLU, nn.Conv2d]:
    """``conv``, ``prelu`` and the ``following`` convolution with ``conv``'s outputs padded by
    zero channels to a multiple of ``multiple`` (slope 0, zero weights into ``following``): the
    same function, and ONNX Runtime's blocked layout covers the max-pool between them (it takes
    channel counts in whole blocks of 8 or 16 only; R-Net's 28 channels are not)."""
    extra = -conv.out_channels % multiple
    if extra == 0:
        return conv, prelu, following
    n = conv.out_channels + extra
    assert conv.bias is not None and following.bias is not None  # nn.Conv2d's default: with bias
    # MTCNN's convolutions: square kernels, stride 1, no padding
    padded = nn.Conv2d(conv.in_channels, n, conv.kernel_size[0])
    after = nn.Conv2d(n, following.out_channels, following.kernel_size[0])
    assert (conv.stride, conv.padding, following.stride, following.padding) == ((1, 1), (0, 0), (1, 1), (0, 0))
    slopes = nn.PReLU(n)
    with torch.no_grad():
        padded.weight.zero_()
        padded.bias.zero_()  # type: ignore[union-attr]
        padded.weight[: conv.out_channels] = conv.weight
        padded.bias[: conv.out_channels] = conv.bias  # type: ignore[index]
        after.weight.zero_()
        after.weight[:, : conv.out_channels] = following.weight
        after.bias.copy_(following.bias)  # type: ignore[union-attr]
        slopes.weight.zero_()
        slopes.weight[: conv.out_channels] = prelu.weight
    return padded, slopes, after


class _PReLUExport(nn.Module):
    """A trained ``nn.PReLU`` as :func:`_prelu` writes it on a dense layer's ``(N, C)``, and after
    a convolution as :class:`_BlockedPReLU` (with ``blocked``) or :func:`_prelu` (its ``general``
    form)."""

    def __init__(self, prelu: nn.PReLU, blocked: bool = True, general: str = "prelu") -> None:
        super().__init__()
        self.prelu, self.general = prelu, general
        self.blocked = _BlockedPReLU(prelu) if blocked else None

    def forward(self, x: Tensor) -> Tensor:
        return self.blocked(x) if self.blocked is not None and x.dim() == 4 else _prelu(self.prelu, x, self.general)


def _sign_folded(conv: nn.Conv2d, prelu: nn.PReLU) -> tuple[nn.Conv2d, Tensor, Tensor]:
    """``conv`` with the channels whose PReLU slope exceeds 1 negated, their slopes and the signs:
    ``prelu(conv(x)) = sign * max(y, a y)`` with ``y`` the folded convolution's output, bit for
    bit (negating weights and bias negates every product and sum exactly; for a slope above 1,
    ``max(-v, -a v)`` is ``-prelu(v)``). One ``Mul``, a ``Max`` and a ``Mul`` instead of ONNX
    Runtime's ``PRelu`` kernel, which took 28 % of P-Net's time on a group photo's mosaic."""
    a = prelu.weight.detach()
    sign = torch.where(a > 1, -1.0, 1.0)
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight.mul_(sign.reshape(-1, 1, 1, 1))
        if folded.bias is not None:
            folded.bias.mul_(sign)
    return folded, a.reshape(1, -1, 1, 1), sign.reshape(1, -1, 1, 1)


class _PNetExport(nn.Module):
    """P-Net on an NHWC mosaic with its outside mask (see ``facerecon.mtcnn.PNet``).

    With ``blocked``: the first PReLU as :func:`_sign_folded` writes it (the mask and the
    ceil-mode pool after it run in plain NCHW anyway, and padding its 10 channels to 16 costs
    those more than the blocked layout gains); the second as :func:`_prelu` (the second
    convolution takes those 10 channels, so it runs in plain NCHW too); the third as
    :class:`_BlockedPReLU`. Without: every PReLU as :func:`_prelu`. (The face probability stays
    the softmax over two channels, 6 % of the time on a group photo: its sigmoid form rounds
    otherwise, and P-Net's scores near 1 then tie and order otherwise in the non-maximum
    suppression, which changed the face found on 6 of 1,809 photos.)"""

    def __init__(self, pnet: PNet, blocked: bool = True) -> None:
        super().__init__()
        self.pnet = pnet
        self.prelu2, self.prelu3 = _PReLUExport(pnet.prelu2, False), _PReLUExport(pnet.prelu3, blocked)
        #: the first convolution with sign-folded channels, its slopes and signs (``blocked``)
        self.folded = _sign_folded(pnet.conv1, pnet.prelu1) if blocked else None

    def forward(self, canvas: Tensor, outside: Tensor) -> tuple[Tensor, Tensor]:
        p = self.pnet
        x = canvas.permute(0, 3, 1, 2)
        if self.folded is not None:
            conv1, slope, sign = self.folded
            x = conv1(x)
            x = torch.maximum(x, x * slope) * sign
        else:
            x = _prelu(p.prelu1, p.conv1(x))
        x = torch.where(outside, torch.full_like(x[:1, :1, :1, :1], -1e9), x)
        x = p.pool1(x)
        x = self.prelu3(p.conv3(self.prelu2(p.conv2(x))))
        return p.conv4_2(x), torch.softmax(p.conv4_1(x), dim=1)


class _CropNetExport(nn.Module):
    """R-Net or O-Net on NHWC crops, their own ``forward`` with every PReLU as
    :class:`_PReLUExport` (a copy of the network; with ``blocked``, a first convolution whose
    channels are not in whole blocks of 16 padded, :func:`_padded_channels`; ``general``: the
    element-wise form per layer name where a slope exceeds 1)."""

    def __init__(self, net: nn.Module, blocked: bool = True, general: dict[str, str] | None = None) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)
        if blocked:
            layers = cast("tuple[nn.Conv2d, nn.PReLU, nn.Conv2d]", (self.net.conv1, self.net.prelu1, self.net.conv2))
            self.net.conv1, self.net.prelu1, self.net.conv2 = _padded_channels(*layers)
        for name, module in list(self.net.named_children()):
            if isinstance(module, nn.PReLU):
                setattr(self.net, name, _PReLUExport(module, blocked, (general or {}).get(name, "prelu")))

    def forward(self, crops: Tensor) -> tuple[Tensor, ...]:
        return self.net(crops.permute(0, 3, 1, 2))


def export_mtcnn(folder: str | os.PathLike[str], blocked: bool = True) -> dict[str, Path]:
    """MTCNN's three networks (facenet-pytorch's weights) as ``mtcnn_pnet.onnx``,
    ``mtcnn_rnet.onnx`` and ``mtcnn_onet.onnx`` in ``folder``
    (:data:`facerecon.runtime.session.MTCNN_FILES`): NHWC float32 inputs (MTCNN-normalised),
    dynamic sizes. ``blocked``: PReLUs after convolutions in ONNX Runtime's blocked layout
    (:class:`_BlockedPReLU`); False writes them element-wise (:func:`_prelu`), which
    ``benchmarks/bench_runtime.py`` times beside them."""
    from facerecon.mtcnn import load_nets

    nets = load_nets("cpu")
    folder = Path(folder)
    out = {}
    pnet = _PNetExport(nets.pnet, blocked)
    canvas = torch.zeros(1, 40, 50, 3)
    out["pnet"] = export_module(
        pnet, (canvas, torch.zeros(1, 1, 38, 48, dtype=torch.bool)), folder / MTCNN_FILES["pnet"], ["canvas", "outside"], ["reg", "prob"],
        {"canvas": {1: "h", 2: "w"}, "outside": {2: "h2", 3: "w2"}, "reg": {2: "ch", 3: "cw"}, "prob": {2: "ch", 3: "cw"}},
    )
    for name, size, outputs, net in (
        ("rnet", 24, ["reg", "prob"], _CropNetExport(nets.rnet, blocked, {"prelu1": "split"})),
        ("onet", 48, ["reg", "points", "prob"], _CropNetExport(nets.onet, blocked)),
    ):
        dynamic = {k: {0: "n"} for k in ["crops", *outputs]}
        out[name] = export_module(net, (torch.zeros(2, size, size, 3),), folder / MTCNN_FILES[name], ["crops"], outputs, dynamic)
    return out
