"""Perceptual feature pooling: project vertices onto the image, sample every feature map there.

Projection (see docs/conventions.md):

- ``orthographic`` (faces): a vertex's (x, y) in crop units *is* its sampling location; the crop
  spans [-1, 1] edge to edge, which is ``grid_sample(..., align_corners=False)``'s convention.
- ``pinhole`` (general objects, Pixel2Mesh): OpenCV axes, ``u = f x / z + c`` in pixels of a
  reference image of ``ref_size`` px (f = 248, c = 111.5 for 224 px), pixel centres at integers;
  the sampling location is ``(2 u + 1) / ref_size - 1``, independent of the feature map size.

Sampling is bilinear with ``align_corners=False`` and ``padding_mode="border"`` (a vertex that
leaves the crop reads the nearest edge feature instead of zeros).

``PerceptualGraphConv`` fuses pooling with the first graph convolution of a block. Because
sampling is linear, ``W sample(F, p) = sample(W F, p)``: the image part of W0 / W1 can be applied
either to the sampled features (``post``: V x C_i x 2H multiply-adds per map) or as a 1x1
convolution to the feature map before sampling (``pre``: H_i W_i x C_i x 2H, then only 2H channels
to sample). ``auto`` picks, per map and per block, the cheaper by that count.
"""

from __future__ import annotations

import itertools
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facerecon.errors import InputError
from facerecon.model.graph import NEIGHBOUR_GAIN, neighbour_sum

__all__ = [
    "project_orthographic",
    "project_pinhole",
    "project",
    "PerceptualGraphConv",
]

Projection = Literal["orthographic", "pinhole"]
ProjectMode = Literal["auto", "pre", "post"]


def project_orthographic(coords: Tensor) -> Tensor:
    """Sampling locations of crop-frame vertices.

    Args:
        coords: (B, V, 3) float, crop units (x right, y down, z away from the camera).

    Returns:
        (B, V, 2) float, ``grid_sample`` locations (align_corners=False): simply (x, y).
    """
    return coords[..., :2]


def project_pinhole(
    coords: Tensor, focal: float = 248.0, principal: float = 111.5, ref_size: float = 224.0, min_depth: float = 1e-3
) -> Tensor:
    """Pinhole projection (OpenCV axes) to ``grid_sample`` locations.

    Args:
        coords: (B, V, 3) float camera coordinates (x right, y down, z forward; any unit).
        focal: focal length in px of the ``ref_size`` image.
        principal: principal point in px (same for u and v), pixel centres at integers.
        ref_size: width = height in px of the image the intrinsics refer to.
        min_depth: z is clamped to at least this (same unit as coords) before dividing.

    Returns:
        (B, V, 2) float, ``(2 u + 1) / ref_size - 1`` with ``u = focal x / z + principal``.
    """
    z = coords[..., 2:3].clamp(min=min_depth)
    uv = focal * coords[..., :2] / z + principal
    return (2.0 * uv + 1.0) / ref_size - 1.0


def project(coords: Tensor, projection: Projection = "orthographic", **pinhole: float) -> Tensor:
    """Dispatch to ``project_orthographic`` / ``project_pinhole``; (B, V, 3) -> (B, V, 2)."""
    if projection == "orthographic":
        return project_orthographic(coords)
    if projection == "pinhole":
        return project_pinhole(coords, **pinhole)
    raise InputError(f"unknown projection {projection!r}: use 'orthographic' or 'pinhole'")


def _sample(fmap: Tensor, grid: Tensor) -> Tensor:
    """(B, C, H, W), (B, V, 2) -> (V, B, C) bilinear samples (vertex-major)."""
    # a contiguous (B, 1, V, 2) grid: a strided or (B, V, 1, 2) one sends PyTorch's CPU kernel
    # down its scalar per-point path (it took 45 % of the network's time)
    b, v = grid.shape[0], grid.shape[1]
    g = grid.to(fmap.dtype).reshape(b, 1, v, 2).contiguous()
    out = F.grid_sample(fmap, g, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(2).permute(2, 0, 1)


def bilinear_taps(grid: Tensor, sizes: Sequence[tuple[int, ...]], starts: Sequence[int], batch_stride: int) -> tuple[Tensor, Tensor]:
    """The four bilinear taps of every location in maps of several sizes at once.

    The same arithmetic as ``grid_sample(mode="bilinear", padding_mode="border",
    align_corners=False)`` on CPU: ``ix = ((x + 1) W - 1) / 2`` clipped to ``[0, W - 1]``, corner
    ``floor(ix)`` and the next one, weights ``(x0 + 1 - ix)`` and ``(ix - x0)`` (a tap past the
    last column gets weight 0 and is clamped onto it). Non-finite locations read a corner.

    Args:
        grid: (B, V, 2) float sampling locations.
        sizes: ``(H_i, W_i)`` of each of the M maps.
        starts: the first row of each map in a table that stacks the maps' pixels row-major.
        batch_stride: rows of that table per batch item.

    Returns:
        ``(index (B, V, M, 4) int64 rows: start_i + b * batch_stride + y W_i + x, weight (B, V, M, 4))``,
        the taps in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1).
    """
    b, v = grid.shape[:2]
    n, m = b * v, len(sizes)
    dev = grid.device
    # axis-major (2 axes, M maps, N locations) tensors: every element-wise op below runs over
    # contiguous rows of N (3x faster on one CPU thread than over the (B, V, M, 2) broadcast layout)
    g = torch.nan_to_num(grid, nan=-1.0, posinf=1.0, neginf=-1.0).reshape(n, 2).t().contiguous()[:, None, :]  # (2, 1, N)
    size = torch.tensor([[w for _, w in sizes], [h for h, _ in sizes]], dtype=grid.dtype, device=dev)[..., None]  # (2, M, 1)
    last = size - 1.0
    pos = ((g + 1.0) * size).sub_(1.0).mul_(0.5).clamp_min_(0.0)  # (2, M, N)
    torch.minimum(pos, last, out=pos)
    lo = pos.floor()
    w_lo, w_hi = (lo + 1.0).sub_(pos), pos.sub_(lo)
    lo_i = lo.long()
    hi_i = torch.minimum(lo_i + 1, last.long())
    width = size[0].long()  # (M, 1)
    base = torch.as_tensor(starts, dtype=torch.long, device=dev)[:, None]  # (M, 1)
    if b > 1:
        base = base + batch_stride * torch.arange(b, device=dev).repeat_interleave(v)[None, :]  # (M, N)
    rows = ((lo_i[1] * width, w_lo[1]), (hi_i[1] * width, w_hi[1]))  # (row offset, weight) of y0, y1
    cols = ((lo_i[0] + base, w_lo[0]), (hi_i[0] + base, w_hi[0]))  # (start + column, weight) of x0, x1
    index = torch.empty((4, m, n), dtype=torch.long, device=dev)  # taps (y0, x0), (y0, x1), (y1, x0), (y1, x1)
    weight = torch.empty((4, m, n), dtype=grid.dtype, device=dev)
    for k, ((y, wy), (x, wx)) in enumerate(itertools.product(rows, cols)):
        torch.add(y, x, out=index[k])
        torch.mul(wy, wx, out=weight[k])
    # bag-major for embedding_bag: (N, M, 4)
    index = index.permute(2, 1, 0).contiguous().view(b, v, m, 4)
    weight = weight.permute(2, 1, 0).contiguous().view(b, v, m, 4)
    return index, weight


def gather_taps(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Sum of bilinear samples of maps stacked in one channels-last table.

    Args:
        table: (R, C) the maps' pixels, row-major, stacked (as :func:`bilinear_taps`' ``starts``
            and ``batch_stride`` describe).
        index, weight: :func:`bilinear_taps`, (B, V, M, 4).

    Returns:
        (V, B, C): ``sum_i sample(map_i, location)`` per vertex: one ``embedding_bag`` for all maps
        and taps (the gather and the weighted sum, without a (B, V, M, 4, C) intermediate).
    """
    b, v, m, _ = index.shape
    out = F.embedding_bag(index.reshape(b * v, m * 4), table, per_sample_weights=weight.reshape(b * v, m * 4).to(table.dtype), mode="sum")
    return out.view(b, v, -1).transpose(0, 1)


def stack_tables(tables: Sequence[Tensor]) -> tuple[Tensor, list[int], int]:
    """M tables (B, R_i, C) -> one (B * R, C) table, the start row of each, R (rows per item)."""
    rows = [int(t.shape[1]) for t in tables]
    starts = [sum(rows[:i]) for i in range(len(rows))]
    table = torch.cat(list(tables), dim=1) if len(tables) > 1 else tables[0]
    return table.reshape(-1, table.shape[-1]), starts, sum(rows)


def sample_stacked(tables: Sequence[Tensor], sizes: Sequence[tuple[int, ...]], grid: Tensor) -> Tensor:
    """``sum_i sample(map_i, grid)`` of maps given as channels-last tables (B, H_i W_i, C) of
    sizes ``(H_i, W_i)``: :func:`stack_tables`, :func:`bilinear_taps` and :func:`gather_taps`.
    Returns (V, B, C)."""
    table, starts, rows = stack_tables(tables)
    index, weight = bilinear_taps(grid, sizes, starts, rows)
    return gather_taps(table, index, weight)


def _channels_last_table(fmap: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H W, C) (a view when the map is stored channels-last)."""
    b, c = fmap.shape[:2]
    return fmap.permute(0, 2, 3, 1).reshape(b, -1, c)


class PerceptualGraphConv(nn.Module):
    """The first graph convolution of a block, with perceptual pooling fused in.

    Input per vertex: ``[pooled image features (sum C_i) | extra (C_x)]`` where extra is the
    coordinates and, after the first block, the previous block's features. Output
    ``W0 f_p + sum_{q in N(p)} W1 f_q + b`` (pre-activation), like ``GraphConv``.
    """

    def __init__(
        self, image_channels: Sequence[int], extra_channels: int, out_channels: int, mode: ProjectMode = "auto"
    ) -> None:
        super().__init__()
        if mode not in ("auto", "pre", "post"):
            raise InputError(f"unknown projection mode {mode!r}: use 'auto', 'pre' or 'post'")
        self.image_channels = [int(c) for c in image_channels]
        self.extra_channels = extra_channels
        self.out_channels = out_channels
        self.mode: ProjectMode = mode
        total = sum(self.image_channels) + extra_channels
        self.weight0 = nn.Parameter(torch.empty(out_channels, total))
        self.weight1 = nn.Parameter(torch.empty(out_channels, total))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.xavier_uniform_(self.weight0)
        nn.init.xavier_uniform_(self.weight1, gain=NEIGHBOUR_GAIN)

    def _image_weights(self, i: int) -> tuple[Tensor, Tensor]:
        start = sum(self.image_channels[:i])
        stop = start + self.image_channels[i]
        return self.weight0[:, start:stop], self.weight1[:, start:stop]

    def use_pre(self, fmap_shape: Sequence[int], num_vertices: int) -> bool:
        """Whether projecting the map before sampling is cheaper (multiply-adds + samples)."""
        if self.mode != "auto":
            return self.mode == "pre"
        _, c, h, w = fmap_shape
        two_h = 2 * self.out_channels
        pre = h * w * c * two_h + 4 * num_vertices * two_h
        post = num_vertices * c * two_h + 4 * num_vertices * c
        return pre < post

    def forward(self, feature_maps: Sequence[Tensor], grid: Tensor, extra: Tensor, adjacency: Tensor) -> Tensor:
        """
        Args:
            feature_maps: list of (B, C_i, H_i, W_i) float, channels as ``image_channels``.
            grid: (B, V, 2) float sampling locations (see ``project``).
            extra: (V, B, C_x) float vertex-major extra features (coordinates first).
            adjacency: (V, V) sparse CSR 0/1 of this level.

        Returns:
            (V, B, out_channels) float, pre-activation.
        """
        if len(feature_maps) != len(self.image_channels):
            raise InputError(f"expected {len(self.image_channels)} feature maps, got {len(feature_maps)}")
        c_img = sum(self.image_channels)
        h = self.out_channels
        num_v = grid.shape[1]
        self_term = F.linear(extra, self.weight0[:, c_img:], self.bias)
        nbr_term = F.linear(extra, self.weight1[:, c_img:])
        if not torch.is_grad_enabled():
            return self._forward_gather(feature_maps, grid, self_term, nbr_term, adjacency)
        for i, fmap in enumerate(feature_maps):
            w0, w1 = self._image_weights(i)
            if self.use_pre(fmap.shape, num_v):
                both = torch.cat([w0, w1], 0)[:, :, None, None]
                sampled = _sample(F.conv2d(fmap, both.to(fmap.dtype)), grid)  # (V, B, 2H)
                self_term = self_term + sampled[..., :h]
                nbr_term = nbr_term + sampled[..., h:]
            else:
                sampled = _sample(fmap, grid)  # (V, B, C_i)
                self_term = self_term + F.linear(sampled, w0)
                nbr_term = nbr_term + F.linear(sampled, w1)
        return self_term + neighbour_sum(adjacency, nbr_term).to(self_term.dtype)

    def _forward_gather(
        self, feature_maps: Sequence[Tensor], grid: Tensor, self_term: Tensor, nbr_term: Tensor, adjacency: Tensor
    ) -> Tensor:
        """The same result without gradients, faster: the projected ("pre") maps stacked in one
        table and read by one ``embedding_bag`` for all maps and taps, instead of a 1x1
        convolution and a ``grid_sample`` each; the other maps ("post") by one each."""
        h = self.out_channels
        num_v = grid.shape[1]
        pre = [i for i, f in enumerate(feature_maps) if self.use_pre(f.shape, num_v)]
        if pre:
            tables = []
            for i in pre:
                w0, w1 = self._image_weights(i)
                fmap = feature_maps[i]
                tables.append(F.linear(_channels_last_table(fmap), torch.cat([w0, w1], 0).to(fmap.dtype)))
            sampled = sample_stacked(tables, [tuple(feature_maps[i].shape[-2:]) for i in pre], grid)  # (V, B, 2H)
            self_term = self_term + sampled[..., :h]
            nbr_term = nbr_term + sampled[..., h:]
        for i, fmap in enumerate(feature_maps):
            if i in pre:
                continue
            w0, w1 = self._image_weights(i)
            sampled = sample_stacked([_channels_last_table(fmap)], [tuple(fmap.shape[-2:])], grid)  # (V, B, C_i)
            self_term = self_term + F.linear(sampled, w0)
            nbr_term = nbr_term + F.linear(sampled, w1)
        return self_term + neighbour_sum(adjacency, nbr_term).to(self_term.dtype)

    def extra_repr(self) -> str:
        return f"image={self.image_channels}, extra={self.extra_channels}, out={self.out_channels}, mode={self.mode}"
