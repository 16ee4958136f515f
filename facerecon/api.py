"""facerecon from Python: load a model once, reconstruct photos, folders and videos.

>>> from facerecon import Reconstructor
>>> rec = Reconstructor()                       # the shipped model, on the CPU
>>> face = rec.image("photo.jpg")[0]            # the most confident face
>>> face.vertices_px.shape, face.pose           # (7001, 3) in the photo's pixel frame
>>> face.save("face.obj")                       # + face.json (box, landmarks, pose)
>>> for photo in rec.folder("photos/"):         # batched; photos without a face use the average crop
...     print(photo.path, photo.error or len(photo.faces))

``facerecon predict`` is a shell over this class (docs/api.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from facerecon.engine.photos import PhotoOutcome, reconstruct_photos
from facerecon.engine.results import FaceResult, Predictor, write_result
from facerecon.engine.video import FrameResult, VideoPredictor, open_frames
from facerecon.errors import InputError, missing_extra

if TYPE_CHECKING:
    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import LoadedModel
    from facerecon.runtime.session import OnnxFaceDetector

__all__ = ["Reconstructor", "FaceResult", "PhotoOutcome", "FrameResult", "write_result", "choose_runtime"]

#: The runtimes a :class:`Reconstructor` can run the network and MTCNN in.
RUNTIMES = ("auto", "onnx", "torch")


def choose_runtime(runtime: str, checkpoint: str | os.PathLike[str] | None, device: str = "cpu") -> str:
    """``"onnx"`` or ``"torch"`` for ``runtime`` (``"auto"``, ``"onnx"`` or ``"torch"``).

    ``"auto"`` is ONNX Runtime for the shipped model or an exported ``.onnx`` file on the CPU, and
    PyTorch for a training checkpoint (``.pt``) or another device.

    Raises:
        InputError: an unknown runtime, or one that cannot run this checkpoint on this device.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    is_onnx = checkpoint is not None and Path(checkpoint).suffix.lower() == ".onnx"
    if runtime == "auto":
        if device != "cpu":
            runtime = "torch"
        elif checkpoint is None:
            from facerecon.runtime.session import default_onnx_model

            runtime = "onnx" if default_onnx_model() is not None else "torch"
        else:
            runtime = "onnx" if is_onnx else "torch"
    if runtime == "onnx" and device != "cpu":
        raise InputError(f"--device {device}: the ONNX runtime runs on the CPU; use the PyTorch runtime (--runtime torch) for {device}")
    if runtime == "onnx" and checkpoint is not None and not is_onnx:
        if _checkpoint_kind(checkpoint) == "facevision":
            raise InputError(
                f"{checkpoint}: a FaceVision-GAN checkpoint runs on the PyTorch runtime only (its mesh is made from the "
                "network's maps after the network, and the ONNX runtime serves the template families); use --runtime torch"
            )
        raise InputError(
            f"{checkpoint}: the ONNX runtime runs an exported network; write one with "
            f"'facerecon export model.onnx --checkpoint {checkpoint}', or use --runtime torch"
        )
    if runtime == "torch" and is_onnx:
        raise InputError(f"{checkpoint}: an ONNX file runs on the ONNX runtime (--runtime onnx or auto), not PyTorch")
    return runtime


def _checkpoint_kind(checkpoint: str | os.PathLike[str]) -> str | None:
    """The ``model.kind`` a checkpoint file names, or None where it cannot be read (its loader says why later)."""
    from facerecon.engine.checkpoint import load_checkpoint

    try:
        return str(load_checkpoint(checkpoint)["config"].get("model", {}).get("kind"))
    except (InputError, AttributeError):
        return None


class Reconstructor:
    """A model and a face detector, loaded once.

    Args:
        checkpoint: a checkpoint from ``facerecon train`` (``.pt``) or an exported network
            (``.onnx``, ``facerecon export``); None: the model shipped with facerecon.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        min_probability: the smallest MTCNN face probability counted as a face.
        all_faces: every face of a photo instead of the most confident one.
        min_face: with ``all_faces``, the smallest face searched for, px of the photo downscaled to
            at most 1,024 px on its longer side (MTCNN's detection copy); default 32 px.
        batch_size: faces per network pass over a folder.
        warm_up_size: ``(width, height)`` of the first photo when known: the detector sets
            itself up for it on another core while the network loads (``predict`` does this).
        runtime: ``"auto"`` (default): ONNX Runtime for the shipped model or a ``.onnx`` file on
            the CPU, PyTorch for a ``.pt`` checkpoint or a CUDA device (:func:`choose_runtime`);
            ``"onnx"``: the network and MTCNN in ONNX Runtime, without importing torch
            (docs/runtime.md); ``"torch"``: PyTorch (needs ``pip install 'facerecon[train]'``).
            The runtime chosen is in ``self.runtime``.

    Raises:
        InputError: a missing or foreign checkpoint, a runtime that cannot run it, or a CUDA
            device on a machine without one.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        min_probability: float = 0.9,
        all_faces: bool = False,
        min_face: float = 32.0,
        batch_size: int = 8,
        warm_up_size: tuple[int, int] | None = None,
        runtime: str = "auto",
    ) -> None:
        self.runtime = choose_runtime(runtime, checkpoint, device)
        self.model: LoadedModel | None = None  # the network on the PyTorch runtime
        self.detector: OnnxFaceDetector | FaceDetector
        if self.runtime == "onnx":
            from facerecon.runtime.session import MeshRuntime, OnnxFaceDetector, resolve_onnx_model

            self.checkpoint = resolve_onnx_model(checkpoint)
            self.detector = OnnxFaceDetector(min_probability=min_probability, smallest_face=min_face)
            self.detector.warm_up(warm_up_size)  # MTCNN sets itself up on the other core while the network loads
            try:
                network = MeshRuntime(self.checkpoint)
            finally:
                self.detector.finish_warm_up()
        else:
            network = self._load_torch(checkpoint, device, min_probability, min_face, warm_up_size)
        self.predictor = Predictor(network, self.detector, all_faces=all_faces, batch_size=batch_size)

    def _load_torch(
        self, checkpoint: str | os.PathLike[str] | None, device: str, min_probability: float, min_face: float, warm_up_size: tuple[int, int] | None
    ) -> Any:
        """The PyTorch runtime: the checkpoint's network and MTCNN in PyTorch."""
        try:
            import torch
        except ImportError as exc:  # a plain install: the ONNX runtime only
            raise missing_extra(exc, "the PyTorch runtime") or exc from None

        from facerecon.detect import FaceDetector
        from facerecon.engine.predict import load_model
        from facerecon.engine.results import resolve_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.detector = FaceDetector(device=device, min_probability=min_probability, smallest_face=min_face)
        self.detector.warm_up(warm_up_size)  # MTCNN sets itself up on the other core while the network loads
        try:
            self.model = load_model(self.checkpoint, device)
        finally:
            self.detector.finish_warm_up()
        return self.model

    def image(self, photo: str | os.PathLike[str] | np.ndarray) -> list[FaceResult]:
        """The faces of one photo (a file, or an ``(H, W, 3)`` uint8 RGB array): the most
        confident one unless ``all_faces``; when none is detected, one face from the average crop
        (``face.crop.fallback`` is True)."""
        from facerecon.imageio import load_photo

        if isinstance(photo, np.ndarray):
            source, image = Path("<array>"), photo
        else:
            source, image = Path(photo), load_photo(photo)
        crops = self.predictor.crops_of(image)
        return self.predictor.reconstruct(self.predictor.prepare(source, image, crops))

    def folder(
        self, inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, recursive: bool = False,
        require_face: bool = False,
    ) -> Iterator[PhotoOutcome]:
        """The faces of every photo in ``inputs`` (a folder, a glob, files, or a list of them),
        ``batch_size`` faces per network pass: one :class:`PhotoOutcome` per photo, in order.
        An unreadable photo (or, with ``require_face``, one without a face) is skipped with its
        ``error`` set; the others go on.

        Raises:
            InputError: ``inputs`` names no photo.
        """
        from facerecon.imageio import expand_image_inputs

        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        paths = expand_image_inputs([os.fspath(i) for i in items], recursive=recursive)
        if not paths:
            raise InputError(f"no images found in {' '.join(os.fspath(i) for i in items)}")
        return reconstruct_photos(self.predictor, paths, require_face=require_face)

    def video(
        self, path: str | os.PathLike[str] | None = None, *, camera: int | None = None, every: int = 1,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """The face of every ``every``-th frame of a video file (or of camera ``camera``),
        tracked from frame to frame: one :class:`FrameResult` per frame, at most ``max_frames``.

        Raises:
            InputError: an unreadable video, or no such camera.
        """
        runner = VideoPredictor(self.predictor.network, detector=self.detector, every=every)
        return runner.reconstruct(open_frames(path, camera), max_frames=max_frames)

    def video_runner(self, every: int = 1, mesh_format: str = ".obj", stages: bool = False, require_face: bool = False) -> VideoPredictor:
        """A :class:`VideoPredictor` over this model and detector, which writes one mesh per frame
        and ``frames.jsonl`` into a folder (``facerecon predict clip.mp4 -o out/``); with
        ``require_face`` frames without a face get no mesh."""
        return VideoPredictor(
            self.predictor.network, detector=self.detector, every=every, mesh_format=mesh_format, stages=stages,
            require_face=require_face,
        )
