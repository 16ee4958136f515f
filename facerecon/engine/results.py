"""What ``facerecon predict`` does around the network, without torch: faces batched through a
network runner, the results in the photo's pixel frame, and their files.

:class:`Predictor` cuts each face's crop (:func:`prepare_face`), runs ``batch_size`` of them at a time
through a *network runner* and turns its outputs into :class:`FaceResult` s (image px, colours,
landmarks, head pose). Two runners exist, with one interface (:class:`NetworkRunner`):

* :class:`facerecon.runtime.session.MeshRuntime`: an exported ``.onnx`` network in ONNX Runtime
  (the default on the CPU; imports no torch);
* :class:`facerecon.engine.predict.LoadedModel`: a checkpoint's network in PyTorch (training's
  checkpoints, ``--device cuda``, ``--runtime torch``).

This module imports numpy and facerecon's torch-free modules only (``tests/test_runtime.py``
checks it in a fresh process), so ``engine/photos.py``, ``engine/outputs.py``, ``engine/video.py``
and ``api.py`` load no torch on the ONNX path.

The mesh is written by extension (``.obj``, ``.ply``, ``.glb``, ...) with per-vertex colours
sampled from the photo (or from the colour head when the model has one), beside a JSON record
per face: the crop box, the detection probability, 68 3D landmarks, the head pose and the
fallback flag. All coordinates written are image px of the original photo (x right, y down,
z away from the camera, in px; docs/conventions.md), so the mesh overlays the photo.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from facerecon.errors import InputError

__all__ = [
    "FaceResult", "NetworkRunner", "Predictor", "PreparedFace", "Timings", "default_checkpoint",
    "prepare_face", "resolve_checkpoint", "write_record", "write_result",
]


def _round_list(values: Any, decimals: int) -> Any:
    """A float array as nested lists rounded to ``decimals`` (plain floats, JSON-ready)."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


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
    stages_crop: list[np.ndarray]  # per block (V_l, 3), crop units
    stage_faces: list[np.ndarray]

    @property
    def box(self) -> tuple[float, float, float]:
        """The square crop box ``(x0, y0, side)``, image px."""
        return tuple(self.crop.box)

    def save(
        self, mesh_path: str | os.PathLike[str], overlay_path: str | os.PathLike[str] | None = None,
        image: np.ndarray | None = None, stages: bool = False, overlay_mode: str = "shaded",
    ) -> list[Path]:
        """Write the mesh (by its suffix: ``.obj``, ``.ply``, ``.glb``, ...) and its JSON record
        ``<mesh>.json``; with ``overlay_path`` and ``image`` (the photo), the overlay PNG too.
        Returns the paths written (:func:`write_result`)."""
        overlay = None if overlay_path is None else Path(overlay_path)
        return write_result(self, Path(mesh_path), overlay, stages=stages, image=image, overlay_mode=overlay_mode)

    @property
    def stages_px(self) -> list[np.ndarray]:
        """The mesh after each block in image px (computed when asked: only ``--stages`` needs it)."""
        from facerecon.frames import crop_to_image_3d

        return [crop_to_image_3d(s, self.crop.box) for s in self.stages_crop]

    def record(self) -> dict:
        """The JSON record written beside the mesh.

        Rounded to what the numbers mean: image px to 0.01 px (MTCNN's boxes are good to a few
        px, the landmarks to about 1), the probability to 1e-6, angles to 0.01 degree.
        """
        crop = self.crop
        prob = crop.probability
        return {
            "source": str(self.source),
            "face_index": self.face_index,
            "image_size": list(self.image_size),
            "frame": "image px: x right, y down, z away from the camera",
            "box": _round_list(crop.box, 2),
            "probability": None if not math.isfinite(prob) else round(float(prob), 6),
            "landmarks5": None if crop.landmarks5 is None else _round_list(crop.landmarks5, 2),
            "detection": None if crop.detection is None else _round_list(crop.detection, 2),
            "fallback": bool(crop.fallback),
            "num_vertices": int(self.vertices_px.shape[0]),
            "num_faces": int(self.faces.shape[0]),
            "landmarks68": None if self.landmarks_px is None else _round_list(self.landmarks_px, 2),
            "pose_degrees": None
            if self.pose is None
            else {"yaw": round(self.pose[0], 2), "pitch": round(self.pose[1], 2), "roll": round(self.pose[2], 2)},
        }


@dataclass
class Timings:
    """Seconds spent per stage (totals), and what was processed."""

    decode: float = 0.0
    detect: float = 0.0
    network: float = 0.0
    export: float = 0.0
    images: int = 0
    faces: int = 0

    def per_item(self, n: int) -> str:
        """``decode X ms, detection Y ms, network Z ms, export W ms`` per item of ``n``."""
        n = max(1, n)
        return (
            f"decode {1000 * self.decode / n:.1f} ms, detection {1000 * self.detect / n:.1f} ms, "
            f"network {1000 * self.network / n:.1f} ms, export {1000 * self.export / n:.1f} ms"
        )


#: The colour source kept per face: the crop box enlarged by this factor (vertices can lie a
#: little outside the box), resampled to COLOUR_SIZE px.
COLOUR_ENLARGE = 1.5
COLOUR_SIZE = 384


@dataclass
class PreparedFace:
    """What the network and the export need of one face, without the photo itself.

    A folder of huge photos then costs one decoded photo at a time, whatever the batch size:
    the crop (the network's input), a colour source (the box region, enlarged, at a fixed
    resolution) and the photo's size.
    """

    source: Path
    face_index: int
    image_size: tuple[int, int]  # (W, H)
    crop: Any  # facerecon.detect.FaceCrop
    pixels: np.ndarray  # (S, S, 3) uint8 network input crop
    colour_box: tuple[float, float, float]
    colour_pixels: np.ndarray  # (COLOUR_SIZE, COLOUR_SIZE, 3) uint8

    def sample_colors(self, xy_px: np.ndarray) -> np.ndarray:
        """Bilinear colours at image px (as sampling the photo, through the colour source)."""
        from facerecon.imageio import sample_colors

        x0, y0, side = self.colour_box
        k = COLOUR_SIZE / side
        return sample_colors(self.colour_pixels, (np.asarray(xy_px, dtype=np.float64) - [x0, y0]) * k)


def prepare_face(source: Path, image: np.ndarray, crop: Any, face_index: int, size: int) -> PreparedFace:
    """Cut what :class:`Predictor` needs from the photo (see :class:`PreparedFace`)."""
    from facerecon.crop import crop_image

    x0, y0, side = crop.box
    big = side * COLOUR_ENLARGE
    colour_box = (x0 + 0.5 * side - 0.5 * big, y0 + 0.5 * side - 0.5 * big, big)
    return PreparedFace(
        source=Path(source),
        face_index=face_index,
        image_size=(int(image.shape[1]), int(image.shape[0])),
        crop=crop,
        pixels=crop_image(image, crop.box, size=size),
        colour_box=colour_box,
        colour_pixels=crop_image(image, colour_box, size=COLOUR_SIZE),
    )


class NetworkRunner(Protocol):
    """A network that turns crops into meshes (:class:`Predictor` runs any of them).

    Attributes:
        input_size: side of the crops it takes, px (224: ``facerecon.crop.CROP_SIZE``).
        takes_landmarks5: whether it takes MTCNN's five points (model v2).
        landmark_reference: (68, 3) frontal landmarks for the head pose, or None.
        template: the name of the template it deforms (the UV layout of ``--uv-texture``).
        device: where it runs (``"cpu"``, ``"cuda:0"``, ...).
    """

    input_size: int
    takes_landmarks5: bool
    landmark_reference: np.ndarray | None
    template: str
    device: Any

    def outputs(self, pixels: np.ndarray, crops: Sequence[Any]) -> dict[str, Any]:
        """The network on ``(B, S, S, 3)`` uint8 crops: ``vertices`` (B, V, 3), ``landmarks``
        (B, 68, 3) or None, ``colors`` (B, V, 3) in [0, 1] or None, ``stages`` (per block
        (B, V_l, 3)) float32, crop units; ``stage_faces`` (per block (F_l, 3) int64). A runner
        whose faces each have a mesh of their own (the FaceVision-GAN family) gives per-face lists
        instead of the batch arrays and ``item_stage_faces``: per face, its stages' triangles and
        last the final mesh's."""
        ...

    def reference_face(self) -> np.ndarray | None:
        """(V, 3) the model's mean face in crop units (PNCC's colours), or None: its template."""
        ...


class Predictor:
    """Detection + network, batched over faces. Library entry point of ``facerecon predict``.

    Args:
        model: a :class:`NetworkRunner`: :class:`facerecon.engine.predict.LoadedModel` (PyTorch)
            or :class:`facerecon.runtime.session.MeshRuntime` (ONNX Runtime).
        detector: a detector with ``crop(image, all_faces=...)`` (:class:`facerecon.detect.FaceDetector`).
        all_faces: every face of a photo, not only the most confident one.
        batch_size: faces per network pass.
    """

    def __init__(self, model: Any, detector: Any, all_faces: bool = False, batch_size: int = 8) -> None:
        self.network = model
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = max(1, batch_size)
        self.timings = Timings()

    @property
    def takes_landmarks5(self) -> bool:
        return bool(self.network.takes_landmarks5)

    @property
    def input_size(self) -> int:
        """Side of the crops cut for the network (the network resizes them itself)."""
        return int(self.network.input_size)

    def crops_of(self, image: np.ndarray) -> list[Any]:
        t0 = time.perf_counter()
        crops = self.detector.crop(image, all_faces=self.all_faces)
        self.timings.detect += time.perf_counter() - t0
        return crops

    def prepare(self, source: Path, image: np.ndarray, crops: Sequence[Any]) -> list[PreparedFace]:
        """The :class:`PreparedFace` of each crop of one photo (the photo can be released after)."""
        return [prepare_face(source, image, crop, k, self.input_size) for k, crop in enumerate(crops)]

    def network_outputs(self, pixels: np.ndarray, crops: Sequence[Any]) -> dict[str, Any]:
        """The runner's outputs (:meth:`NetworkRunner.outputs`), timed."""
        t0 = time.perf_counter()
        out = self.network.outputs(pixels, crops)
        self.timings.network += time.perf_counter() - t0
        return out

    def reconstruct(self, items: Sequence[Any]) -> list[FaceResult]:
        """Run the network on faces, ``batch_size`` at a time.

        Args:
            items: :class:`PreparedFace` objects, or ``(source, image, crop, face index)``
                tuples (prepared here).
        """
        prepared = [it if isinstance(it, PreparedFace) else prepare_face(it[0], it[1], it[2], it[3], self.input_size) for it in items]
        results: list[FaceResult] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            out = self.network_outputs(np.stack([p.pixels for p in chunk]), [p.crop for p in chunk])
            results.extend(self._result(face, b, out) for b, face in enumerate(chunk))
        self.timings.faces += len(prepared)
        return results

    def _result(self, face: PreparedFace, b: int, out: dict[str, Any]) -> FaceResult:
        """Face ``b`` of a batch's outputs in the photo's pixel frame."""
        from facerecon.frames import crop_to_image_3d, head_pose

        lms, cols, stages = out["landmarks"], out["colors"], out["stages"]
        v_px = crop_to_image_3d(out["vertices"][b], face.crop.box)
        if cols is not None:
            colors = np.clip(cols[b] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            colors = face.sample_colors(v_px[:, :2])
        reference = self.network.landmark_reference
        stage_faces = out["item_stage_faces"][b] if "item_stage_faces" in out else out["stage_faces"]  # a mesh of its own per face
        return FaceResult(
            source=face.source,
            face_index=face.face_index,
            image_size=face.image_size,
            crop=face.crop,
            vertices_px=v_px,
            faces=stage_faces[-1],
            colors=colors,
            landmarks_px=None if lms is None else crop_to_image_3d(lms[b], face.crop.box),
            pose=None if lms is None or reference is None else head_pose(lms[b], reference),
            stages_crop=[s[b] for s in stages],
            stage_faces=stage_faces[: len(stages)],
        )


def write_record(path: Path, record: dict, durable: bool = False) -> None:
    """The JSON record, compact (no indentation), atomically (not flushed to the disk unless
    ``durable``: see :mod:`facerecon.io_utils`)."""
    import json

    from facerecon.io_utils import atomic_write_bytes

    text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), durable=durable)


def write_result(
    result: FaceResult,
    mesh_path: Path,
    overlay_path: Path | None = None,
    stages: bool = False,
    image: np.ndarray | None = None,
    overlay_mode: str = "shaded",
    extra: Any = None,
) -> list[Path]:
    """Write the mesh, its JSON record (``<mesh>.json``), optionally the overlay PNG (over
    ``image``, the photo) and the per-block meshes (``<stem>.stage<l><suffix>``); each file
    atomically; when writing fails or is interrupted, the files of this result already written
    are removed again (the record comes last: a mesh on disk always has its record). Returns the
    paths. The files are not flushed to the disk (recomputed in a fraction of a second; see
    :mod:`facerecon.io_utils`). ``extra`` (a :class:`facerecon.engine.outputs.FaceExtras`) textures
    the mesh and adds its fields to the record."""
    written: list[Path] = []
    try:
        _write_result_files(result, mesh_path, overlay_path, stages, image, overlay_mode, written, extra)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: no mesh is left without its record
        if written:  # the mesh is (re)written: its record, old or new, goes with it
            written.append(mesh_path.with_suffix(".json"))
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return written


def _write_result_files(
    result: FaceResult, mesh_path: Path, overlay_path: Path | None, stages: bool, image: np.ndarray | None,
    overlay_mode: str, written: list[Path], extra: Any = None,
) -> None:
    """``write_result``'s files, each appended to ``written`` once it is complete; the record last."""
    from facerecon.mesh.export import export_mesh

    if extra is not None and extra.textured is not None:
        from facerecon.mesh.texture import save_textured_mesh

        written.extend(save_textured_mesh(mesh_path, extra.textured, durable=False))
    else:
        export_mesh(mesh_path, result.vertices_px, result.faces, result.colors, durable=False)
        written.append(mesh_path)
    json_path = mesh_path.with_suffix(".json")
    record = result.record()
    record["mesh"] = mesh_path.name
    if extra is not None:
        record.update(extra.record)
    if stages:
        record["stages"] = []
        for level, (v, f) in enumerate(zip(result.stages_px, result.stage_faces)):
            stage_path = mesh_path.with_name(f"{mesh_path.stem}.stage{level}{mesh_path.suffix}")
            export_mesh(stage_path, v, f, durable=False)
            record["stages"].append(stage_path.name)
            written.append(stage_path)
    if overlay_path is not None and image is not None:
        from facerecon.overlay import draw_mesh_overlay, save_image

        picture = draw_mesh_overlay(image, result.vertices_px, result.faces, result.landmarks_px, mode=overlay_mode)
        save_image(overlay_path, picture, durable=False)
        record["overlay"] = overlay_path.name
        written.append(overlay_path)
    write_record(json_path, record)
    written.append(json_path)


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
