"""``facerecon prepare``: a raw dataset into one HDF5 cache (crops + dense ground truth)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from facerecon.cli._common import console, display_path, info, make_progress
from facerecon.errors import InputError
from facerecon.signals import interruptible

ORDER = 10


def prepare(
    dataset: Optional[Path] = typer.Argument(
        None, help="Dataset folder: AFLW2000-3D (NAME.jpg + NAME.mat), 300W-LP (AFW/ HELEN/ IBUG/ LFPW/ and *_Flip) or scans (NAME.jpg + NAME.ply/.obj/.npy).",
        show_default=False,
    ),
    output: Optional[Path] = typer.Argument(None, help="The cache to write (.h5). Written as OUTPUT.partial and renamed when complete.", show_default=False),
    face_model: Optional[Path] = typer.Option(
        None, "--face-model", "-m",
        help="Face model for 3DMM datasets: a folder (reduced 3DDFA u_shp.npy...; or 01_MorphableModel.mat + Model_Expression.mat), face3d's BFM.mat, or a converted .npz. See docs/datasets.md.",
        show_default=False,
    ),
    fmt: str = typer.Option("auto", "--format", help="Dataset layout: auto, aflw2000, 300wlp or scans."),
    crop_from: str = typer.Option("detector", "--crop-from", help="detector: MTCNN boxes as at inference (no face: running mean box of the faces so far). landmarks: the ground-truth landmark box enlarged 1.1x (fast, no detector)."),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help="Processes computing samples (0: in this process). The main process alone writes."),
    device: str = typer.Option("cpu", "--device", help="Torch device for MTCNN."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Ignore MTCNN faces below this probability."),
    second_chance: bool = typer.Option(True, "--second-chance/--no-second-chance", help="As predict does: a face the full search finds below p 0.995 is checked on copies turned by +-45 degrees; when it finds no face, copies rotated by +-45, +-30 and +-60 degrees, then lower stage thresholds, are tried before the average crop."),
    compression: str = typer.Option("gzip", "--compression", help="Compression of the crop images: gzip, lzf or none (point arrays stay uncompressed for fast loading)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val/test split (80/10/10 %: 1600/200/200 for AFLW2000-3D)."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="Text file of '<id> <train|val|test>' lines instead of the seeded split.", show_default=False),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N samples (sorted order).", show_default=False),
    flush_every: int = typer.Option(32, "--flush-every", min=1, help="Samples between progress markers (what a resumed run keeps)."),
    profile_views: int = typer.Option(
        0, "--profile-views", min=0, max=255,
        help="Add N face-profiled views per training sample of a face-model dataset (turned further in yaw up to 90 degrees, detected and cropped like a photo; seeded by --seed; see docs/profiling.md). Validation and test samples get none.",
    ),
    save_face_model_to: Optional[Path] = typer.Option(
        None, "--convert-face-model", metavar="OUT.npz",
        help="Convert --face-model to our .npz (fast to load) and exit; DATASET and OUTPUT are then not needed.",
        show_default=False,
    ),
) -> None:
    """Turn a raw dataset into one HDF5 cache for training.

    Per image: the 224x224 crop (MTCNN box enlarged 1.1x, or the landmark box), the dense ground
    truth in the crop frame (points, outward normals, region labels 0/1/2 by distance to the
    nearest landmark in mm, colours), 68 landmarks, pose, box, detection probability and a
    train/val/test split. Resumable: stopped at any point (Ctrl-C, kill), the same command
    continues from OUTPUT.partial. Bad samples are reported and skipped.
    """
    from facerecon.data.cache import PrepareOptions
    from facerecon.data.readers import detect_format, list_samples

    if save_face_model_to is not None:
        _convert_face_model(face_model, save_face_model_to)
        return
    if dataset is None or output is None:
        raise InputError("give DATASET and OUTPUT (or --convert-face-model)")
    if crop_from not in ("detector", "landmarks"):
        raise InputError(f"--crop-from must be detector or landmarks, got {crop_from!r}")
    fmt = detect_format(dataset) if fmt == "auto" else fmt
    refs = list_samples(dataset, fmt)
    options = PrepareOptions(
        crop_from=crop_from, workers=workers, device=device, min_probability=min_probability, second_chance=second_chance,
        compression=compression, split_seed=seed, split_file=split_file, limit=limit, flush_every=flush_every,
        profile_views=profile_views,
    )
    summary = _run(refs, dataset, output, face_model, options, fmt)
    _print_summary(summary, profile_views)


def _convert_face_model(face_model: Optional[Path], out: Path) -> None:
    """``--convert-face-model``: the face model saved as our ``.npz``."""
    from facerecon.data.face_model import load_face_model, save_face_model

    if face_model is None:
        raise InputError("--convert-face-model needs --face-model (the model to convert)")
    model = load_face_model(face_model)
    save_face_model(model, out)
    console.print(f"wrote {display_path(out)}: {model.name}, {model.n_vertices} vertices, sha256 {model.sha256[:12]}")


def _run(refs: list[Any], dataset: Path, output: Path, face_model: Optional[Path], options: Any, fmt: str) -> Any:
    """``prepare_cache`` with a progress bar for the samples and one for the profiled views;
    Ctrl-C / SIGTERM stop it with a line saying how to resume."""
    from facerecon.data.cache import partial_path, prepare_cache

    total = min(len(refs), options.limit) if options.limit else len(refs)
    info(f"{display_path(dataset)}: {fmt}, {total} samples -> {display_path(output)}")
    command = shlex.join(["facerecon", *sys.argv[1:]]) if sys.argv else "facerecon prepare"
    kept = lambda: f"{display_path(partial_path(output))} keeps the samples done; run the same command again to resume"  # noqa: E731  (read when a signal stops the run)
    with interruptible(kept), make_progress() as progress:  # Ctrl-C / SIGTERM: 130 / 143, the partial file closed
        task = progress.add_task("prepare", total=total, unit="samples")

        def on_progress(done: int, n: int, skipped: int) -> None:
            progress.update(task, completed=done, description=f"prepare ({skipped} skipped)" if skipped else "prepare")

        views_task = None

        def on_views(done: int, n: int) -> None:
            nonlocal views_task
            if views_task is None:
                views_task = progress.add_task("profiled views", total=n, unit="samples")
            progress.update(views_task, completed=done)

        return prepare_cache(
            refs, output, face_model, options, dataset=str(dataset.resolve()), fmt=fmt, command=command, on_progress=on_progress,
            on_views=on_views,
        )


def _print_summary(summary: Any, profile_views: int) -> None:
    """What was written, the views added and the samples skipped (the first 20 of each)."""
    if summary.resumed_from:
        info(f"resumed after {summary.resumed_from} samples")
    train, val, test = summary.split_counts
    console.print(
        f"wrote {display_path(summary.path)}: {summary.n_written} samples "
        f"(train {train}, val {val}, test {test}; {summary.n_fallback} fallback crops), "
        f"{summary.file_bytes / 1e6:.1f} MB in {summary.seconds:.1f} s"
    )
    if profile_views:
        console.print(f"added {summary.n_views} profiled views ({profile_views} per training sample)")
        for reason in summary.view_failures[:20]:
            console.print(f"  no views: {reason}", highlight=False, markup=False)
    if summary.skipped:
        console.print(f"[yellow]skipped {len(summary.skipped)} bad sample(s):[/yellow]")
        for sid, reason in summary.skipped[:20]:
            console.print(f"  {sid}: {reason}", highlight=False, markup=False)
        if len(summary.skipped) > 20:
            console.print(f"  ... and {len(summary.skipped) - 20} more (stored in the cache under skipped/)")

def register(app: typer.Typer) -> None:
    app.command("prepare", help="Turn a raw dataset (AFLW2000-3D, 300W-LP, scans) into one HDF5 training cache.", rich_help_panel="Data")(prepare)
