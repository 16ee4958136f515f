"""The building blocks both mesh networks share (``FaceReconNet`` in ``network``, model v2's
``PriorFaceNet`` in ``prior_net``): the prediction record, the landmark and colour heads, one
deformation block (perceptual pooling + G-ResNet) and the common base class. A module of its
own so that ``network`` (which builds either network) and ``prior_net`` both import it, and
neither imports the other at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from facerecon.config import ModelConfig
from facerecon.errors import InputError
from facerecon.model.backbones import Backbone, build_backbone
from facerecon.model.graph import GraphConv, GResNet, MeshHierarchy
from facerecon.model.pooling import PerceptualGraphConv, ProjectMode

__all__ = ["MeshPrediction", "LandmarkHead", "ColourHead", "DeformBlock", "MeshNetBase", "per_block"]


@dataclass
class MeshPrediction:
    """What ``FaceReconNet.forward`` returns (one entry per block, coarse to fine).

    Attributes:
        coords: per block (B, V_l, 3) float32 vertex positions, crop units.
        input_coords: per block (B, V_l, 3) the block's input positions (after unpooling), for the
            Laplacian and move losses.
        features: per block (B, V_l, H) float hidden features (a strided view, not a copy); width 0
            on the levels without a block of their own (``model.graph.refined_levels``).
        faces: per block (F_l, 3) int64 triangles (shared by the batch).
        edges: per block (E_l, 2) int64 undirected edges (shared by the batch).
        colors: (B, V_L, 3) RGB in (0, 1) of the last block's vertices, or None.
        landmarks: (B, K, 3) crop units (K = 68), or None.
        base: (B, V_L, 3) the posed prior face before refinement (model v2), or None.
    """

    coords: list[Tensor]
    input_coords: list[Tensor]
    features: list[Tensor]
    faces: list[Tensor]
    edges: list[Tensor]
    colors: Tensor | None = None
    landmarks: Tensor | None = None
    base: Tensor | None = None

    @property
    def vertices(self) -> Tensor:
        """(B, V_L, 3) the final mesh's vertices, crop units."""
        return self.coords[-1]


class LandmarkHead(nn.Module):
    """K landmarks as convex combinations of the vertices: ``softmax_v(logits)`` (K, V) @ (B, V, 3)."""

    def __init__(self, num_landmarks: int, num_vertices: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_landmarks, num_vertices))
        self._cached: tuple[tuple, Tensor] | None = None  # (logits key, softmax) for inference

    @torch.no_grad()
    def init_from_layout(self, vertices: Tensor, layout: Tensor, sigma: float = 0.05) -> None:
        """Start each landmark as a Gaussian blend of the template vertices near a mean position.

        Args:
            vertices: (V, 3) template vertices in the crop frame (``FaceReconNet.template_vertices``).
            layout: (K, 3) mean landmark positions in the crop frame (e.g. the training mean).
            sigma: width of the blend, crop units.
        """
        layout = torch.as_tensor(layout, dtype=torch.float32, device=self.logits.device)
        if layout.shape != (self.logits.shape[0], 3):
            raise InputError(f"landmark layout must be ({self.logits.shape[0]}, 3), got {tuple(layout.shape)}")
        d2 = torch.cdist(layout, vertices.to(layout)) ** 2
        self.logits.copy_(-d2 / (2.0 * sigma * sigma))

    def weights(self) -> Tensor:
        """(K, V) float32 soft assignments, each row sums to 1. Without gradients the softmax is
        kept until the logits change (a 68 x 7,001 softmax per call otherwise)."""
        if torch.is_grad_enabled() and self.logits.requires_grad:
            return torch.softmax(self.logits.float(), dim=1)
        key = (self.logits.data_ptr(), self.logits._version, self.logits.device)
        if self._cached is None or self._cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._cached = (key, torch.softmax(self.logits.float(), dim=1))
        return self._cached[1]

    def forward(self, vertices: Tensor) -> Tensor:
        """(B, V, 3) -> (B, K, 3)."""
        b, v, c = vertices.shape
        flat = vertices.float().transpose(0, 1).reshape(v, b * c)  # one GEMM for the whole batch
        return (self.weights() @ flat).view(-1, b, c).transpose(0, 1)


class ColourHead(nn.Module):
    """Per-vertex RGB from the last block's features: GraphConv(H, H) - ReLU - GraphConv(H, 3) - sigmoid."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv1 = GraphConv(hidden, hidden)
        self.conv2 = GraphConv(hidden, 3)

    def forward_vertex_major(self, features: Tensor, adjacency: Tensor) -> Tensor:
        """(V, B, H) -> (V, B, 3) in (0, 1)."""
        x = torch.relu(self.conv1.forward_vertex_major(features, adjacency))
        return torch.sigmoid(self.conv2.forward_vertex_major(x, adjacency))


class DeformBlock(nn.Module):
    """Perceptual pooling fused with the first graph convolution, then the rest of a G-ResNet."""

    def __init__(
        self,
        image_channels: Sequence[int],
        extra_channels: int,
        hidden: int,
        num_layers: int,
        project_mode: ProjectMode = "auto",
        out_gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.pool_conv = PerceptualGraphConv(image_channels, extra_channels, hidden, mode=project_mode)
        self.gresnet = GResNet(None, hidden, num_layers, out_channels=3, out_gain=out_gain)

    def forward(
        self, feature_maps: Sequence[Tensor], grid: Tensor, extra: Tensor, adjacency: Tensor
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            feature_maps: list of (B, C_i, H_i, W_i).
            grid: (B, V, 2) sampling locations.
            extra: (V, B, C_x) coordinates (+ previous features), vertex-major.
            adjacency: (V, V) sparse CSR.

        Returns:
            ``(out (V, B, 3), hidden (V, B, H))``.
        """
        h = self.pool_conv(feature_maps, grid, extra, adjacency)
        return self.gresnet.forward_vertex_major(h, adjacency)


def per_block(values: Sequence[int], default: int, blocks: int, key: str) -> list[int]:
    """A per-block list of ``model.graph`` sizes: ``values`` (at least ``blocks`` entries, the first
    ``blocks`` used) or ``default`` for every block when ``values`` is empty."""
    if not values:
        return [default] * blocks
    if len(values) < blocks:
        raise InputError(f"{key} has {len(values)} entries for {blocks} blocks")
    return [int(v) for v in values[:blocks]]


class MeshNetBase(nn.Module):
    """What every facerecon network shares: ``cfg``, ``backbone``, ``hierarchy``, ``num_blocks``,
    and ``takes_five_points``: whether ``forward`` takes MTCNN's five points (``landmarks5``)."""

    takes_five_points: bool = False
    cfg: ModelConfig
    backbone: Backbone
    hierarchy: MeshHierarchy
    num_blocks: int
    landmark_head: LandmarkHead | None

    def _setup(self, cfg: ModelConfig, hierarchy: MeshHierarchy, backbone: Backbone | None) -> None:
        """The shared part of every ``__init__``: the block count (checked against the template),
        the configuration, the hierarchy and the backbone (frozen when asked)."""
        blocks = hierarchy.num_levels if cfg.blocks is None else cfg.blocks
        if not 1 <= blocks <= hierarchy.num_levels:
            raise InputError(f"model.blocks = {blocks}: the template has {hierarchy.num_levels} levels")
        self.cfg = cfg
        self.num_blocks = blocks
        self.hierarchy = hierarchy
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone, cfg.backbone_weights)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "MeshNetBase":
        super().train(mode)
        if self.cfg.freeze_backbone:
            self.backbone.eval()
        return self

    def template_vertices(self, level: int | None = None) -> Tensor:
        """(V_l, 3) the surface the network starts from at ``level`` (default: final), crop units:
        each network kind says which (the placed template, the prior's mean face)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which surface it starts from")

    @property
    def num_vertices(self) -> int:
        """V of the final mesh."""
        return self.hierarchy.num_vertices(self.num_blocks - 1)

    def faces(self, level: int | None = None) -> Tensor:
        """(F, 3) int64 triangles of a block's mesh (default: the final one)."""
        return self.hierarchy.faces(self.num_blocks - 1 if level is None else level)
