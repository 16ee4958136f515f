"""The full network: backbone -> (perceptual pooling -> G-ResNet -> unpooling) x blocks -> heads.

Block ``l`` works on template level ``l``. Its input per vertex is
``[pooled image features | coordinates (3) | previous block's hidden features (H, from block 1)]``;
its first graph convolution is fused with the pooling (``PerceptualGraphConv``), then a G-ResNet
(12 more graph convolutions with a shortcut every two, and a 3-channel coordinate head) gives
the new coordinates: input + offsets (``coord_mode="offset"``, default) or absolute positions
(``"absolute"``, as Pixel2Mesh). Between blocks, ``Unpool`` adds one vertex per edge, to the
coordinates and the hidden features alike.

Heads on the last block: a per-vertex colour branch (two graph convolutions, sigmoid), and 68
landmarks as learned soft assignments ``softmax_v(logits[j]) @ vertices``.

Everything is in the crop frame (docs/conventions.md): the template is placed there by
``template * template_scale + template_offset`` (``[model.pixel2mesh]``). The sizes come from
``[model.graph]`` (``hidden_per_block`` / ``layers_per_block_list`` narrow the blocks one by one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from facerecon.config import ModelConfig
from facerecon.errors import InputError
from facerecon.model.backbones import Backbone
from facerecon.model.blocks import ColourHead, DeformBlock, LandmarkHead, MeshNetBase, MeshPrediction, per_block
from facerecon.model.graph import MeshHierarchy
from facerecon.model.pooling import project
from facerecon.model.unpool import Unpool

__all__ = ["MeshPrediction", "LandmarkHead", "ColourHead", "DeformBlock", "FaceReconNet", "build_network", "forward_batch"]


class FaceReconNet(MeshNetBase):
    """Pixel2Mesh for faces (``model.kind = "pixel2mesh"``, see the module docstring). Build with
    ``build_network(cfg)``."""

    takes_five_points = False
    template_scale: Tensor  # buffers: the template's placement in the crop frame
    template_offset: Tensor
    colour_head: ColourHead | None
    landmark_head: LandmarkHead | None

    def __init__(self, cfg: ModelConfig, hierarchy: MeshHierarchy, backbone: Backbone | None = None) -> None:
        """
        Args:
            cfg: the model section of the configuration (``graph``, ``pixel2mesh`` and ``camera`` tables).
            hierarchy: the template levels (``MeshHierarchy.from_template``).
            backbone: a prebuilt backbone; default ``build_backbone(cfg.backbone, cfg.backbone_weights)``.
        """
        super().__init__()
        graph, p2m = cfg.graph, cfg.pixel2mesh
        if p2m.coord_mode not in ("offset", "absolute"):
            raise InputError(f"model.pixel2mesh.coord_mode = {p2m.coord_mode!r}: use 'offset' or 'absolute'")
        if graph.refined_levels is not None:
            raise InputError("model.graph.refined_levels is read by model.kind = 'prior_graph' only: remove it for 'pixel2mesh'")
        self._setup(cfg, hierarchy, backbone)
        blocks = self.num_blocks
        widths = per_block(graph.hidden_per_block, graph.hidden, blocks, "model.graph.hidden_per_block")
        layers = per_block(graph.layers_per_block_list, graph.layers_per_block, blocks, "model.graph.layers_per_block_list")
        self.register_buffer("template_scale", torch.tensor(p2m.template_scale, dtype=torch.float32), persistent=False)
        self.register_buffer("template_offset", torch.tensor(p2m.template_offset, dtype=torch.float32), persistent=False)
        # Offsets start small so the first prediction is close to the placed template.
        out_gain = 0.02 if p2m.coord_mode == "offset" else 1.0
        self.blocks = nn.ModuleList(
            DeformBlock(
                self.backbone.channels,
                3 + (widths[l - 1] if l > 0 else 0),
                widths[l],
                layers[l],
                graph.project_mode,
                out_gain,
            )
            for l in range(blocks)
        )
        self.unpools = nn.ModuleList(
            Unpool(hierarchy.unpool_edges(l), adaptive=graph.adaptive_unpool) for l in range(blocks - 1)
        )
        self.colour_head = ColourHead(widths[-1]) if p2m.colour else None
        last_v = hierarchy.num_vertices(blocks - 1)
        self.landmark_head = LandmarkHead(cfg.num_landmarks, last_v) if cfg.landmarks else None

    # ------------------------------------------------------------------------------ helpers
    def initial_coords(self) -> Tensor:
        """(V_0, 3) float32 the level-0 template placed in the crop frame."""
        return self.hierarchy.vertices * self.template_scale + self.template_offset

    def template_vertices(self, level: int | None = None) -> Tensor:
        """(V_l, 3) the placed template subdivided (midpoints) to ``level`` (default: final)."""
        level = self.num_blocks - 1 if level is None else level
        return self.hierarchy.template_vertices(level) * self.template_scale + self.template_offset

    def _project(self, coords: Tensor) -> Tensor:
        cam = self.cfg.camera
        if cam.projection == "pinhole":
            return project(coords, "pinhole", focal=cam.focal, principal=cam.principal, ref_size=cam.ref_size)
        return project(coords, cam.projection)

    # ------------------------------------------------------------------------------ forward
    def forward(self, image: Tensor) -> MeshPrediction:
        """
        Args:
            image: (B, 3, H, W) float32 RGB in [0, 1], the crop (224 px by default; any size >= 32).

        Returns:
            ``MeshPrediction`` with per-block coordinates in crop units.
        """
        size = self.cfg.image_size
        if size is not None and tuple(image.shape[-2:]) != (size, size):
            image = torch.nn.functional.interpolate(
                image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        maps = self.backbone(image)
        b = image.shape[0]
        coords = self.initial_coords().unsqueeze(0).expand(b, -1, -1)
        feats: Tensor | None = None  # (V, B, H) vertex-major
        out_coords, in_coords, out_feats, faces, edges = [], [], [], [], []
        for level, block in enumerate(self.blocks):
            if level > 0:
                unpool = self.unpools[level - 1]
                coords = unpool(coords, dim=1)
                feats = unpool(feats, dim=0)
            in_coords.append(coords)
            extra = coords.transpose(0, 1)
            if feats is not None:
                extra = torch.cat([extra.to(feats.dtype), feats], dim=2)
            adjacency = self.hierarchy.adjacency(level)
            out, feats = block(maps, self._project(coords), extra, adjacency)
            out = out.transpose(0, 1).float()
            coords = coords + out if self.cfg.pixel2mesh.coord_mode == "offset" else out
            out_coords.append(coords)
            out_feats.append(feats.transpose(0, 1))
            faces.append(self.hierarchy.faces(level))
            edges.append(self.hierarchy.edges(level))
        colors = None
        if self.colour_head is not None and feats is not None:
            adjacency = self.hierarchy.adjacency(self.num_blocks - 1)
            colors = self.colour_head.forward_vertex_major(feats, adjacency).transpose(0, 1).float()
        landmarks = self.landmark_head(coords) if self.landmark_head is not None else None
        return MeshPrediction(out_coords, in_coords, out_feats, faces, edges, colors, landmarks)


def forward_batch(model: nn.Module, batch: Any) -> MeshPrediction:
    """The network on a data batch (a dict with ``image`` and, for networks that take them
    (``takes_five_points``), MTCNN's five points ``landmarks5``)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if getattr(inner, "takes_five_points", False):
        return model(batch["image"], landmarks5=batch.get("landmarks5"))
    return model(batch["image"])


def build_network(cfg: ModelConfig, template: Any = None, device: torch.device | str | None = None) -> MeshNetBase:
    """The network of ``cfg`` (its class chosen by ``cfg.kind``) on ``device``.

    Args:
        cfg: model configuration.
        template: a ``facerecon.mesh.templates.Template`` or a ``MeshHierarchy``; default
            ``load_template(cfg.template)``.
        device: where to put it (default CPU).
    """
    if template is None:
        from facerecon.mesh.templates import load_template

        template = load_template(cfg.template)
    hierarchy = template if isinstance(template, MeshHierarchy) else MeshHierarchy.from_template(template)
    if cfg.kind in ("prior_graph", "prior_spiral"):
        from facerecon.model.prior_net import PriorFaceNet

        net: MeshNetBase = PriorFaceNet(cfg, hierarchy)
    elif cfg.kind == "pixel2mesh":
        net = FaceReconNet(cfg, hierarchy)
    else:
        raise InputError(f"model.kind = {cfg.kind!r}: use 'pixel2mesh', 'prior_graph' or 'prior_spiral'")
    return net.to(device) if device is not None else net
