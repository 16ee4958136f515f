"""``facerecon predict``: photos, videos or a camera -> 3D face meshes in the pixel frame."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from facerecon.cli._common import console, display_path, err_console, info, make_progress, state
from facerecon.errors import FaceReconError, InputError
from facerecon.signals import interruptible

ORDER = 60

#: Extensions read as video (frames through OpenCV).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def _passive_openmp_when_busy() -> None:
    """On a machine already busy (1-minute load >= its cores), make OpenMP threads sleep while
    they wait instead of spinning, unless the user chose (``OMP_WAIT_POLICY``).

    Spinning threads that the scheduler has descheduled stall every parallel region: measured
    on a 2-core machine at load 5, MTCNN took 930 ms on a photo with spinning threads and 39 ms
    with sleeping ones (14 ms against 910 ms once warm). OpenMP reads the variable when torch
    loads it, which is after this (the predict command imports torch itself).
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _load_while_detector_warms(ckpt: Path, device: str, detector: Any, image_size: tuple[int, int] | None) -> Any:
    """The network, loaded while MTCNN sets itself up on the other core (its weights, its first
    calls, P-Net for ``image_size``): detection then starts warm. The set-up has finished when
    this returns, also on an error (which ends the process)."""
    from facerecon.engine.predict import load_model

    detector.warm_up(image_size)
    try:
        return load_model(ckpt, device)
    finally:
        detector.finish_warm_up()


def _check_writable(path: Path, what: str) -> None:
    """Fail now, before any inference, when ``path`` (a file to be written) cannot be written:
    its folder cannot be created or written, or the path is a folder."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the {what} (or another path)")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the folder for the {what} ({exc.strerror or exc})") from None
    _probe_folder(folder, path, what)


def _check_writable_folder(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the {what} go into a folder, and this is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the folder for the {what} ({exc.strerror or exc})") from None
    _probe_folder(folder, folder, what)


def _probe_folder(folder: Path, named: Path, what: str) -> None:
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".facerecon-probe.", dir=folder)
    except OSError as exc:
        raise InputError(f"{named}: cannot write the {what} there ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def predict(
    inputs: List[str] = typer.Argument(None, help="Image files, folders or globs; or one video file (.mp4, .avi, .mov, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="A mesh file (.obj, .ply, .glb, .off, .stl) for one image; a folder for several, or for a video / camera."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model checkpoint. Default: the model shipped with facerecon."),
    fmt: str = typer.Option("obj", "--format", help="Mesh format in folder / video mode: obj, ply, glb, off, stl."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Draw the mesh and landmarks over the photo: a PNG path for one image, a folder for several."),
    overlay_mode: str = typer.Option("shaded", "--overlay-mode", help="shaded | wireframe."),
    stages: bool = typer.Option(False, "--stages", help="Also write the mesh after each block, coarse to fine (<name>.stage<l>.<ext>)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="One mesh per detected face (<name>_<k>) instead of the most confident face."),
    require_face: bool = typer.Option(False, "--require-face", help="Treat an image with no detected face as an error instead of using the average crop."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Minimum MTCNN face probability."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Faces per network forward pass in folder mode."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look for images in sub-folders too."),
    camera: Optional[int] = typer.Option(None, "--camera", help="Read frames from this camera (0: the first) instead of files; Ctrl-C stops."),
    every: int = typer.Option(1, "--every", min=1, help="Video / camera: reconstruct every Nth frame."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Video / camera: stop after this many frames reconstructed."),
) -> None:
    """Reconstruct a 3D face mesh from each photo, or from the frames of a video or a camera.

    Meshes are in the photo's pixel frame (x right, y down, z away from the camera, px), coloured from it.

    Beside each mesh, a JSON record: crop box, detection probability, 68 3D landmarks, head pose.

    A video or camera gives one mesh per frame (frame_000123.obj; --every N) and one frames.jsonl.
    """
    _passive_openmp_when_busy()
    from facerecon.allocator import retain_freed_memory

    retain_freed_memory()  # before torch loads: what imports and loading free is reused without page faults
    written: list[Path] = []
    kept = lambda: f"stopped after {len(written)} file(s); no partial file left; run the same command again to redo the rest"  # noqa: E731
    with interruptible(kept):  # Ctrl-C / SIGTERM (facerecon.signals): 130 / 143; atomic writes remove their temporaries
        _predict(
            inputs or [], output, checkpoint, fmt, overlay, overlay_mode, stages, all_faces, require_face,
            min_probability, batch_size, device, recursive, camera, every, max_frames, written,
        )


def _predict(
    inputs: list[str], output: Path, checkpoint: Optional[Path], fmt: str, overlay: Optional[Path], overlay_mode: str,
    stages: bool, all_faces: bool, require_face: bool, min_probability: float, batch_size: int, device: str,
    recursive: bool, camera: Optional[int], every: int, max_frames: Optional[int], written: list[Path],
) -> None:
    from facerecon.mesh.export import MESH_FORMATS

    if overlay_mode not in ("shaded", "wireframe"):
        raise InputError(f"--overlay-mode {overlay_mode!r}: use shaded or wireframe")
    ext = "." + fmt.lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(m.lstrip('.') for m in MESH_FORMATS)}")
    if camera is not None and inputs:
        raise InputError("--camera reads frames from a camera: give no input files with it")
    if camera is None and not inputs:
        raise InputError("no input given: name image files, folders, globs or a video (or use --camera N)")
    video = camera is not None or (len(inputs) == 1 and Path(inputs[0]).suffix.lower() in VIDEO_SUFFIXES)
    for item in inputs:
        if not any(ch in item for ch in "*?[") and not Path(item).exists():
            raise InputError(f"{item}: no such file or folder")
    if video:
        _predict_video(
            None if camera is not None else Path(inputs[0]), camera, output, checkpoint, ext, stages, min_probability,
            device, every, max_frames, written,
        )
        return

    from facerecon.imageio import expand_image_inputs, image_size

    paths = expand_image_inputs(inputs, recursive=recursive)
    if not paths:
        raise InputError(f"no images found in {' '.join(inputs)}")
    single = len(paths) == 1 and Path(inputs[0]).is_file() and len(inputs) == 1
    if single and output.suffix.lower() not in MESH_FORMATS:
        if output.suffix and not output.is_dir():
            raise InputError(f"{output}: unknown mesh format {output.suffix!r} (use {', '.join(MESH_FORMATS)})")
        single = False  # a folder for one image
    if not single and output.exists() and not output.is_dir():
        raise InputError(f"{output}: several images need an output folder, and this is a file")
    # every output place is checked before the model loads and anything runs
    if single:
        _check_writable(output, "mesh")
        if overlay is not None:
            _check_writable(overlay, "overlay")
    else:
        _check_writable_folder(output, "meshes")
        if overlay is not None:
            _check_writable_folder(overlay, "overlays")

    import torch

    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, resolve_checkpoint, write_result
    from facerecon.engine.predict import load_photo as load_image

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    ckpt = resolve_checkpoint(checkpoint)
    if checkpoint is None:
        info(f"using the default model shipped with facerecon ({ckpt.name})")
    t_load = time.perf_counter()
    detector = FaceDetector(device=device, min_probability=min_probability)
    model = _load_while_detector_warms(ckpt, device, detector, image_size(paths[0]))
    t_load = time.perf_counter() - t_load
    predictor = Predictor(model, detector, all_faces=all_faces, batch_size=batch_size if not single else 1)

    failed: list[tuple[Path, str]] = []
    no_face: list[Path] = []
    t_start = time.perf_counter()

    def targets(source: Path, k: int) -> tuple[Path, Path | None]:
        suffix = "" if k == 0 else f"_{k}"
        if single:
            mesh = output if k == 0 else output.with_name(f"{output.stem}{suffix}{output.suffix}")
            ov = None
            if overlay is not None:
                ov = overlay if k == 0 else overlay.with_name(f"{overlay.stem}{suffix}{overlay.suffix}")
            return mesh, ov
        mesh = output / f"{source.stem}{suffix}{ext}"
        ov = None if overlay is None else overlay / f"{source.stem}{suffix}.png"
        return mesh, ov

    # Faces waiting for the network: crops and colour sources only (PreparedFace), never the
    # decoded photos, so memory does not grow with the batch size or the number of images.
    pending: list = []
    kept_image: dict[Path, object] = {}  # single mode: the one photo, for its overlay

    def flush() -> None:
        if not pending:
            return
        results = predictor.reconstruct(pending)
        t0 = time.perf_counter()
        for result in results:
            mesh_path, ov_path = targets(result.source, result.face_index)
            image = None
            if ov_path is not None:
                image = kept_image.get(result.source)
                if image is None:
                    image = load_image(result.source)  # decoded again, one at a time
            written.extend(write_result(result, mesh_path, ov_path, stages=stages, image=image, overlay_mode=overlay_mode))
            del image
        predictor.timings.export += time.perf_counter() - t0
        pending.clear()

    with make_progress(disable=single) as bar:
        task = bar.add_task("predict", total=len(paths), unit="img")
        for path in paths:
            try:
                t0 = time.perf_counter()
                image = load_image(path)
                predictor.timings.decode += time.perf_counter() - t0
                crops = predictor.crops_of(image)
                if crops[0].fallback:
                    if require_face:
                        raise InputError(f"{path}: no face found (--require-face)")
                    no_face.append(path)
                pending.extend(predictor.prepare(path, image, crops))
                if single:
                    kept_image[path] = image
                del image
                predictor.timings.images += 1
                if len(pending) >= predictor.batch_size:
                    flush()
            except FaceReconError as exc:
                if single:
                    raise
                failed.append((path, str(exc)))
            except OSError as exc:  # e.g. a full disk while writing: name the file, go on with the others
                if single:
                    raise
                failed.append((path, f"{exc.filename or path}: {exc.strerror or exc}"))
                pending.clear()
            bar.advance(task)
        flush()

    elapsed = time.perf_counter() - t_start
    t = predictor.timings
    for path in no_face:
        err_console.print(f"[yellow]warning:[/yellow] {display_path(path)}: no face found; used the average crop", highlight=False, soft_wrap=True)
    for path, why in failed:
        err_console.print(f"[red]failed:[/red] {' '.join(why.split())}", highlight=False, soft_wrap=True)
    if single:
        console.print(f"wrote {', '.join(display_path(p) for p in written)}", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"{t.images} image(s), {t.faces} face(s) -> {display_path(output)}; "
            f"{len(no_face)} without a detected face, {len(failed)} failed",
            highlight=False, soft_wrap=True,
        )
    if state.verbose and t.images:
        n = t.images
        info(
            f"time per image: {t.per_item(n)}; {n / elapsed:.2f} images/s overall "
            f"(model and detector loaded in {1000 * t_load:.0f} ms; first calls include one-off warm-up)"
        )
    if failed:
        raise typer.Exit(1)


def _predict_video(
    path: Optional[Path], camera: Optional[int], output: Path, checkpoint: Optional[Path], ext: str, stages: bool,
    min_probability: float, device: str, every: int, max_frames: Optional[int], written: list[Path],
) -> None:
    from facerecon.mesh.export import MESH_FORMATS

    if output.suffix.lower() in MESH_FORMATS and not output.is_dir():
        raise InputError(f"{output}: a video or camera gives one mesh per frame; give an output folder")
    _check_writable_folder(output, "meshes")

    import torch

    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import resolve_checkpoint
    from facerecon.engine.video import VideoPredictor, open_frames

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    frames = open_frames(path, camera)  # a clear InputError for an unreadable file or a missing camera
    ckpt = resolve_checkpoint(checkpoint)
    if checkpoint is None:
        info(f"using the default model shipped with facerecon ({ckpt.name})")
    detector = FaceDetector(device=device, min_probability=min_probability)
    model = _load_while_detector_warms(ckpt, device, detector, frames.size)
    runner = VideoPredictor(model, detector=detector, every=every, mesh_format=ext, stages=stages)
    total = frames.frame_count
    if total is not None:
        total = -(-total // every)
        if max_frames is not None:
            total = min(total, max_frames)
    with make_progress() as bar:
        task = bar.add_task("frames", total=total, unit="frame")
        summary = runner.run(frames, output, max_frames=max_frames, on_frame=lambda: bar.advance(task), written=written)
    s = summary
    console.print(
        f"{s.frames} frame(s) -> {display_path(output)} ({display_path(s.jsonl)}): {s.detections} detection(s), "
        f"{s.tracked} tracked, {s.no_face} without a face; {s.fps:.1f} frames/s",
        highlight=False, soft_wrap=True,
    )
    if state.verbose and s.frames:
        n = s.frames
        info(f"time per frame: {s.per_item(n)}")


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel="Model")(predict)
