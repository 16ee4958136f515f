"""Video and camera input for ``facerecon predict``: one mesh per frame, one JSONL for the clip.

Frames come from OpenCV (:func:`open_frames`: a file, or a camera by index). Every ``every``-th
frame is reconstructed; the face is *tracked* from frame to frame: MTCNN's last stage (O-Net)
alone re-scores the previous frame's face box (:meth:`facerecon.detect.FaceDetector.track`),
and the full detection runs only on the first frame, when that score drops below
``min_probability`` or the box drifts (IoU < 0.5 with the previous one), and every
``redetect_every`` frames as a safeguard. So most frames skip detection.

Outputs in the output folder: ``frame_<index>.<ext>`` per reconstructed frame (index in the
video, 0-based, six digits) and ``frames.jsonl``, one JSON object per reconstructed frame:
``frame``, ``time`` (s), ``tracked`` (true when the detection was skipped), the crop ``box``,
``probability``, ``landmarks5``, ``landmarks68``, ``pose_degrees`` and ``mesh`` (as the photo
records of ``facerecon predict``, in the frame's px; no per-frame JSON file beside the meshes). ``frames.jsonl`` is written to a temporary
file and renamed into place when the run ends, however it ends (Ctrl-C, SIGTERM, an error): it
then holds every frame whose mesh was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from facerecon.engine.results import FaceResult, Timings
from facerecon.errors import InputError

__all__ = ["FrameSource", "open_frames", "VideoPredictor", "VideoSummary", "FrameResult"]


class FrameSource:
    """Frames of a video file or a camera, RGB uint8, with their index and time.

    Iterating yields ``(index, time_s, frame)`` for every ``every``-th frame (the others are
    only grabbed, not decoded into arrays).
    """

    def __init__(self, capture: Any, name: str, is_camera: bool) -> None:
        self.capture = capture
        self.name = name
        self.is_camera = is_camera
        import cv2

        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if count > 0 and not is_camera else None
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else 30.0
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        #: ``(width, height)`` of the frames as the source reports it; None when it does not.
        self.size: tuple[int, int] | None = (width, height) if width > 0 and height > 0 else None

    def frames(self, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
        import cv2

        index = 0
        start = time.perf_counter()
        try:
            while True:
                if index % every:
                    if not self.capture.grab():
                        return
                    index += 1
                    continue
                ok, bgr = self.capture.read()
                if not ok or bgr is None:
                    return
                t = time.perf_counter() - start if self.is_camera else index / self.fps
                if bgr.ndim == 2:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                else:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield index, t, rgb
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.capture.release()


def open_frames(path: str | os.PathLike[str] | None, camera: int | None = None) -> FrameSource:
    """Open a video file or camera ``camera`` (an index).

    Raises:
        InputError: one line naming the file (unreadable, no video stream) or the camera (none
            at that index on this machine).
    """
    import cv2

    with contextlib.suppress(Exception):  # OpenCV's own warnings would add lines to ours
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    # and FFmpeg's (e.g. "moov atom not found" for a file that is not a video): its log level is
    # read when OpenCV opens its first capture; quiet unless the user chose one
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if camera is not None:
        if camera < 0:
            raise InputError(f"--camera {camera}: a camera index is >= 0")
        if sys.platform.startswith("linux") and not Path(f"/dev/video{camera}").exists():
            raise InputError(f"--camera {camera}: no camera on this machine (/dev/video{camera} does not exist)")
        capture = cv2.VideoCapture(camera)
        if not capture.isOpened():
            raise InputError(f"--camera {camera}: the camera cannot be opened (in use, or no permission)")
        return FrameSource(capture, f"camera {camera}", is_camera=True)
    if path is None:
        raise InputError("no video file or camera given")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"{path}: cannot read as a video (not a video file, or a codec OpenCV lacks)")
    ok = capture.grab()
    if not ok:
        capture.release()
        raise InputError(f"{path}: the video has no readable frame")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if int(capture.get(cv2.CAP_PROP_POS_FRAMES) or 0) != 0:  # cannot seek back: reopen
        capture.release()
        capture = cv2.VideoCapture(str(path))
    return FrameSource(capture, str(path), is_camera=False)


@dataclass
class FrameResult:
    """The face of one video frame (image px of the frame)."""

    index: int  # the frame's index in the video, 0-based
    time: float  # seconds from the start (a camera: since the first frame)
    tracked: bool  # the face was tracked from the previous frame (no detection)
    face: FaceResult
    image: np.ndarray | None = None  # the frame, (H, W, 3) uint8 RGB, when kept (``keep_frames``)

    def record(self, mesh_name: str) -> dict:
        """The frame's line of ``frames.jsonl``: the photo record of ``predict`` (without
        ``source`` and ``frame``) with the frame's index, time and tracking flag."""
        record = self.face.record()
        record.pop("source", None)
        record.pop("frame", None)
        return {"frame": self.index, "time": round(self.time, 4), "tracked": self.tracked, **record, "mesh": mesh_name}


@dataclass
class VideoSummary(Timings):
    """What a video run did, with its time per stage (``Timings``: seconds, totals)."""

    frames: int = 0
    detections: int = 0
    tracked: int = 0
    no_face: int = 0
    elapsed: float = 0.0
    jsonl: Path = Path("frames.jsonl")

    @property
    def fps(self) -> float:
        """Reconstructed frames per second, end to end (decode, detection, network, files)."""
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


class VideoPredictor:
    """Per-frame meshes with face tracking (see the module docstring).

    Args:
        model: a network runner (:class:`facerecon.engine.results.NetworkRunner`): a
            :class:`facerecon.engine.predict.LoadedModel` or a :class:`facerecon.runtime.session.MeshRuntime`.
        device: where MTCNN runs.
        min_probability: MTCNN's face probability for a detection and for keeping a track.
        every: reconstruct every Nth frame.
        mesh_format: ``.obj``, ``.ply``, ...
        stages: also write the per-block meshes.
        redetect_every: a full detection at least every this many reconstructed frames (0: never
            while the track holds).
        detector: a :class:`facerecon.detect.FaceDetector` to use instead of a new one.
        require_face: frames without a detected face get no mesh (else the fallback crop's),
            counted in ``VideoSummary.no_face`` like the others.
    """

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        min_probability: float = 0.9,
        every: int = 1,
        mesh_format: str = ".obj",
        stages: bool = False,
        redetect_every: int = 60,
        detector: Any = None,
        require_face: bool = False,
        extras: Any = None,
    ) -> None:
        from facerecon.detect import FaceDetector
        from facerecon.engine.results import Predictor

        if every < 1:
            raise InputError(f"--every must be >= 1, got {every}")
        self.detector = detector if detector is not None else FaceDetector(device=device, min_probability=min_probability)
        self.predictor = Predictor(model, self.detector, all_faces=False, batch_size=1)
        self.every = int(every)
        self.mesh_format = mesh_format if mesh_format.startswith(".") else "." + mesh_format
        self.stages = stages
        self.redetect_every = int(redetect_every)
        self.require_face = require_face
        #: What to write beside each frame's mesh (:class:`facerecon.engine.outputs.ExtraOutputs`:
        #: a textured mesh, a UV texture ``<uv folder>/frame_<index>.png``, maps, dense points).
        self.extras = extras

    def _write_meshes(self, result: Any, mesh_path: Path, extra: Any = None) -> list[Path]:
        """The frame's mesh (textured with ``extra.textured`` when given; and per-block meshes with
        ``stages``), atomically, not flushed to the disk (as ``predict``'s photos:
        :mod:`facerecon.io_utils`); no per-frame JSON."""
        from facerecon.mesh.export import export_mesh

        if extra is not None and extra.textured is not None:
            from facerecon.mesh.texture import save_textured_mesh

            paths = save_textured_mesh(mesh_path, extra.textured, durable=False)
        else:
            export_mesh(mesh_path, result.vertices_px, result.faces, result.colors, durable=False)
            paths = [mesh_path]
        if self.stages:
            for level, (v, f) in enumerate(zip(result.stages_px, result.stage_faces)):
                stage_path = mesh_path.with_name(f"{mesh_path.stem}.stage{level}{mesh_path.suffix}")
                export_mesh(stage_path, v, f, durable=False)
                paths.append(stage_path)
        return paths

    def _write_extras(self, frame: FrameResult, mesh_path: Path, extras: Any, written: list[Path]) -> Any:
        """The frame's maps (``frame_<index>.<kind>.png``) and UV texture (``<uv folder>/
        frame_<index>.png``) written, its mesh textured: its :class:`facerecon.engine.outputs.FaceExtras`."""
        from facerecon.engine.outputs import photo_extras

        uv_path = None if extras.uv_texture is None else Path(extras.uv_texture) / f"{mesh_path.stem}.png"
        done = photo_extras(self.predictor.network, [frame.face], frame.image, [mesh_path], [uv_path], extras)
        written.extend(done.files)
        return done.faces[0]

    def reconstruct(
        self, source: FrameSource, summary: VideoSummary | None = None, max_frames: int | None = None,
        keep_frames: bool = False,
    ) -> Iterator[FrameResult]:
        """Yield the face of every ``every``-th frame of ``source`` (see the module docstring),
        at most ``max_frames``; ``summary`` (when given) counts frames, detections and time per
        stage as they go; ``keep_frames`` hands each frame along (``FrameResult.image``). The
        source is closed when the iteration ends, however it ends."""
        summary = VideoSummary() if summary is None else summary
        previous = None  # the last frame's FaceCrop (a real detection) or None
        since_detection = 0
        try:
            frames = source.frames(self.every)
            while max_frames is None or summary.frames < max_frames:
                t0 = time.perf_counter()
                item = next(frames, None)
                summary.decode += time.perf_counter() - t0
                if item is None:
                    break
                index, t_video, frame = item
                t0 = time.perf_counter()
                crop, tracked = self._face_of(frame, previous, since_detection)
                since_detection = since_detection + 1 if tracked else 0
                summary.detections += int(not tracked)
                summary.tracked += int(tracked)
                summary.detect += time.perf_counter() - t0
                previous = None if crop.fallback else crop
                summary.no_face += int(crop.fallback)
                if crop.fallback and self.require_face:  # no mesh from the fallback crop
                    continue
                prepared = self.predictor.prepare(Path(source.name), frame, [crop])
                kept = frame if keep_frames else None
                del frame
                t_net = self.predictor.timings.network
                (result,) = self.predictor.reconstruct(prepared)
                summary.network += self.predictor.timings.network - t_net
                summary.frames += 1
                yield FrameResult(index, t_video, tracked, result, kept)
        finally:
            source.close()

    def _face_of(self, frame: np.ndarray, previous: Any, since_detection: int) -> tuple[Any, bool]:
        """The frame's face, tracked from the previous frame's when that holds, else detected;
        and whether it was tracked."""
        if previous is not None and (self.redetect_every <= 0 or since_detection < self.redetect_every):
            crop = self.detector.track(frame, previous)
            if crop is not None:
                return crop, True
        return self.detector.crop(frame)[0], False

    def run(
        self,
        source: FrameSource,
        out_dir: str | os.PathLike[str],
        max_frames: int | None = None,
        on_frame: Callable[[], None] | None = None,
        written: list[Path] | None = None,
    ) -> VideoSummary:
        """Reconstruct the frames of ``source`` into ``out_dir``; returns the summary.

        ``written`` (a list) receives each path as it is written, so a caller still knows them
        after an interruption.
        """
        from facerecon.io_utils import atomic_path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = [] if written is None else written
        summary = VideoSummary(jsonl=out / "frames.jsonl")
        t_start = time.perf_counter()
        stopped: BaseException | None = None
        with atomic_path(summary.jsonl) as tmp_jsonl, open(tmp_jsonl, "w", encoding="utf-8") as log:
            try:
                extras = self.extras if self.extras is not None and self.extras.any else None
                for frame in self.reconstruct(source, summary, max_frames, keep_frames=extras is not None):
                    t0 = time.perf_counter()
                    mesh_path = out / f"frame_{frame.index:06d}{self.mesh_format}"
                    extra = None if extras is None else self._write_extras(frame, mesh_path, extras, written)
                    paths = self._write_meshes(frame.face, mesh_path, extra)  # the record goes to frames.jsonl
                    record = frame.record(mesh_path.name)
                    record.update({} if extra is None else extra.record)
                    log.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
                    log.flush()
                    written.extend(paths)
                    summary.export += time.perf_counter() - t0
                    if on_frame is not None:
                        on_frame()
            except BaseException as exc:  # Ctrl-C, SIGTERM, an error: keep the frames logged so far
                stopped = exc
            finally:
                summary.elapsed = time.perf_counter() - t_start
        # leaving the atomic_path block has renamed frames.jsonl into place, complete lines only
        written.append(summary.jsonl)
        if stopped is not None:
            raise stopped
        return summary
