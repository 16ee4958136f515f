"""The ONNX network inside the engine's photo path: ``facerecon.engine.predict.Predictor`` (crops,
batches, colours, records, the folder loop of ``engine/photos.py``) with ONNX Runtime in place of
PyTorch for the network. ``Reconstructor(runtime="onnx")`` uses it (docs/api.md, docs/runtime.md).

This module imports the engine, which imports torch; the torch-free path is
:class:`facerecon.runtime.predict.RuntimePredictor`.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from facerecon.crop import landmarks5_crop_units
from facerecon.engine.predict import Predictor, Timings
from facerecon.runtime.session import MeshRuntime

__all__ = ["OnnxPredictor"]


class OnnxPredictor(Predictor):
    """:class:`~facerecon.engine.predict.Predictor` whose network is an exported ``.onnx`` file.

    Args:
        model: the ``.onnx`` file (``facerecon export``).
        detector: a detector with ``crop(image, all_faces=...)`` (e.g.
            :class:`facerecon.runtime.session.OnnxFaceDetector`).
        all_faces, batch_size: as ``Predictor``'s.
    """

    def __init__(self, model: str | os.PathLike[str], detector: Any, all_faces: bool = False, batch_size: int = 8) -> None:
        self.runtime = MeshRuntime(model)
        # what the Predictor reads of a loaded model: the landmark reference (head pose), the device
        self.model = SimpleNamespace(landmark_reference=self.runtime.landmark_reference, device="cpu", path=self.runtime.path, network=None)
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = max(1, batch_size)
        self.timings = Timings()
        self.takes_landmarks5 = self.runtime.takes_landmarks5

    @property
    def input_size(self) -> int:
        return self.runtime.crop_size

    def run_network(self, pixels: np.ndarray, crops: Sequence[Any]) -> dict[str, np.ndarray]:
        """The exported network on ``(B, S, S, 3)`` uint8 crops (with MTCNN's five points when it
        takes them): its outputs by name (:meth:`MeshRuntime.run`)."""
        t0 = time.perf_counter()
        out = self.runtime.run(pixels, landmarks5_crop_units(crops) if self.takes_landmarks5 else None)
        self.timings.network += time.perf_counter() - t0
        return out

    def network_outputs(self, pixels: np.ndarray, crops: Sequence[Any]) -> dict[str, Any]:
        out = self.run_network(pixels, crops)
        return {
            "vertices": out["vertices"],
            "landmarks": out.get("landmarks"),
            "colors": out.get("colors"),
            "stages": [out[f"stage{k}"] for k in range(len(self.runtime.stage_faces))],
            "stage_faces": self.runtime.stage_faces,
        }
