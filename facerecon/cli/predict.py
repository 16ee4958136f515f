"""``facerecon predict``: photos -> 3D face meshes in the photos' pixel frame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from facerecon.cli._common import console, display_path, err_console, info, make_progress, state
from facerecon.errors import FaceReconError, InputError

ORDER = 60


def predict(
    inputs: List[str] = typer.Argument(..., help="Image files, folders or globs."),
    output: Path = typer.Option(..., "--output", "-o", help="A mesh file (.obj, .ply, .glb, .off, .stl) for one image; a folder for several."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model checkpoint. Default: the model shipped with facerecon."),
    fmt: str = typer.Option("obj", "--format", help="Mesh format in folder mode: obj, ply, glb, off, stl."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Draw the mesh and landmarks over the photo: a PNG path for one image, a folder for several."),
    overlay_mode: str = typer.Option("shaded", "--overlay-mode", help="shaded | wireframe."),
    stages: bool = typer.Option(False, "--stages", help="Also write the mesh after each block, coarse to fine (<name>.stage<l>.<ext>)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="One mesh per detected face (<name>_<k>) instead of the most confident face."),
    require_face: bool = typer.Option(False, "--require-face", help="Treat an image with no detected face as an error instead of using the average crop."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Minimum MTCNN face probability."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Faces per network forward pass in folder mode."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look for images in sub-folders too."),
) -> None:
    """Reconstruct a 3D face mesh from each photo.

    The mesh is in the original photo's pixel frame (x right, y down, z away from the camera, px),
    so it overlays the photo; vertex colours come from the photo. A JSON file beside each mesh
    holds the crop box, detection probability, 68 3D landmarks, head pose (yaw, pitch, roll) and
    whether the average crop was used because no face was found.
    """
    import torch

    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, load_model, resolve_checkpoint, write_result
    from facerecon.imageio import expand_image_inputs, load_image
    from facerecon.mesh.export import MESH_FORMATS

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if overlay_mode not in ("shaded", "wireframe"):
        raise InputError(f"--overlay-mode {overlay_mode!r}: use shaded or wireframe")
    ext = "." + fmt.lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(m.lstrip('.') for m in MESH_FORMATS)}")
    for item in inputs:
        if not any(ch in item for ch in "*?[") and not Path(item).exists():
            raise InputError(f"{item}: no such file or folder")
    paths = expand_image_inputs(inputs, recursive=recursive)
    if not paths:
        raise InputError(f"no images found in {' '.join(inputs)}")
    single = len(paths) == 1 and Path(inputs[0]).is_file() and len(inputs) == 1
    if single and output.suffix.lower() not in MESH_FORMATS:
        if output.suffix:
            raise InputError(f"{output}: unknown mesh format {output.suffix!r} (use {', '.join(MESH_FORMATS)})")
        single = False  # a folder for one image
    if not single and output.exists() and not output.is_dir():
        raise InputError(f"{output}: several images need an output folder, and this is a file")

    ckpt = resolve_checkpoint(checkpoint)
    if checkpoint is None:
        info(f"using the default model shipped with facerecon ({ckpt.name})")
    model = load_model(ckpt, device)
    detector = FaceDetector(device=device, min_probability=min_probability)
    predictor = Predictor(model, detector, all_faces=all_faces, batch_size=batch_size if not single else 1)

    failed: list[tuple[Path, str]] = []
    no_face: list[Path] = []
    written: list[Path] = []
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

    pending: list[tuple[Path, object, object, int]] = []

    def flush() -> None:
        if not pending:
            return
        results = predictor.reconstruct(pending)
        t0 = time.perf_counter()
        for (source, image, _, k), result in zip(pending, results):
            mesh_path, ov_path = targets(source, k)
            written.extend(write_result(result, mesh_path, ov_path, stages=stages, image=image, overlay_mode=overlay_mode))
        predictor.timings.export += time.perf_counter() - t0
        pending.clear()

    with make_progress(disable=single) as bar:
        task = bar.add_task("predict", total=len(paths), unit="img")
        for path in paths:
            try:
                image = load_image(path)
                crops = predictor.crops_of(image)
                if crops[0].fallback:
                    if require_face:
                        raise InputError(f"{path}: no face found (--require-face)")
                    no_face.append(path)
                for k, crop in enumerate(crops):
                    pending.append((path, image, crop, k))
                predictor.timings.images += 1
                if len(pending) >= predictor.batch_size:
                    flush()
            except FaceReconError as exc:
                if single:
                    raise
                failed.append((path, str(exc)))
            bar.advance(task)
        flush()

    elapsed = time.perf_counter() - t_start
    t = predictor.timings
    for path in no_face:
        err_console.print(f"[yellow]warning:[/yellow] {display_path(path)}: no face found; used the average crop", highlight=False)
    for path, why in failed:
        err_console.print(f"[red]failed:[/red] {why}", highlight=False)
    if single:
        console.print(f"wrote {', '.join(display_path(p) for p in written)}")
    else:
        console.print(
            f"{t.images} image(s), {t.faces} face(s) -> {display_path(output)}; "
            f"{len(no_face)} without a detected face, {len(failed)} failed"
        )
    if state.verbose and t.images:
        info(
            f"time per image: detection {1000 * t.detect / t.images:.0f} ms, network {1000 * t.network / t.images:.0f} ms, "
            f"export {1000 * t.export / t.images:.0f} ms; {t.images / elapsed:.2f} images/s overall"
        )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel="Model")(predict)
