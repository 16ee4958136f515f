"""Perceptual pooling: projections land on the right pixels; pre- and post-sampling projection agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from facerecon.errors import InputError
from facerecon.model.graph import MeshHierarchy
from facerecon.model.pooling import (
    PerceptualGraphConv,
    project,
    project_orthographic,
    project_pinhole,
)


def _pooled(feature_maps: list[torch.Tensor], grid: torch.Tensor, mode: str = "post") -> torch.Tensor:
    """The image features ``PerceptualGraphConv`` pools at each vertex, read out through the layer
    itself: W0 the identity on the image channels, W1 and the bias zero, no extra channels.

    Returns:
        (B, V, sum C_i).
    """
    channels = [m.shape[1] for m in feature_maps]
    c, b, v = sum(channels), grid.shape[0], grid.shape[1]
    conv = PerceptualGraphConv(channels, 0, c, mode=mode)
    with torch.no_grad():
        conv.weight0.copy_(torch.eye(c))
        conv.weight1.zero_()
        conv.bias.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        no_edges = torch.sparse_csr_tensor(torch.zeros(v + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                           torch.zeros(0), (v, v), check_invariants=True)
    with torch.no_grad():
        return conv(feature_maps, grid, torch.zeros(v, b, 0), no_edges).transpose(0, 1)


def _dot_image(landmarks_xy: np.ndarray, size: int, values: np.ndarray) -> torch.Tensor:
    """A black (1, 3, size, size) image with a 3x3 patch of ``values[k]`` around each landmark.

    The pixel is found with docs/conventions.md directly: x_px = (x + 1) / 2 * size (continuous,
    pixel i spans [i, i + 1)), independently of grid_sample.
    """
    img = np.zeros((3, size, size), dtype=np.float32)
    for (x, y), val in zip(landmarks_xy, values):
        i, j = int(np.floor((y + 1) / 2 * size)), int(np.floor((x + 1) / 2 * size))
        img[:, i - 1 : i + 2, j - 1 : j + 2] = val[:, None, None]
    return torch.from_numpy(img)[None]


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_ground_truth_landmarks_land_on_image_landmarks(mode: str) -> None:
    rng = np.random.default_rng(0)
    # 68 landmarks spread like a face in the crop, at sub-pixel positions, 3D (z ignored)
    lm = np.concatenate([rng.uniform(-0.8, 0.8, (68, 2)), rng.uniform(-0.3, 0.3, (68, 1))], 1).astype(np.float32)
    size = 224
    # keep the dots apart so patches do not overlap
    cells = np.floor((lm[:, :2] + 1) / 2 * size).astype(int)
    keep = [k for k in range(68) if all(np.abs(cells[k] - cells[m]).max() > 6 for m in range(k))]
    lm = lm[keep]
    values = rng.uniform(0.2, 1.0, (len(lm), 3)).astype(np.float32)
    image = _dot_image(lm[:, :2], size, values)
    # features = the image itself, at full and at double resolution (nearest upsampling)
    maps = [image, F.interpolate(image, scale_factor=2, mode="nearest")]
    grid = project_orthographic(torch.from_numpy(lm)[None])
    pooled = _pooled(maps, grid, mode)  # (1, K, 6)
    np.testing.assert_allclose(pooled[0, :, :3].numpy(), values, atol=1e-5)
    np.testing.assert_allclose(pooled[0, :, 3:].numpy(), values, atol=1e-5)
    # three pixels to the right of every dot the image is black (dots are > 6 px apart)
    off = torch.from_numpy(lm)[None].clone()
    off[..., 0] += 3 * 2.0 / size
    outside = _pooled([image], project_orthographic(off), mode)
    assert torch.all(outside.abs() < 1e-6)


def test_pinhole_projection_hand_values() -> None:
    pts = torch.tensor([[[0.0, 0.0, 1.0], [0.1, -0.05, 0.8]]])
    g = project_pinhole(pts, focal=248.0, principal=111.5, ref_size=224.0)
    u = 248 * 0.1 / 0.8 + 111.5
    v = 248 * -0.05 / 0.8 + 111.5
    torch.testing.assert_close(g[0, 0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(g[0, 1], torch.tensor([(2 * u + 1) / 224 - 1, (2 * v + 1) / 224 - 1]))


def test_pinhole_lands_on_opencv_pixel() -> None:
    # OpenCV: pixel (row 60, col 142) has its centre at u = 142, v = 60
    img = torch.zeros(1, 1, 224, 224)
    img[0, 0, 60, 142] = 1.0
    z = 0.9
    pt = torch.tensor([[[(142 - 111.5) * z / 248, (60 - 111.5) * z / 248, z]]])
    out = _pooled([img], project(pt, "pinhole"))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(1.0))
    with pytest.raises(InputError):
        project(pt, "fisheye")


@pytest.mark.parametrize("shapes", [[(8, 12, 12), (16, 6, 6)], [(5, 30, 30)]])
def test_pre_and_post_sampling_projection_agree(shapes: list[tuple[int, int, int]]) -> None:
    torch.manual_seed(0)
    m = trimesh.creation.icosphere(subdivisions=2)
    h = MeshHierarchy.from_mesh(m.vertices, m.faces, 1)
    v = h.num_vertices(0)
    maps = [torch.randn(2, c, s1, s2, requires_grad=True) for c, s1, s2 in shapes]
    coords = torch.rand(2, v, 3) * 1.8 - 0.9
    extra = coords.transpose(0, 1).contiguous()
    pre = PerceptualGraphConv([s[0] for s in shapes], 3, 10, mode="pre")
    post = PerceptualGraphConv([s[0] for s in shapes], 3, 10, mode="post")
    post.load_state_dict(pre.state_dict())
    grid = project_orthographic(coords)
    a = pre(maps, grid, extra, h.adjacency(0))
    b = post(maps, grid, extra, h.adjacency(0))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    ga = torch.autograd.grad(a.sum(), maps + [pre.weight0])
    gb = torch.autograd.grad(b.sum(), maps + [post.weight0])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    # and the post result equals the plain formula W0 f_p + sum_q W1 f_q on concatenated inputs
    sampled = [F.grid_sample(m, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
               for m in maps]  # torch directly: (B, C_i, V, 1) each
    f = torch.cat([s.squeeze(3).transpose(1, 2) for s in sampled] + [coords], 2)
    adj = h.adjacency(0).to_dense()
    ref = f @ post.weight0.T + adj @ (f @ post.weight1.T) + post.bias
    torch.testing.assert_close(b.transpose(0, 1), ref, rtol=1e-4, atol=1e-4)


def test_auto_mode_picks_the_cheaper_side() -> None:
    conv = PerceptualGraphConv([2048], 3, 128, mode="auto")
    assert conv.use_pre((1, 2048, 7, 7), 141)  # 49 pixels, 2048 channels: project first
    assert not conv.use_pre((1, 64, 56, 56), 141)  # 3136 pixels for 141 vertices: sample first
    assert conv.use_pre((1, 64, 56, 56), 7001)


def test_contiguous_grid_layout_gives_the_previous_samples() -> None:
    """The (B, 1, V, 2) contiguous grid (fast CPU path) samples exactly what the earlier strided
    (B, V, 1, 2) view of the projected coordinates did."""
    from torch.nn import functional as F

    from facerecon.model.pooling import _sample, project_orthographic

    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 7, 9, 11, generator=gen)
    coords = torch.rand(2, 300, 3, generator=gen) * 2.4 - 1.2
    grid = project_orthographic(coords)  # a strided view
    old = F.grid_sample(fmap, grid.unsqueeze(2), mode="bilinear", padding_mode="border", align_corners=False)
    old = old.squeeze(3).permute(2, 0, 1)
    torch.testing.assert_close(_sample(fmap, grid), old, atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gathered_taps_equal_grid_sample(channels_last: bool) -> None:
    """The inference sampler (four taps of every map, one embedding_bag) against torch's own
    grid_sample (bilinear, border, align_corners=False), summed over maps of several sizes, with
    locations outside the crop, on its edges and on pixel centres."""
    from facerecon.model.pooling import bilinear_taps, gather_taps, stack_tables

    gen = torch.Generator().manual_seed(3)
    maps = [torch.randn(2, 6, h, w, generator=gen) for h, w in [(4, 4), (7, 9), (16, 12), (32, 32)]]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    grid = torch.rand(2, 400, 2, generator=gen) * 2.8 - 1.4
    grid[0, :6] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [0.25, 0.75], [-0.125, 0.0625]])
    table, starts, rows = stack_tables([m.permute(0, 2, 3, 1).reshape(2, -1, 6) for m in maps])
    index, weight = bilinear_taps(grid, [tuple(m.shape[-2:]) for m in maps], starts, rows)
    got = gather_taps(table, index, weight)  # (V, B, C)
    ref = sum(
        F.grid_sample(m, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
        for m in maps
    )  # (B, C, V)
    torch.testing.assert_close(got.permute(1, 2, 0), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight.sum(-1), torch.ones_like(weight[..., 0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["pre", "post", "auto"])
def test_inference_path_equals_the_training_path(mode: str) -> None:
    """Without gradients PerceptualGraphConv reads the maps through the gathered taps; the result
    is the grid_sample path's (the one training differentiates) to float rounding."""
    torch.manual_seed(1)
    m = trimesh.creation.icosphere(subdivisions=3)
    h = MeshHierarchy.from_mesh(m.vertices, m.faces, 1)
    v = h.num_vertices(0)
    maps = [torch.randn(2, c, s, s).contiguous(memory_format=torch.channels_last) for c, s in [(8, 32), (16, 16), (24, 8), (32, 4)]]
    coords = torch.rand(2, v, 3) * 2.2 - 1.1
    extra = coords.transpose(0, 1).contiguous()
    conv = PerceptualGraphConv([8, 16, 24, 32], 3, 12, mode=mode)
    grid = project_orthographic(coords)
    with torch.enable_grad():
        ref = conv(maps, grid, extra, h.adjacency(0))
    with torch.no_grad():
        got = conv(maps, grid, extra, h.adjacency(0))
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
