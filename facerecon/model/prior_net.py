"""Model v2: a posed prior face, refined by the graph blocks (``model.kind = "prior_graph"``) or by
the spiral decoder (``"prior_spiral"``, facerecon.model.spiral). Settings: ``[model.prior]``, and
``[model.graph]`` or ``[model.spiral]``.

    crop (224 px) --five-point similarity--> aligned crop (image_size px) --backbone--> maps
    global features + aligned five points --head--> d_rotation (6-D), d_log_scale, d_translation,
                                                     shape coefficients (K)
    initial pose = the mean face's scaled-orthographic fit to the five points (aligned frame)
    base face    = s R (mean + sum_k c_k std_k basis_k) + t          (V_L vertices, template topology)
    block l      = perceptual pooling + G-ResNet on level l, predicting a residual that is unpooled
                   (adaptive) to the next level: coords_l = base[:V_l] + residual_l
    output       = the aligned frame mapped back to the crop frame

Every vertex of level ``l`` is vertex ``v < V_l`` of the finest level (unpooling appends), so the
base face at level ``l`` is simply its first ``V_l`` rows. The head's last layer starts at zero:
an untrained network outputs the five-point-posed mean face. The prior's arrays (mean, basis,
five-point layout) are buffers of the network, so a checkpoint carries them.

Widths can narrow per block (``model.graph.hidden_per_block``, e.g. 96 -> 64 -> 32 -> 16), since the
7,001-vertex level needs few channels to refine an already plausible surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facerecon.config import ModelConfig
from facerecon.errors import InputError
from facerecon.model.backbones import Backbone
from facerecon.model.blocks import DeformBlock, LandmarkHead, MeshNetBase, MeshPrediction, per_block
from facerecon.model.face_prior import (
    FacePriorArrays,
    apply_similarity_2d,
    fit_scaled_orthographic,
    prior_to_state,
    rotation_6d,
    similarity_2d,
)
from facerecon.model.graph import MeshHierarchy
from facerecon.model.unpool import Unpool

if TYPE_CHECKING:
    from facerecon.model.spiral import SpiralDecoder, SpiralRefine, VertexNormals
    from facerecon.mtcnn import ONet

__all__ = ["PriorFaceNet"]


class PriorFaceNet(MeshNetBase):
    """See the module docstring. Build with ``facerecon.model.network.build_network``."""

    takes_five_points = True
    # buffers: the face prior (set_prior)
    prior_mean: Tensor
    prior_basis: Tensor
    prior_std: Tensor
    prior_five3d: Tensor
    prior_five_ref: Tensor
    prior_landmarks: Tensor
    onet: ONet | None
    spiral_decoder: SpiralDecoder | None
    spiral_refine: SpiralRefine | None
    spiral_normals: VertexNormals
    landmark_head: LandmarkHead | None

    def __init__(self, cfg: ModelConfig, hierarchy: MeshHierarchy, backbone: Backbone | None = None) -> None:
        super().__init__()
        if cfg.kind not in ("prior_graph", "prior_spiral"):
            raise InputError(f"model.kind = {cfg.kind!r} is not a prior network ('prior_graph', 'prior_spiral')")
        prior = cfg.prior
        self._setup(cfg, hierarchy, backbone)
        blocks = self.num_blocks
        v_last = hierarchy.num_vertices(blocks - 1)
        k = int(prior.components)
        # the prior (filled by set_prior at the start of training; loaded from checkpoints)
        self.register_buffer("prior_mean", torch.zeros(v_last, 3))
        self.register_buffer("prior_basis", torch.zeros(k, v_last, 3))
        self.register_buffer("prior_std", torch.zeros(k))
        self.register_buffer("prior_five3d", torch.zeros(5, 3))
        self.register_buffer("prior_five_ref", torch.zeros(5, 2))
        self.register_buffer("prior_landmarks", torch.zeros(68, 3))
        c_last = self.backbone.channels[-1]
        if prior.head_pool not in ("mean", "grid"):
            raise InputError(f"model.prior.head_pool = {prior.head_pool!r}: use 'mean' or 'grid'")
        pooled = c_last * (16 if prior.head_pool == "grid" else 1)
        self.onet = None
        if prior.onet_features:
            from facerecon.mtcnn import ONet, weights_folder

            self.onet = ONet()
            state = torch.load(weights_folder() / "onet.pt", map_location="cpu", weights_only=True)
            self.onet.load_state_dict(state)
            self.onet.requires_grad_(False).eval()
            pooled += 256
        self.head = nn.Sequential(
            nn.Linear(pooled + 10, prior.head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(prior.head_hidden, prior.head_hidden),
            nn.ReLU(inplace=True),
        )
        self.head_out = nn.Linear(prior.head_hidden, 10 + k)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)
        self.spiral_decoder = None
        self.spiral_refine = None
        self.blocks = nn.ModuleList()
        if cfg.kind == "prior_spiral":
            self._build_spiral(cfg, hierarchy, blocks)
        else:
            self._build_graph(cfg, blocks)
        # The spiral network does not use these unpoolings (its decoder unpools by midpoints); it
        # keeps adaptive ones so that its saved weights keep loading.
        adaptive = cfg.graph.adaptive_unpool if cfg.kind == "prior_graph" else True
        self.unpools = nn.ModuleList(Unpool(hierarchy.unpool_edges(l), adaptive=adaptive) for l in range(blocks - 1))
        self.colour_head = None
        self.landmark_head = LandmarkHead(cfg.num_landmarks, v_last) if cfg.landmarks else None

    def _build_graph(self, cfg: ModelConfig, blocks: int) -> None:
        graph = cfg.graph
        if graph.refined_levels is not None:
            if graph.refined_levels > blocks:
                raise InputError(f"model.graph.refined_levels = {graph.refined_levels}: the network has {blocks} levels")
            blocks = int(graph.refined_levels)
        widths = per_block(graph.hidden_per_block, graph.hidden, blocks, "model.graph.hidden_per_block")
        layers = per_block(graph.layers_per_block_list, graph.layers_per_block, blocks, "model.graph.layers_per_block_list")
        self.widths = widths
        self.blocks = nn.ModuleList(
            DeformBlock(
                self.backbone.channels,
                3 + (widths[l - 1] if l > 0 else 0),
                widths[l],
                layers[l],
                graph.project_mode,
                out_gain=0.0,  # refinements start at zero: an untrained network gives the base face
            )
            for l in range(blocks)
        )

    def _build_spiral(self, cfg: ModelConfig, hierarchy: MeshHierarchy, blocks: int) -> None:
        from facerecon.model.spiral import SpiralDecoder, SpiralRefine, VertexNormals, spiral_indices

        if blocks < 3:
            raise InputError("model.kind = 'prior_spiral' needs a template of at least three levels")
        hops = per_block(cfg.spiral.hops, 2, blocks, "model.spiral.hops")
        widths = per_block(cfg.spiral.widths, 16, blocks, "model.spiral.widths")
        spirals = [
            torch.from_numpy(spiral_indices(hierarchy.faces(l).cpu().numpy(), hierarchy.num_vertices(l), hops[l]))
            for l in range(blocks)
        ]
        unpools = [hierarchy.unpool_edges(l) for l in range(blocks - 1)]
        self.spiral_decoder = SpiralDecoder(cfg.prior.head_hidden, widths, spirals, unpools)
        self.spiral_refine = SpiralRefine(spirals, unpools, self.backbone.channels)
        self.spiral_normals = VertexNormals(hierarchy.faces(blocks - 1), hierarchy.num_vertices(blocks - 1))

    # ------------------------------------------------------------------------------ prior
    @torch.no_grad()
    def set_prior(self, prior: FacePriorArrays) -> None:
        """Load a learned prior (``facerecon.model.face_prior.build_face_prior``) into the buffers,
        and start the landmark head on the mean face's vertices nearest the mean landmarks."""
        state = prior_to_state(prior)
        k = self.prior_basis.shape[0]
        if state["prior_basis"].shape[0] < k:  # fewer training faces than modes: pad with zeros
            pad = torch.zeros(k - state["prior_basis"].shape[0], *state["prior_basis"].shape[1:])
            state["prior_basis"] = torch.cat([state["prior_basis"], pad])
            state["prior_std"] = torch.cat([state["prior_std"], torch.zeros(pad.shape[0])])
        for name, value in state.items():
            buf = getattr(self, name)
            if value.shape != buf.shape:
                raise InputError(f"face prior {name}: shape {tuple(value.shape)} does not fit the network's {tuple(buf.shape)}")
            buf.copy_(value.to(buf))
        if self.landmark_head is not None:
            self.landmark_head.init_from_layout(self.prior_mean, self.prior_landmarks, sigma=0.015)

    # ------------------------------------------------------------------------------ helpers
    def _onet_features(self, image: Tensor) -> Tensor:
        """(B, 3, S, S) aligned crop in [0, 1] -> (B, 256) ONet features (frozen, MTCNN's input scaling)."""
        onet = self.onet
        if onet is None:
            raise InputError("this network has no O-Net features (model.prior.onet_features is off)")
        x = F.interpolate(image, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            return onet.features((x * 255.0 - 127.5) * 0.0078125)

    def train(self, mode: bool = True) -> "PriorFaceNet":
        super().train(mode)
        if self.onet is not None:
            self.onet.eval()
        return self

    def template_vertices(self, level: int | None = None) -> Tensor:
        """(V_l, 3) the prior's mean face at ``level`` (crop units, centred)."""
        level = self.num_blocks - 1 if level is None else level
        return self.prior_mean[: self.hierarchy.num_vertices(level)]

    def _align(self, five: Tensor | None, b: int, like: Tensor, aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(A, t, aligned five points): ``aligned = crop @ A.T + t``; the identity when not
        ``aligned`` (``model.prior.five_point`` off, or a network whose prior is not set yet)."""
        ref = self.prior_five_ref.to(like)
        if five is None:
            five = torch.full((b, 5, 2), float("nan"), dtype=like.dtype, device=like.device)
        five = five.to(like)
        ok = torch.isfinite(five).all(-1).all(-1)
        five = torch.where(ok[:, None, None], five, ref[None])
        if aligned:
            a, t = similarity_2d(five, ref)
        else:
            a = torch.eye(2, dtype=like.dtype, device=like.device).expand(b, 2, 2)
            t = torch.zeros(b, 2, dtype=like.dtype, device=like.device)
        return a, t, apply_similarity_2d(a, t, five)

    # ------------------------------------------------------------------------------ forward
    def forward(self, image: Tensor, landmarks5: Tensor | None = None) -> MeshPrediction:
        """
        Args:
            image: (B, 3, H, W) float RGB in [0, 1], the crop.
            landmarks5: (B, 5, 2) float MTCNN five points, crop units (NaN rows: none).

        Returns:
            ``MeshPrediction`` in crop units (``base``: the posed prior face before refinement).
        """
        size = self.cfg.image_size or image.shape[-1]
        if tuple(image.shape[-2:]) != (size, size):
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        aligned = self.cfg.prior.five_point and bool(self.prior_five_ref.abs().sum() > 0)
        a, t, five_al = self._align(landmarks5, image.shape[0], image, aligned)
        if aligned:
            image = _warp_to_aligned(image, a, t, size)
        maps = self.backbone(image)
        h, ref = self._embedding(image, maps, five_al)
        base = self._posed_prior(self.head_out(h).float(), five_al.float() if aligned else None, ref.float())
        to_crop = _aligned_to_crop(a, t)
        if self.spiral_decoder is not None and self.spiral_refine is not None:
            return self._spiral_forward(self.spiral_decoder, self.spiral_refine, base, h, image, maps, to_crop)
        return self._graph_forward(base, maps, to_crop)

    def _embedding(self, image: Tensor, maps: list[Tensor], five_al: Tensor) -> tuple[Tensor, Tensor]:
        """The head's hidden features from the pooled last map, the aligned five points' offsets
        from the reference (and O-Net's features); with the reference in the maps' dtype."""
        if self.cfg.prior.head_pool == "grid":
            g = F.adaptive_avg_pool2d(maps[-1], 4).flatten(1)
        else:
            g = maps[-1].mean((2, 3))
        ref = self.prior_five_ref.to(g)
        parts = [g, (five_al - ref[None]).reshape(g.shape[0], 10) * 10.0]
        if self.onet is not None:
            parts.append(self._onet_features(image))
        return self.head(torch.cat(parts, dim=1)), ref

    def _posed_prior(self, out: Tensor, five_fit: Tensor | None, ref: Tensor) -> Tensor:
        """(B, V, 3) the base face in the aligned frame: the prior's shape from the head's
        coefficients, posed by the scaled-orthographic fit to the five points (``five_fit``; the
        reference layout when None) corrected by the head's rotation, scale and shift."""
        b = out.shape[0]
        d6, dlog_s, dt, coeff = out[:, :6], out[:, 6], out[:, 7:10], out[:, 10:]
        five3d = self.prior_five3d.float()
        if five_fit is None:
            five_fit = ref[None].expand(b, -1, -1)
        s0, r0, t0 = fit_scaled_orthographic(five3d, five_fit)
        rot = r0 @ rotation_6d(0.1 * d6)
        s = s0 * torch.exp(0.1 * dlog_s)
        k = self.prior_basis.shape[0]
        shape = self.prior_mean[None] + ((coeff * self.prior_std[None]) @ self.prior_basis.view(k, -1)).view(b, -1, 3)
        base = s[:, None, None] * shape @ rot.transpose(1, 2)
        lm_z = s * (self.prior_landmarks.mean(0) @ rot.transpose(1, 2))[:, 2]  # mean landmark depth
        shift = torch.cat([t0 + 0.1 * dt[:, :2], (0.1 * dt[:, 2] - lm_z)[:, None]], dim=1)
        return base + shift[:, None, :]

    def _graph_forward(self, base: Tensor, maps: list[Tensor], to_crop: Callable[[Tensor], Tensor]) -> MeshPrediction:
        """The graph blocks (``model.kind = "prior_graph"``): each refines the base face's first
        ``V_l`` vertices by a residual unpooled to the next level; aligned frame in, crop units out.
        The levels past the last block (``model.graph.refined_levels``) are the base face plus that
        residual unpooled (no hidden features: ``features`` of width 0)."""
        residual: Tensor | None = None
        feats: Tensor | None = None
        out_coords, in_coords, out_feats, faces, edges = [], [], [], [], []
        for level in range(self.num_blocks):
            if level >= len(self.blocks):
                assert residual is not None
                residual = self.unpools[level - 1](residual, dim=1)
                coords = to_crop(base[:, : self.hierarchy.num_vertices(level)] + residual)
                in_coords.append(coords)
                out_coords.append(coords)
                out_feats.append(coords.new_zeros(coords.shape[0], coords.shape[1], 0))
                faces.append(self.hierarchy.faces(level))
                edges.append(self.hierarchy.edges(level))
                continue
            block = self.blocks[level]
            nv = self.hierarchy.num_vertices(level)
            base_l = base[:, :nv]
            if residual is None or feats is None:
                coords_in = base_l
            else:
                unpool = self.unpools[level - 1]
                residual = unpool(residual, dim=1)
                feats = unpool(feats, dim=0)
                coords_in = base_l + residual
            extra = coords_in.transpose(0, 1)
            if feats is not None:
                extra = torch.cat([extra.to(feats.dtype), feats], dim=2)
            delta, feats = block(maps, coords_in[..., :2], extra, self.hierarchy.adjacency(level))
            delta = delta.transpose(0, 1).float()
            residual = delta if residual is None else residual + delta
            coords = base_l + residual
            in_coords.append(to_crop(coords_in))
            out_coords.append(to_crop(coords))
            out_feats.append(feats.transpose(0, 1))
            faces.append(self.hierarchy.faces(level))
            edges.append(self.hierarchy.edges(level))
        final = out_coords[-1]
        landmarks = self.landmark_head(final) if self.landmark_head is not None else None
        pred = MeshPrediction(out_coords, in_coords, out_feats, faces, edges, None, landmarks)
        pred.base = to_crop(base)
        return pred

    def _spiral_forward(
        self,
        decoder: SpiralDecoder,
        refine: SpiralRefine,
        base: Tensor,
        embedding: Tensor,
        image: Tensor,
        maps: list[Tensor],
        to_crop: Callable[[Tensor], Tensor],
    ) -> MeshPrediction:
        """Coarse spiral decoder + spiral refinement (``model.kind = "prior_spiral"``), aligned frame."""
        from facerecon.model.spiral import _sample_map

        last = self.num_blocks - 1
        faces, edges = self.hierarchy.faces(last), self.hierarchy.edges(last)
        coarse = base + decoder(embedding).float()
        xy = coarse[..., :2]
        rgb = _sample_map(image, xy).float()
        disp = refine(self.spiral_normals(coarse), rgb, maps, xy).float()
        final = coarse + disp
        out_coords = [to_crop(coarse), to_crop(final)]
        in_coords = [to_crop(base), out_coords[0]]
        landmarks = self.landmark_head(out_coords[-1]) if self.landmark_head is not None else None
        pred = MeshPrediction(out_coords, in_coords, [coarse, final], [faces, faces], [edges, edges], None, landmarks)
        pred.base = to_crop(base)
        return pred


def _warp_to_aligned(image: Tensor, a: Tensor, t: Tensor, size: int) -> Tensor:
    """The crop resampled into the aligned frame (``aligned = crop @ A.T + t``), ``size`` px."""
    a_inv = torch.linalg.inv(a)
    theta = torch.cat([a_inv, -(a_inv @ t[:, :, None])], dim=2)  # aligned -> crop
    grid = F.affine_grid(theta, [image.shape[0], 3, size, size], align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _aligned_to_crop(a: Tensor, t: Tensor) -> Callable[[Tensor], Tensor]:
    """The map of (B, N, 3) points from the aligned frame back to crop units (depth scaled by
    the similarity's scale)."""
    a_inv = torch.linalg.inv(a.float())
    t32 = t.float()
    z_scale = torch.sqrt(torch.det(a.float()).abs())

    def to_crop(x: Tensor) -> Tensor:
        xy = (x[..., :2] - t32[:, None, :]) @ a_inv.transpose(1, 2)
        return torch.cat([xy, x[..., 2:3] / z_scale[:, None, None]], dim=-1)

    return to_crop
