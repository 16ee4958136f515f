"""Surface sampling for evaluation (``sample_surface``): area-weighted across triangles, uniform
within each, every point on the mesh; checked with binomial tolerances and hand-worked geometry."""

from __future__ import annotations

import math

import numpy as np
import torch

from facerecon.engine.evaluate import sample_surface

# triangle A in the plane z = 0 (area 1/2), triangle B in the plane z = 5 (area 3/2): ratio 1 : 3;
# triangle C has zero area (collinear) and must never be drawn
VERTICES = torch.tensor(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 1, 5], [0, 0, 9], [1, 1, 9], [2, 2, 9]],
    dtype=torch.float32,
)
FACES = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
N = 40_000


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_samples_follow_the_area_ratio_and_lie_on_the_triangles() -> None:
    pts = sample_surface(VERTICES, FACES, N, torch.Generator().manual_seed(0))
    assert pts.shape == (N, 3) and pts.dtype == torch.float32
    p = pts.double().numpy()
    on_a = np.abs(p[:, 2]) < 1e-6
    on_b = np.abs(p[:, 2] - 5) < 1e-5
    assert np.all(on_a | on_b)  # nothing elsewhere, nothing on the zero-area triangle (z = 9)
    assert _within_binomial(int(on_a.sum()), N, 0.25)
    # inside each triangle: x, y >= 0 and under the hypotenuse (x + y <= 1 for A, x / 3 + y <= 1 for B)
    a, b = p[on_a], p[on_b]
    assert a[:, :2].min() >= -1e-6 and (a[:, 0] + a[:, 1]).max() <= 1 + 1e-6
    assert b[:, :2].min() >= -1e-5 and (b[:, 0] / 3 + b[:, 1]).max() <= 1 + 1e-5


def test_samples_are_uniform_within_a_triangle() -> None:
    pts = sample_surface(VERTICES[:3], FACES[:1], N, torch.Generator().manual_seed(1)).double().numpy()
    # the corner triangle x + y < 1 / sqrt(2) holds half of the area (similar, sides scaled 1/sqrt(2))
    assert _within_binomial(int((pts[:, 0] + pts[:, 1] < 1 / math.sqrt(2)).sum()), N, 0.5)
    # the strip x < 1/2 holds 3/4 of it (1/2 - 1/8 of the area 1/2)
    assert _within_binomial(int((pts[:, 0] < 0.5).sum()), N, 0.75)
    # the mean of a uniform density is the centroid (1/3, 1/3); the coordinate's variance is 1/18
    se = math.sqrt(1 / 18 / N)
    np.testing.assert_allclose(pts[:, :2].mean(0), [1 / 3, 1 / 3], atol=5 * se)


def test_same_generator_seed_same_samples() -> None:
    a = sample_surface(VERTICES, FACES, 500, torch.Generator().manual_seed(7))
    b = sample_surface(VERTICES, FACES, 500, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
