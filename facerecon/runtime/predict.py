"""Photo -> detection and crops -> network -> meshes in the photo's pixel frame, without torch.

The ONNX counterpart of ``facerecon.engine.predict.Predictor``: MTCNN through
:class:`~facerecon.runtime.session.OnnxFaceDetector` (the same crop policy), every face of a photo
in one batch through :class:`~facerecon.runtime.session.MeshRuntime`, and numpy post-processing
(crop units -> image px, colours sampled from the photo, the head pose from the 68 landmarks).
Imports no torch (``tests/test_runtime.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facerecon.crop import FaceCrop, crop_image, landmarks5_crop_units
from facerecon.errors import InputError
from facerecon.frames import crop_to_image_3d, head_pose
from facerecon.imageio import sample_colors
from facerecon.runtime.session import MeshRuntime, OnnxFaceDetector, default_onnx_model

__all__ = ["RuntimeFace", "RuntimePredictor", "resolve_onnx_model"]


@dataclass
class RuntimeFace:
    """One reconstructed face, in the original photo's pixel frame (the fields of
    ``facerecon.engine.predict.FaceResult`` that do not depend on the source file)."""

    face_index: int
    image_size: tuple[int, int]  # (W, H)
    crop: FaceCrop
    vertices_px: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) uint8
    landmarks_px: np.ndarray | None  # (68, 3) float64
    pose: tuple[float, float, float] | None  # yaw, pitch, roll degrees
    stages_crop: list[np.ndarray]  # per stage (V_k, 3) float32, crop units
    stage_faces: list[np.ndarray]


def resolve_onnx_model(model: str | os.PathLike[str] | None) -> Path:
    """The given ``.onnx`` file, else the shipped default (or a clear error)."""
    if model is not None:
        return Path(model)
    found = default_onnx_model()
    if found is None:
        raise InputError("this installation ships no ONNX model; write one with 'facerecon export model.onnx --checkpoint RUN/best.pt'")
    return found


class RuntimePredictor:
    """Detection + network in ONNX Runtime, all faces of a photo in one batch.

    Args:
        model: an exported network (``.onnx``); default the shipped one.
        detector: a detector with ``crop(image, all_faces=...)`` (default :class:`OnnxFaceDetector`).
        all_faces: reconstruct every face found, not only the most confident.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, detector: Any = None, all_faces: bool = False) -> None:
        self.runtime = MeshRuntime(resolve_onnx_model(model))
        self.detector = detector if detector is not None else OnnxFaceDetector()
        self.all_faces = bool(all_faces)

    def crops_of(self, image: np.ndarray) -> list[FaceCrop]:
        """The photo's crop boxes under the detector's crop policy (at least one: the fallback)."""
        return self.detector.crop(image, all_faces=self.all_faces)

    def reconstruct(self, image: np.ndarray, crops: Sequence[FaceCrop]) -> list[RuntimeFace]:
        """The network on all ``crops`` of ``image`` ((H, W, 3) uint8 RGB) in one batch."""
        if not crops:
            return []
        rt = self.runtime
        pixels = np.stack([crop_image(image, c.box, size=rt.crop_size) for c in crops])
        out = rt.run(pixels, landmarks5_crop_units(crops) if rt.takes_landmarks5 else None)
        stages = [out[f"stage{k}"] for k in range(len(rt.stage_faces))]
        size = (int(image.shape[1]), int(image.shape[0]))
        return [self._face(image, size, k, crop, out, stages) for k, crop in enumerate(crops)]

    def _face(self, image: np.ndarray, size: tuple[int, int], k: int, crop: FaceCrop, out: dict, stages: list) -> RuntimeFace:
        v_px = crop_to_image_3d(out["vertices"][k], crop.box)
        if "colors" in out:
            colors = np.clip(out["colors"][k] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            colors = sample_colors(image, v_px[:, :2])
        lms = out.get("landmarks")
        reference = self.runtime.landmark_reference
        return RuntimeFace(
            face_index=k,
            image_size=size,
            crop=crop,
            vertices_px=v_px,
            faces=self.runtime.stage_faces[-1],
            colors=colors,
            landmarks_px=None if lms is None else crop_to_image_3d(lms[k], crop.box),
            pose=None if lms is None or reference is None else head_pose(lms[k], reference),
            stages_crop=[s[k] for s in stages],
            stage_faces=self.runtime.stage_faces,
        )

    def predict(self, image: np.ndarray) -> list[RuntimeFace]:
        """Detection and reconstruction of one photo ((H, W, 3) uint8 RGB)."""
        return self.reconstruct(image, self.crops_of(image))
