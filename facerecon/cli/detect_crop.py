"""``facerecon detect-crop``: find the face in each photo (MTCNN) and write the network's crops."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import typer

from facerecon.cli._common import console, display_path, info, make_progress
from facerecon.crop_records import RECORDS_CSV, RECORDS_JSONL
from facerecon.errors import FaceReconError, InputError
from facerecon.signals import interruptible

ORDER = 20

_HELP = (
    "Detect faces (MTCNN) and write square crops for the network.\n\n"
    "Each crop is the detection box enlarged 1.1x about its centre, made square and resized to --size px, "
    "taken from the original photo (black where the box leaves the image). Writes OUTDIR/<stem>.jpg per image "
    "(<stem>_<k>.jpg with --all-faces) and one record per crop in OUTDIR/crops.jsonl (or crops.csv): source, "
    "image size, crop box (image px), probability, five landmarks, fallback flag and output file.\n\n"
    "Images without a face get the fallback crop, flagged in the record. Unreadable files are reported and "
    "skipped; the exit code is then 1."
)


def detect_crop(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Image files, folders (images inside) or glob patterns such as 'photos/*.jpg'.",
        show_default=False,
    ),
    outdir: Path = typer.Option(..., "--output", "-o", help="Output folder for the crops and the records file."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Keep every face (<stem>_<k>.<ext>), not only the most confident."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Ignore detections below this MTCNN probability."),
    size: int = typer.Option(224, "--size", min=8, max=4096, help="Side of the square crops, px."),
    device: str = typer.Option("cpu", "--device", help="Where MTCNN runs: cpu (ONNX Runtime), cuda, cuda:1, ... (PyTorch)."),
    max_detect_side: int = typer.Option(1024, "--max-detect-side", min=32, help="Detect on a copy whose longer side is at most this many px; crops come from the original."),
    min_face: float = typer.Option(32.0, "--min-face", min=12.0, help="The smallest face searched for, px of that copy (smaller ones cost most of the search)."),
    fallback_box: Optional[tuple[float, float, float]] = typer.Option(
        None, "--fallback-box", metavar="CX CY SIDE",
        help="Crop used when no face is found, relative to the image: centre CX/W, CY/H and side/min(W,H). Default: 0.5 0.5 1 (the largest centred square).",
        show_default=False,
    ),
    fallback_mean: bool = typer.Option(False, "--fallback-mean", help="Use the mean box of the faces found in this run as the fallback crop (for a dataset of similar photos)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take images in sub-folders of INPUT folders."),
    fmt: str = typer.Option("jpg", "--format", help="Crop file format: jpg or png."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality."),
    as_csv: bool = typer.Option(False, "--csv", help=f"Write the records as {RECORDS_CSV} instead of {RECORDS_JSONL}."),
) -> None:
    """Detect faces (MTCNN) and write square crops for the network.

    Each crop is the detection box enlarged 1.1x about its centre, made square and resized to
    --size px, taken from the original photo (black where the box leaves the image). Writes
    OUTDIR/<stem>.jpg per image (<stem>_<k>.jpg with --all-faces) and one record per crop in
    OUTDIR/crops.jsonl (or crops.csv): source, image size, crop box (image px), probability,
    five landmarks, fallback flag and output file.

    Images without a face get the fallback crop, flagged in the record. Unreadable files are
    reported and skipped; the exit code is then 1.
    """
    fmt, paths = _checked_inputs(inputs, outdir, fmt, fallback_box, fallback_mean, recursive)
    records_path = outdir / (RECORDS_CSV if as_csv else RECORDS_JSONL)

    from facerecon.engine.crops import CropOptions, CropSummary

    options = CropOptions(
        size=size, fmt=fmt, quality=quality, all_faces=all_faces, fallback_box=fallback_box, fallback_mean=fallback_mean,
        device=device, min_probability=min_probability, max_detect_side=max_detect_side, min_face=min_face,
    )
    summary = CropSummary()
    _run(paths, outdir, records_path, options, summary)
    _print_summary(summary, records_path if summary.records else None)
    _raise_for_unreadable(summary)


def _checked_inputs(
    inputs: list[str], outdir: Path, fmt: str, fallback_box: Optional[tuple[float, float, float]], fallback_mean: bool,
    recursive: bool,
) -> tuple[str, list[Path]]:
    """The options checked before any work: the crop format (normalised) and the photos found."""
    from facerecon.imageio import expand_image_inputs

    fmt = fmt.lower().lstrip(".")
    fmt = {"jpeg": "jpg"}.get(fmt, fmt)
    if fmt not in ("jpg", "png"):
        raise InputError(f"--format must be jpg or png, got {fmt!r}")
    if fallback_box is not None and fallback_mean:
        raise InputError("--fallback-box and --fallback-mean exclude each other")
    if fallback_box is not None and not fallback_box[2] > 0:
        raise InputError(f"--fallback-box SIDE must be > 0, got {fallback_box[2]}")
    paths = expand_image_inputs(inputs, recursive=recursive)
    if not paths or not any(p.exists() for p in paths):
        raise InputError(f"no images found in {' '.join(inputs)}")
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    return fmt, paths


def _run(paths: list[Path], outdir: Path, records_path: Path, options: Any, summary: Any) -> None:
    """The run under the folder's lock, with the progress bar; a signal stops it with a line
    saying what was kept, and a folder this run created is removed when left empty."""
    from facerecon.crop_records import read_records
    from facerecon.io_utils import folder_lock

    created = not outdir.exists()
    kept = lambda: (  # noqa: E731  (read when a signal stops the run)
        f"{summary.crops} crop(s) and their records kept in {display_path(outdir)}; run the same command again to redo the rest"
    )
    try:
        with interruptible(kept), folder_lock(outdir, "detect-crop"):  # one run at a time per folder: records are merged
            old_records = read_records(records_path)  # a damaged records file: one line, before any work
            with make_progress() as progress:
                task = progress.add_task("detect + crop", total=len(paths), unit="img")
                _crop(paths, outdir, records_path, options, summary, progress, task, old_records)
    finally:
        if created:
            with contextlib.suppress(OSError):
                outdir.rmdir()  # only when this run left it empty


def _crop(
    paths: list[Path], outdir: Path, records_path: Path, options: Any, summary: Any, progress: Any, task: Any,
    old_records: list[dict[str, Any]],
) -> None:
    """The run, with the progress bar and the ``--fallback-mean`` box reported."""
    from facerecon.engine.crops import crop_photos

    crop_photos(
        paths, outdir, records_path, options, summary, on_photo=lambda path: progress.advance(task),
        on_fallback_box=lambda rel, n: info(
            f"fallback box (mean of {n} faces): cx {rel[0]:.3f} W, cy {rel[1]:.3f} H, side {rel[2]:.3f} min(W,H)"
        ),
        old_records=old_records,
    )


def _raise_for_unreadable(summary: Any) -> None:
    """Exit 2 when no input could be read, 1 when some could not (named, three at most)."""
    if summary.unreadable:
        n = len(summary.unreadable)
        named = "; ".join(f"{display_path(path)}: {reason}" for path, reason in summary.unreadable[:3])
        more = f"; and {n - 3} more (listed above)" if n > 3 else ""
        if n == summary.images:  # nothing at all could be read: bad input
            raise InputError(f"{named}{more}" if n == 1 else f"none of the {n} inputs could be read: {named}{more}")
        raise FaceReconError(f"{n} of {summary.images} inputs could not be read: {named}{more}")


def _print_summary(summary: Any, records_path: Path | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="detect-crop", show_header=True, header_style="bold")
    table.add_column("images", justify="right")
    table.add_column("with a face", justify="right")
    table.add_column("faces found", justify="right")
    table.add_column("crops written", justify="right")
    table.add_column("fallbacks", justify="right")
    table.add_column("unreadable", justify="right")
    bad = len(summary.unreadable)
    table.add_row(
        str(summary.images), str(summary.with_face), str(summary.faces), str(summary.crops),
        str(summary.fallbacks), f"[red]{bad}[/red]" if bad else "0",
    )
    console.print(table)
    if summary.unreadable:  # one line per file (no table: long paths must stay greppable)
        console.print(f"[bold red]unreadable, skipped ({bad}):[/bold red]")
        for path, reason in summary.unreadable:
            console.print(f"  {escape(display_path(path))}: {escape(reason)}", highlight=False, soft_wrap=True)
    if records_path is not None:
        console.print(f"records: {escape(display_path(records_path))}", highlight=False, soft_wrap=True)
    else:
        console.print("records: none written (nothing was cropped)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command(
        "detect-crop",
        help=_HELP,
        rich_help_panel="Data",
        no_args_is_help=True,
    )(detect_crop)
