"""``facerecon predict``: photo -> detection and crop -> network -> mesh in the photo's pixel frame.

The mesh is written by extension (``.obj``, ``.ply``, ``.glb``, ...) with per-vertex colours
sampled from the photo (or from the colour head when the model has one), beside a JSON record
per face: the crop box, the detection probability, 68 3D landmarks, the head pose and the
fallback flag. All coordinates written are image px of the original photo (x right, y down,
z away from the camera, in px; docs/conventions.md), so the mesh overlays the photo.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from facerecon.errors import FaceReconError, InputError


@dataclass
class LoadedModel:
    """A network ready for inference, with what the checkpoint says about it."""

    network: torch.nn.Module
    config: Any  # facerecon.config.Config
    path: Path
    landmark_reference: np.ndarray | None
    device: torch.device
    info: dict = field(default_factory=dict)


def load_model(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network a checkpoint describes and load its weights.

    Raises:
        InputError: missing or foreign file, or weights that do not match the checkpoint's model
            configuration (another template or backbone), with both named.
    """
    from facerecon.config import Config
    from facerecon.engine.train import load_checkpoint
    from facerecon.model.network import build_network

    path = Path(checkpoint)
    device = torch.device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = Config.from_dict(ckpt["config"])
    except InputError as exc:
        raise InputError(f"{path}: its configuration is not understood by this version ({exc})") from None
    cfg.model.backbone_weights = None  # the checkpoint holds the trained backbone
    network = build_network(cfg.model, device=device)
    state = ckpt["model"]
    expected = network.state_dict()
    problems = [k for k in expected if k not in state] + [k for k in state if k not in expected]
    problems += [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if problems:
        raise InputError(
            f"{path}: its weights do not match a {cfg.model.backbone} network on the '{cfg.model.template}' "
            f"template ({network.num_vertices} vertices); first mismatch: {problems[0]} "
            "(was the template regenerated with other numbers, or the checkpoint edited?)"
        )
    network.load_state_dict(state)
    network.eval()
    ref = ckpt.get("landmark_reference")
    reference = None if ref is None else np.asarray(torch.as_tensor(ref), dtype=np.float64)
    info = {"epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics", {}), "facerecon_version": ckpt.get("facerecon_version")}
    return LoadedModel(network, cfg, path, reference, device, info)


@dataclass
class FaceResult:
    """One reconstructed face, everything in the original photo's pixel frame."""

    source: Path
    face_index: int
    image_size: tuple[int, int]  # (W, H)
    crop: Any  # facerecon.detect.FaceCrop
    vertices_px: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) uint8
    landmarks_px: np.ndarray | None  # (68, 3)
    pose: tuple[float, float, float] | None  # yaw, pitch, roll degrees
    stages_px: list[np.ndarray]  # per block (V_l, 3)
    stage_faces: list[np.ndarray]

    def record(self) -> dict:
        """The JSON record written beside the mesh."""
        return {
            "source": str(self.source),
            "face_index": self.face_index,
            "image_size": list(self.image_size),
            "frame": "image px of the source photo: x right, y down, z away from the camera (px)",
            **self.crop.to_dict(),
            "num_vertices": int(self.vertices_px.shape[0]),
            "num_faces": int(self.faces.shape[0]),
            "landmarks68": None if self.landmarks_px is None else np.round(self.landmarks_px, 3).tolist(),
            "pose_degrees": None
            if self.pose is None
            else {"yaw": round(self.pose[0], 3), "pitch": round(self.pose[1], 3), "roll": round(self.pose[2], 3)},
        }


@dataclass
class Timings:
    detect: float = 0.0
    network: float = 0.0
    export: float = 0.0
    images: int = 0
    faces: int = 0


class Predictor:
    """Detection + network, batched over faces. Library entry point of ``facerecon predict``."""

    def __init__(self, model: LoadedModel, detector: Any, all_faces: bool = False, batch_size: int = 8) -> None:
        self.model = model
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = max(1, batch_size)
        self.timings = Timings()

    def crops_of(self, image: np.ndarray) -> list[Any]:
        t0 = time.perf_counter()
        crops = self.detector.crop(image, all_faces=self.all_faces)
        self.timings.detect += time.perf_counter() - t0
        return crops

    @torch.no_grad()
    def reconstruct(self, items: Sequence[tuple[Path, np.ndarray, Any, int]]) -> list[FaceResult]:
        """Run the network on (source, image, crop, face index) items, ``batch_size`` at a time."""
        from facerecon.data.ground_truth import sample_colors
        from facerecon.detect import crop_image
        from facerecon.frames import crop_to_image_3d, head_pose

        from facerecon.detect import CROP_SIZE

        size = CROP_SIZE  # as the cache's crops; the network resizes to model.image_size itself
        net = self.model.network
        results: list[FaceResult] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            crops = np.stack([crop_image(img, crop.box, size=size) for _, img, crop, _ in chunk])
            batch = torch.from_numpy(crops).to(self.model.device).permute(0, 3, 1, 2).float() / 255.0
            t0 = time.perf_counter()
            pred = net(batch)
            self.timings.network += time.perf_counter() - t0
            verts = pred.vertices.float().cpu().numpy()
            lms = None if pred.landmarks is None else pred.landmarks.float().cpu().numpy()
            cols = None if pred.colors is None else pred.colors.float().cpu().numpy()
            stages = [c.float().cpu().numpy() for c in pred.coords]
            stage_faces = [f.cpu().numpy().astype(np.int64) for f in pred.faces]
            faces = stage_faces[-1]
            for b, (source, image, crop, k) in enumerate(chunk):
                v_px = crop_to_image_3d(verts[b], crop.box)
                if cols is not None:
                    colors = np.clip(cols[b] * 255.0 + 0.5, 0, 255).astype(np.uint8)
                else:
                    colors = sample_colors(image, v_px[:, :2])
                lm_px = None if lms is None else crop_to_image_3d(lms[b], crop.box)
                pose = None
                if lms is not None and self.model.landmark_reference is not None:
                    pose = head_pose(lms[b], self.model.landmark_reference)
                results.append(
                    FaceResult(
                        source=source,
                        face_index=k,
                        image_size=(int(image.shape[1]), int(image.shape[0])),
                        crop=crop,
                        vertices_px=v_px,
                        faces=faces,
                        colors=colors,
                        landmarks_px=lm_px,
                        pose=pose,
                        stages_px=[crop_to_image_3d(s[b], crop.box) for s in stages],
                        stage_faces=stage_faces,
                    )
                )
        self.timings.faces += len(items)
        return results


def write_result(
    result: FaceResult,
    mesh_path: Path,
    overlay_path: Path | None = None,
    stages: bool = False,
    image: np.ndarray | None = None,
    overlay_mode: str = "shaded",
) -> list[Path]:
    """Write the mesh, its JSON record (``<mesh>.json``), optionally the overlay PNG and the
    per-block meshes (``<stem>.stage<l><suffix>``); each file atomically. Returns the paths."""
    from facerecon.io_utils import write_json
    from facerecon.mesh.export import export_mesh

    written = []
    export_mesh(mesh_path, result.vertices_px, result.faces, result.colors)
    written.append(mesh_path)
    json_path = mesh_path.with_suffix(".json")
    record = result.record()
    record["mesh"] = mesh_path.name
    if stages:
        record["stages"] = []
        for level, (v, f) in enumerate(zip(result.stages_px, result.stage_faces)):
            stage_path = mesh_path.with_name(f"{mesh_path.stem}.stage{level}{mesh_path.suffix}")
            export_mesh(stage_path, v, f)
            record["stages"].append(stage_path.name)
            written.append(stage_path)
    if overlay_path is not None and image is not None:
        from facerecon.overlay import draw_mesh_overlay, save_image

        picture = draw_mesh_overlay(image, result.vertices_px, result.faces, result.landmarks_px, mode=overlay_mode)
        save_image(overlay_path, picture)
        record["overlay"] = overlay_path.name
        written.append(overlay_path)
    write_json(json_path, record)
    written.append(json_path)
    return written


def default_checkpoint() -> Path | None:
    """The checkpoint shipped with the package, when there is one."""
    from importlib import resources

    try:
        ref = resources.files("facerecon") / "assets" / "default_model.pt"
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    path = Path(str(ref))
    return path if path.is_file() else None


def resolve_checkpoint(checkpoint: str | os.PathLike[str] | None) -> Path:
    """The checkpoint to use: the given one, else the shipped default (or a clear error)."""
    if checkpoint is not None:
        return Path(checkpoint)
    found = default_checkpoint()
    if found is None:
        raise InputError(
            "no --checkpoint given and this installation ships no default model; "
            "train one with 'facerecon train' and pass --checkpoint RUN/best.pt"
        )
    return found


__all__ = [
    "LoadedModel",
    "load_model",
    "FaceResult",
    "Predictor",
    "write_result",
    "default_checkpoint",
    "resolve_checkpoint",
    "Timings",
    "FaceReconError",
]
