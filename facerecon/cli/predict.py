"""``facerecon predict``: photos, videos or a camera -> 3D face meshes in the pixel frame."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from facerecon.cli._common import console, display_path, err_console, info, make_progress, state
from facerecon.errors import InputError
from facerecon.mesh_formats import mesh_suffixes
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
    from facerecon.machine import machine_busy

    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    if machine_busy():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def predict(  # over 60 lines: one line per command-line option (typer reads them from the signature)
    inputs: List[str] = typer.Argument(None, help="Image files, folders or globs; or one video file (.mp4, .avi, .mov, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help=f"A mesh file ({', '.join(mesh_suffixes())}) for one image; a folder for several, or for a video / camera."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model: a checkpoint (.pt) or an exported network (.onnx). Default: the model shipped with facerecon."),
    fmt: str = typer.Option("obj", "--format", help=f"Mesh format in folder / video mode: {', '.join(mesh_suffixes()).replace('.', '')}."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Draw the mesh and landmarks over the photo: a PNG path for one image, a folder for several."),
    overlay_mode: str = typer.Option("shaded", "--overlay-mode", help="shaded | wireframe | dense (every vertex as a dot)."),
    stages: bool = typer.Option(False, "--stages", help="Also write the mesh after each block, coarse to fine (<name>.stage<l>.<ext>)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="One mesh per detected face (<name>_<k>) instead of the most confident face."),
    require_face: bool = typer.Option(False, "--require-face", help="Treat an image with no detected face as an error instead of using the average crop (a video: frames without a face get no mesh; an error when none has one)."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Minimum MTCNN face probability."),
    min_face: float = typer.Option(32.0, "--min-face", min=12.0, help="With --all-faces: the smallest face searched for, px of the photo scaled to at most 1024 px on its longer side (smaller ones cost most of the search)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Faces per network forward pass in folder mode."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | torch. auto: ONNX Runtime for the shipped model or a .onnx file on the CPU (no torch), PyTorch for a .pt checkpoint or --device cuda."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look for images in sub-folders too."),
    camera: Optional[int] = typer.Option(None, "--camera", help="Read frames from this camera (0: the first) instead of files; Ctrl-C stops."),
    every: int = typer.Option(1, "--every", min=1, help="Video / camera: reconstruct every Nth frame."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Video / camera: stop after this many frames reconstructed."),
    texture: bool = typer.Option(False, "--texture", help="Texture the mesh with the photo (.obj + .mtl + <stem>.texture.png, or .glb); hidden parts grey."),
    uv_texture: Optional[Path] = typer.Option(None, "--uv-texture", help="The face's colours in the template's fixed UV layout, alpha = seen: a PNG for one image, a folder for several."),
    maps: Optional[str] = typer.Option(None, "--maps", help="Per-photo maps, comma-separated: depth (16-bit), pncc, normals -> <stem>.<map>.png."),
    dense_points: bool = typer.Option(False, "--dense-points", help="Put every vertex's 2D position (image px) into the JSON record."),
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

    def kept() -> str:  # read when a signal stops the run
        return f"stopped after {len(written)} file(s); no partial file left; run the same command again to redo the rest"

    with interruptible(kept):  # Ctrl-C / SIGTERM (facerecon.signals): 130 / 143; atomic writes remove their temporaries
        _predict(
            inputs or [], output, checkpoint, fmt, overlay, overlay_mode, stages, all_faces, require_face,
            min_probability, batch_size, device, recursive, camera, every, max_frames, written,
            _extra_outputs(texture, uv_texture, maps, dense_points), runtime, min_face,
        )


def _predict(
    inputs: list[str], output: Path, checkpoint: Optional[Path], fmt: str, overlay: Optional[Path], overlay_mode: str,
    stages: bool, all_faces: bool, require_face: bool, min_probability: float, batch_size: int, device: str,
    recursive: bool, camera: Optional[int], every: int, max_frames: Optional[int], written: list[Path],
    extras: Any = None, runtime: str = "auto", min_face: float = 32.0,
) -> None:
    from facerecon.api import choose_runtime

    runtime = choose_runtime(runtime, checkpoint, device)  # an impossible choice is refused before anything loads

    if overlay_mode not in ("shaded", "wireframe", "dense"):
        raise InputError(f"--overlay-mode {overlay_mode!r}: use shaded, wireframe or dense")
    ext = "." + fmt.lower().lstrip(".")
    if ext not in mesh_suffixes():
        raise InputError(f"--format {fmt!r}: use one of {', '.join(m.lstrip('.') for m in mesh_suffixes())}")
    if camera is not None and inputs:
        raise InputError("--camera reads frames from a camera: give no input files with it")
    if camera is None and not inputs:
        raise InputError("no input given: name image files, folders, globs or a video (or use --camera N)")
    missing = [item for item in inputs if not any(ch in item for ch in "*?[") and not Path(item).exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    if camera is not None or (len(inputs) == 1 and Path(inputs[0]).suffix.lower() in VIDEO_SUFFIXES):
        video = None if camera is not None else Path(inputs[0])
        _predict_video(
            video, camera, output, checkpoint, ext, stages, min_probability, device, every, max_frames, written,
            require_face, runtime, extras,
        )
        return

    if len(inputs) == 1 and Path(inputs[0]).is_file():  # one photo above the pixel limit: refused before
        _warm_up_size(Path(inputs[0]), refuse=True)  # the libraries load (engine.photos: ~700 MB of imports)
    from facerecon.engine.photos import plan_photos, write_photos

    job = plan_photos(inputs, output, overlay, ext, recursive)  # every output place checked before the model loads
    if extras is not None:
        _check_extra_outputs(extras, job)
    first_size = _warm_up_size(job.photos[0], refuse=job.single)  # from the header, before the model loads
    t_load = time.perf_counter()
    rec = _reconstructor(
        checkpoint, device, min_probability, first_size, all_faces=all_faces, min_face=min_face,
        batch_size=1 if job.single else batch_size, runtime=runtime,
    )
    t_load = time.perf_counter() - t_load
    with make_progress(disable=job.single) as bar:
        task = bar.add_task("predict", total=len(job.photos), unit="img")
        summary = write_photos(
            rec.predictor, job, require_face=require_face, stages=stages, overlay_mode=overlay_mode,
            on_photo=lambda: bar.advance(task), written=written, extras=extras,
        )
    _report_photos(summary, job, rec.predictor.timings, t_load, written)


def _warm_up_size(path: Path, refuse: bool) -> tuple[int, int] | None:
    """The first photo's size from its header, to size MTCNN's warm-up. A photo above the pixel
    limit is refused here when it is the only one (``refuse``), before 1.7 GB of warm-up buffers
    for 256 MP; in a folder it gets no warm-up (it is listed as unreadable when its turn comes)."""
    from facerecon.imageio import check_image_size

    try:
        return check_image_size(path)
    except InputError:
        if refuse:
            raise
        return None


def _extra_outputs(texture: bool, uv_texture: Optional[Path], maps: Optional[str], dense_points: bool) -> Any:
    """The optional outputs asked for (:class:`facerecon.engine.outputs.ExtraOutputs`), or None."""
    if not (texture or uv_texture is not None or maps is not None or dense_points):
        return None
    from facerecon.engine.outputs import ExtraOutputs

    kinds: tuple[str, ...] = ()
    if maps is not None:
        from facerecon.mesh.maps import parse_map_kinds

        kinds = parse_map_kinds(maps)
    return ExtraOutputs(texture=texture, uv_texture=uv_texture, maps=kinds, dense_points=dense_points)


def _check_extra_outputs(extras: Any, job: Any) -> None:
    """The texture's mesh format and the UV textures' place, checked before the model loads."""
    from facerecon.io_utils import check_writable_file, check_writable_folder

    extras.check(job.output.suffix if job.single else job.suffix)
    if extras.uv_texture is None:
        return
    if job.single:
        if extras.uv_texture.suffix.lower() != ".png":
            raise InputError(f"--uv-texture {extras.uv_texture}: for one image, give a .png file")
        check_writable_file(extras.uv_texture, "UV texture")
    elif extras.uv_texture.suffix.lower() == ".png" and not extras.uv_texture.is_dir():
        raise InputError(f"--uv-texture {extras.uv_texture}: several images need a folder of UV textures")
    else:
        check_writable_folder(extras.uv_texture, "UV textures")


def _reconstructor(
    checkpoint: Optional[Path], device: str, min_probability: float, first_size: tuple[int, int] | None, **kwargs: Any
) -> Any:
    """The model and detector (:class:`facerecon.api.Reconstructor`), saying which model is used."""
    from facerecon.api import Reconstructor

    rec = Reconstructor(checkpoint, device=device, min_probability=min_probability, warm_up_size=first_size, **kwargs)
    if checkpoint is None:
        info(f"using the default model shipped with facerecon ({Path(rec.checkpoint).name}, {rec.runtime} runtime)")
    return rec


def _report_photos(summary: Any, job: Any, t: Any, t_load: float, written: list[Path]) -> None:
    """The warnings, failures and the one summary line of a photo run; exit 1 when any failed."""
    for path in summary.no_face:
        err_console.print(f"[yellow]warning:[/yellow] {display_path(path)}: no face found; used the average crop", highlight=False, soft_wrap=True)
    for _path, why in summary.failed:
        err_console.print(f"[red]failed:[/red] {' '.join(why.split())}", highlight=False, soft_wrap=True)
    if job.single:
        console.print(f"wrote {', '.join(display_path(p) for p in written)}", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"{summary.images} image(s), {summary.faces} face(s) -> {display_path(job.output)}; "
            f"{len(summary.no_face)} without a detected face, {len(summary.failed)} failed",
            highlight=False, soft_wrap=True,
        )
    if state.verbose and summary.images:
        n = summary.images
        info(
            f"time per image: {t.per_item(n)}; {n / summary.elapsed:.2f} images/s overall "
            f"(model and detector loaded in {1000 * t_load:.0f} ms; first calls include one-off warm-up)"
        )
    if summary.failed:
        raise typer.Exit(1)


def _predict_video(
    path: Optional[Path], camera: Optional[int], output: Path, checkpoint: Optional[Path], ext: str, stages: bool,
    min_probability: float, device: str, every: int, max_frames: Optional[int], written: list[Path],
    require_face: bool = False, runtime: str = "auto", extras: Any = None,
) -> None:
    from facerecon.engine.video import open_frames
    from facerecon.io_utils import check_writable_folder

    if output.suffix.lower() in mesh_suffixes() and not output.is_dir():
        raise InputError(f"{output}: a video or camera gives one mesh per frame; give an output folder")
    check_writable_folder(output, "meshes")
    if extras is not None:  # as for a folder of photos: one file per frame, UV textures in a folder
        extras.check(ext)
        if extras.uv_texture is not None:
            if extras.uv_texture.suffix.lower() == ".png" and not extras.uv_texture.is_dir():
                raise InputError(f"--uv-texture {extras.uv_texture}: a video needs a folder of UV textures (one per frame)")
            check_writable_folder(extras.uv_texture, "UV textures")
    frames = open_frames(path, camera)  # a clear InputError for an unreadable file or a missing camera
    rec = _reconstructor(checkpoint, device, min_probability, frames.size, batch_size=1, runtime=runtime)
    runner = rec.video_runner(every=every, mesh_format=ext, stages=stages, require_face=require_face)
    runner.extras = extras
    total = frames.frame_count
    if total is not None:
        total = -(-total // every)
        if max_frames is not None:
            total = min(total, max_frames)
    with make_progress() as bar:
        task = bar.add_task("frames", total=total, unit="frame")
        s = runner.run(frames, output, max_frames=max_frames, on_frame=lambda: bar.advance(task), written=written)
    _report_faceless_frames(s, path if path is not None else f"camera {camera}", require_face)
    console.print(
        f"{s.frames} frame(s) -> {display_path(output)} ({display_path(s.jsonl)}): {s.detections} detection(s), "
        f"{s.tracked} tracked, {s.no_face} without a face; {s.fps:.1f} frames/s",
        highlight=False, soft_wrap=True,
    )
    if state.verbose and s.frames:
        info(f"time per frame: {s.per_item(s.frames)}")


def _report_faceless_frames(s: Any, source: Any, require_face: bool) -> None:
    """Frames without a face: one warning line (their meshes come from the fallback crop, or,
    with --require-face, they have none); no face in any frame with --require-face: exit 2."""
    if not s.no_face:
        return
    seen = s.frames + s.no_face if require_face else s.frames
    if require_face and s.frames == 0:
        s.jsonl.unlink(missing_ok=True)  # empty: nothing was reconstructed
        raise InputError(f"{source}: no face found in any of its {seen} frame(s) (--require-face); no mesh written")
    what = "have no mesh (--require-face)" if require_face else "use the average crop (fallback in frames.jsonl; --require-face skips them)"
    err_console.print(f"[yellow]warning:[/yellow] {s.no_face} of {seen} frame(s) without a detected face {what}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel="Model")(predict)
