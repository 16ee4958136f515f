"""The PyTorch runtime of ``facerecon predict``: a checkpoint's network loaded (:func:`load_model`)
as a :class:`LoadedModel`, the network runner that :class:`~facerecon.engine.results.Predictor` runs.

Everything around the network (batching, results in the photo's pixel frame, their files) is
torch-free and lives in :mod:`facerecon.engine.results`; its names are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np
import torch

from facerecon.crop import landmarks5_crop_units
from facerecon.engine.results import (
    FaceResult,
    Predictor,
    PreparedFace,
    Timings,
    default_checkpoint,
    prepare_face,
    resolve_checkpoint,
    write_record,
    write_result,
)
from facerecon.errors import InputError


@dataclass
class LoadedModel:
    """A network ready for inference, with what the checkpoint says about it; the PyTorch
    network runner of :class:`facerecon.engine.results.Predictor` (``NetworkRunner``)."""

    network: torch.nn.Module
    config: Any  # facerecon.config.Config
    path: Path
    landmark_reference: np.ndarray | None
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """The cache's crop size (the network resizes)."""
        from facerecon.crop import CROP_SIZE

        return CROP_SIZE

    @property
    def takes_landmarks5(self) -> bool:
        return _accepts_landmarks5(self.network)

    @property
    def template(self) -> str:
        return self.config.model.template

    def run(self, pixels: np.ndarray, crops: Sequence[Any]) -> Any:
        """The network on ``(B, S, S, 3)`` uint8 crops; MTCNN's five points go along when the
        network's ``forward`` takes ``landmarks5`` (model v2). Returns its MeshPrediction."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():
            if self.takes_landmarks5:
                five = torch.from_numpy(landmarks5_crop_units(crops)).to(self.device)
                return self.network(batch, landmarks5=five)
            return self.network(batch)

    def outputs(self, pixels: np.ndarray, crops: Sequence[Any]) -> dict[str, Any]:
        """:meth:`run` as numpy (:meth:`facerecon.engine.results.NetworkRunner.outputs`)."""
        if self.config.model.kind == "facevision":
            return self._mesh_from_maps(pixels)
        pred = self.run(pixels, crops)
        return {
            "vertices": pred.vertices.float().cpu().numpy(),
            "landmarks": None if pred.landmarks is None else pred.landmarks.float().cpu().numpy(),
            "colors": None if pred.colors is None else pred.colors.float().cpu().numpy(),
            "stages": [c.float().cpu().numpy() for c in pred.coords],
            "stage_faces": [f.cpu().numpy().astype(np.int64) for f in pred.faces],
        }

    def _mesh_from_maps(self, pixels: np.ndarray) -> dict[str, Any]:
        """The FaceVision-GAN family's outputs: each crop's own mesh (``engine.facevision``; its
        stages raw, cleaned and smoothed), its faces per crop under ``item_stage_faces``."""
        from facerecon.engine.facevision import reconstruct_batch
        from facerecon.model.facevision import FaceVisionNet

        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        meshes = reconstruct_batch(cast(FaceVisionNet, self.network), batch)  # the family's network (config.model.kind)
        return {
            "vertices": [m.vertices for m in meshes],
            "landmarks": np.stack([m.landmarks for m in meshes]),
            "colors": None,
            "stages": [[m.stages[k] for m in meshes] for k in range(len(meshes[0].stages))],
            "stage_faces": meshes[0].stage_faces,
            "item_stage_faces": [m.stage_faces + [m.faces] for m in meshes],
        }

    def reference_face(self) -> np.ndarray | None:
        """Model v2's mean face (its prior's), crop units; None for a model deforming its template."""
        prior = getattr(self.network, "prior_mean", None)
        if prior is None:
            return None
        reference = prior.detach().cpu().numpy().astype(np.float64)
        return reference if np.abs(reference).max() > 0 else None


def load_model(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network a checkpoint describes and load its weights.

    Raises:
        InputError: missing or foreign file, or weights that do not match the checkpoint's model
            configuration (another template or backbone), with both named.
    """
    from facerecon.config import Config
    from facerecon.engine.checkpoint import load_checkpoint

    path = Path(checkpoint)
    device = torch.device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = Config.from_dict(ckpt["config"])
    except InputError as exc:
        raise InputError(f"{path}: its configuration is not understood by this version ({exc})") from None
    cfg.model.backbone_weights = None  # the checkpoint holds the trained backbone
    network = _build(cfg, device)
    state = ckpt["model"]
    if "face_codes" in state and hasattr(network, "set_face_model"):  # a FaceVision network's face model
        network.set_face_model(state["face_codes"], state["face_triangles"])
    expected = network.state_dict()
    problems = [k for k in expected if k not in state] + [k for k in state if k not in expected]
    problems += [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if problems:
        what = (f"a FaceVision network of width {cfg.model.facevision.channels}" if cfg.model.kind == "facevision" else
                f"a {cfg.model.backbone} network on the '{cfg.model.template}' template ({network.num_vertices} vertices)")
        raise InputError(
            f"{path}: its weights do not match {what}; first mismatch: {problems[0]} "
            "(was the template regenerated with other numbers, or the checkpoint edited?)"
        )
    network.load_state_dict(state)
    network.eval()
    ref = ckpt.get("landmark_reference")
    reference = None if ref is None else np.asarray(torch.as_tensor(ref), dtype=np.float64)
    info = {"epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}), "facerecon_version": ckpt.get("facerecon_version")}
    return LoadedModel(network, cfg, path, reference, device, info)


def _build(cfg: Any, device: torch.device) -> Any:
    """The untrained network of a configuration (its family's class), on ``device``."""
    if cfg.model.kind == "facevision":
        from facerecon.model.facevision import FaceVisionNet

        return FaceVisionNet.from_config(cfg.model).to(device)
    from facerecon.model.network import build_network

    return build_network(cfg.model, device=device)


def _accepts_landmarks5(network: torch.nn.Module) -> bool:
    return bool(getattr(network, "takes_five_points", False))


__all__ = [
    "LoadedModel",
    "load_model",
    "FaceResult",
    "Predictor",
    "write_result",
    "default_checkpoint",
    "resolve_checkpoint",
    "Timings",
    "PreparedFace",
    "prepare_face",
    "landmarks5_crop_units",
    "write_record",
]
