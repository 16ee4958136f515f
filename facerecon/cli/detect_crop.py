"""``facerecon detect-crop``: find the face in each photo (MTCNN) and write the network's crops."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from facerecon.cli._common import console, display_path, info, make_progress
from facerecon.errors import FaceReconError, InputError
from facerecon.signals import interruptible

ORDER = 20

RECORDS_JSONL = "crops.jsonl"
RECORDS_CSV = "crops.csv"
_HELP = (
    "Detect faces (MTCNN) and write square crops for the network.\n\n"
    "Each crop is the detection box enlarged 1.1x about its centre, made square and resized to --size px, "
    "taken from the original photo (black where the box leaves the image). Writes OUTDIR/<stem>.jpg per image "
    "(<stem>_<k>.jpg with --all-faces) and one record per crop in OUTDIR/crops.jsonl (or crops.csv): source, "
    "image size, crop box (image px), probability, five landmarks, fallback flag and output file.\n\n"
    "Images without a face get the fallback crop, flagged in the record. Unreadable files are reported and "
    "skipped; the exit code is then 1."
)
_LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class _Summary:
    images: int = 0
    with_face: int = 0
    faces: int = 0
    crops: int = 0
    fallbacks: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def detect_crop(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Image files, folders (images inside) or glob patterns such as 'photos/*.jpg'.",
        show_default=False,
    ),
    outdir: Path = typer.Option(..., "--output", "-o", help="Output folder for the crops and the records file."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Keep every face (<stem>_<k>.<ext>), not only the most confident."),
    min_probability: float = typer.Option(0.9, "--min-probability", min=0.0, max=1.0, help="Ignore detections below this MTCNN probability."),
    size: int = typer.Option(224, "--size", min=8, max=4096, help="Side of the square crops, px."),
    device: str = typer.Option("cpu", "--device", help="Torch device for MTCNN: cpu, cuda, cuda:1, ..."),
    max_detect_side: int = typer.Option(1024, "--max-detect-side", min=32, help="Detect on a copy whose longer side is at most this many px; crops come from the original."),
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
    from facerecon.imageio import expand_image_inputs
    from facerecon.io_utils import folder_lock

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
    records_path = outdir / (RECORDS_CSV if as_csv else RECORDS_JSONL)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")

    created = not outdir.exists()
    summary = _Summary()
    kept = lambda: (  # noqa: E731
        f"{summary.crops} crop(s) and their records kept in {display_path(outdir)}; run the same command again to redo the rest"
    )
    try:
        with interruptible(kept), folder_lock(outdir, "detect-crop"):  # one run at a time per folder: records are merged
            _detect_crop_locked(
                paths, outdir, records_path, device, min_probability, max_detect_side, size, fmt, quality,
                all_faces, fallback_box, fallback_mean, as_csv, summary,
            )
    finally:
        if created:
            with contextlib.suppress(OSError):
                outdir.rmdir()  # only when this run left it empty
    if summary.unreadable:
        n = len(summary.unreadable)
        named = "; ".join(f"{name}: {reason}" for name, reason in summary.unreadable[:3])
        more = f"; and {n - 3} more (listed above)" if n > 3 else ""
        if n == summary.images:  # nothing at all could be read: bad input
            raise InputError(f"{named}{more}" if n == 1 else f"none of the {n} inputs could be read: {named}{more}")
        raise FaceReconError(f"{n} of {summary.images} inputs could not be read: {named}{more}")


def _detect_crop_locked(
    paths: list[Path], outdir: Path, records_path: Path, device: str, min_probability: float, max_detect_side: int,
    size: int, fmt: str, quality: int, all_faces: bool, fallback_box: Any, fallback_mean: bool, as_csv: bool,
    summary: _Summary,
) -> None:
    """The run itself, with OUTDIR locked: detect, crop, merge the records (also when a signal
    stops it: every crop written has its record)."""
    from facerecon.detect import FaceDetector

    old_records = _read_records(records_path)
    detector = FaceDetector(device=device, min_probability=min_probability, max_detect_side=max_detect_side)
    names = _output_names(paths, fmt)
    new_records: list[dict[str, Any]] = []
    deferred: list[tuple[Path, str]] = []
    try:
        with make_progress() as progress:
            task = progress.add_task("detect + crop", total=len(paths), unit="img")
            for path, stem in zip(paths, names):
                progress.update(task, description=f"[cyan]{path.name}")
                new_records += _process(
                    path, stem, outdir, detector, summary, deferred, size, fmt, quality, all_faces,
                    fallback_box, fallback_mean,
                )
                progress.advance(task)
            progress.update(task, description="detect + crop")
        if deferred:
            new_records += _crop_deferred(deferred, outdir, new_records, size, fmt, quality, summary)
    finally:
        if new_records:  # never an empty records file when nothing was cropped
            _write_records(records_path, _merge_records(old_records, new_records, outdir), as_csv)
    _print_summary(summary, records_path if (new_records or old_records) else None)


def _process(
    path: Path, stem: str, outdir: Path, detector: Any, summary: _Summary, deferred: list[tuple[Path, str]],
    size: int, fmt: str, quality: int, all_faces: bool, fallback_box: Any, fallback_mean: bool,
) -> list[dict[str, Any]]:
    """Load, detect and crop one image; returns its records (none when it is unreadable)."""
    from facerecon.imageio import load_image

    summary.images += 1
    try:
        image = load_image(path)
    except InputError as exc:
        summary.unreadable.append((display_path(path), _reason(exc)))
        return []
    faces = detector.detect(image)
    summary.faces += len(faces)
    if faces:
        summary.with_face += 1
    elif fallback_mean:
        deferred.append((path, stem))  # cropped once the run's mean face box is known
        return []
    h, w = image.shape[:2]
    chosen = detector.select(faces, w, h, all_faces=all_faces, fallback_box=fallback_box)
    return _write_crops(image, path, stem, outdir, chosen, size, fmt, quality, all_faces, summary)


def _write_crops(
    image: Any, path: Path, stem: str, outdir: Path, chosen: list[Any], size: int, fmt: str, quality: int,
    all_faces: bool, summary: _Summary,
) -> list[dict[str, Any]]:
    from facerecon.crop import crop_image
    from facerecon.imageio import save_image

    h, w = image.shape[:2]
    records = []
    for k, face in enumerate(chosen):
        name = f"{stem}_{k}.{fmt}" if all_faces else f"{stem}.{fmt}"
        save_image(outdir / name, crop_image(image, face.box, size), quality=quality)
        summary.crops += 1
        summary.fallbacks += int(face.fallback)
        records.append(
            {"source": str(path.resolve()), "image_size": [w, h], "face_index": k, "output": name, "crop_size": size}
            | face.to_dict()
        )
    return records


def _crop_deferred(
    deferred: list[tuple[Path, str]], outdir: Path, records: list[dict[str, Any]], size: int, fmt: str,
    quality: int, summary: _Summary,
) -> list[dict[str, Any]]:
    """--fallback-mean: crop the images without a face with the mean box of those with one."""
    from facerecon.detect import FaceDetector
    from facerecon.crop import FaceCrop, mean_relative_box
    from facerecon.imageio import load_image

    firsts = [r for r in records if r["face_index"] == 0 and not r["fallback"]]
    rel = mean_relative_box([FaceCrop.from_dict(r) for r in firsts], [tuple(r["image_size"]) for r in firsts])
    info(f"fallback box (mean of {len(firsts)} faces): cx {rel[0]:.3f} W, cy {rel[1]:.3f} H, side {rel[2]:.3f} min(W,H)")
    out = []
    for path, stem in deferred:
        image = load_image(path)
        h, w = image.shape[:2]
        chosen = FaceDetector.select([], w, h, fallback_box=rel)
        out += _write_crops(image, path, stem, outdir, chosen, size, fmt, quality, False, summary)
    return out


def _output_names(paths: list[Path], fmt: str) -> list[str]:
    """One output stem per input: the file stem, with ``~2``, ``~3``... for repeated stems."""
    used: dict[str, int] = {}
    names = []
    for path in paths:
        stem = path.stem or "image"
        n = used.get(stem.lower(), 0) + 1
        used[stem.lower()] = n
        names.append(stem if n == 1 else f"{stem}~{n}")
    return names


def _reason(exc: InputError) -> str:
    """The part of 'path: cannot read image (reason)' after the path."""
    text = str(exc)
    start = text.find("cannot read image (")
    return text[start + len("cannot read image (") : -1] if start >= 0 and text.endswith(")") else text


# ---- records ---------------------------------------------------------------------------------


def _merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]], outdir: Path) -> list[dict[str, Any]]:
    """Replace the records of re-processed sources; keep the others; delete stale crop files.

    An old record is dropped when its source was processed again or its output file was
    rewritten by this run; a dropped record's crop file that this run did not rewrite is removed.
    """
    new_sources = {r["source"] for r in new}
    new_outputs = {r["output"] for r in new}
    kept = []
    for r in old:
        if r.get("source") in new_sources or r.get("output") in new_outputs:
            out = r.get("output")
            if out and out not in new_outputs and os.sep not in out and "/" not in out:
                (outdir / out).unlink(missing_ok=True)
            continue
        kept.append(r)
    return sorted(kept + new, key=lambda r: (str(r.get("source")), int(r.get("face_index", 0))))


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Records of an earlier run in OUTDIR (JSONL or CSV), to merge this run's into.

    Raises:
        InputError: the file is not a records file (binary garbage, a line that is not a
            record, numbers that do not parse): it is named with the line, and left untouched.
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a records file (not UTF-8 text at byte {exc.start}); fix or delete it") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the records file ({exc.strerror})") from None
    records = []
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if text.strip() and not {"source", "output"} <= set(reader.fieldnames or ()):
            raise InputError(f"{path}: not a crops.csv (its header has no 'source' and 'output' columns); fix or delete it")
        try:
            for row in reader:
                records.append(_check_record(_from_csv_row(row), path, reader.line_num))
        except (ValueError, TypeError, csv.Error) as exc:
            raise InputError(f"{path}:{reader.line_num}: not a crops record ({exc}); fix or delete the file") from None
        return records
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{k}: not a JSON record ({exc.msg}); fix or delete the file") from None
        records.append(_check_record(rec, path, k))
    return records


def _check_record(rec: Any, path: Path, line: int) -> dict[str, Any]:
    """A record as merging needs it: a dict with a string source and output and a whole face_index."""
    if not isinstance(rec, dict) or not isinstance(rec.get("source"), str) or not isinstance(rec.get("output"), str):
        raise InputError(f"{path}:{line}: not a crops record (no 'source' and 'output' strings); fix or delete the file")
    index = rec.get("face_index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise InputError(f"{path}:{line}: not a crops record ('face_index' is {index!r}); fix or delete the file")
    return rec


def _write_records(path: Path, records: list[dict[str, Any]], as_csv: bool) -> None:
    from facerecon.io_utils import atomic_open

    if as_csv:
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_csv_fields())
            writer.writeheader()
            for rec in records:
                writer.writerow(_to_csv_row(rec))
    else:
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")


def _csv_fields() -> list[str]:
    fields = ["source", "image_width", "image_height", "face_index", "output", "crop_size",
              "box_x0", "box_y0", "box_side", "probability", "fallback"]
    fields += [f"{n}_{a}" for n in _LANDMARK_NAMES for a in "xy"]
    return fields + ["det_x0", "det_y0", "det_x1", "det_y1"]


def _to_csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": rec["source"], "image_width": rec["image_size"][0], "image_height": rec["image_size"][1],
        "face_index": rec["face_index"], "output": rec["output"], "crop_size": rec["crop_size"],
        "box_x0": rec["box"][0], "box_y0": rec["box"][1], "box_side": rec["box"][2],
        "probability": "" if rec["probability"] is None else rec["probability"], "fallback": int(rec["fallback"]),
    }
    lm = rec.get("landmarks5")
    for i, n in enumerate(_LANDMARK_NAMES):
        for j, a in enumerate("xy"):
            row[f"{n}_{a}"] = "" if lm is None else lm[i][j]
    det = rec.get("detection")
    for j, key in enumerate(("det_x0", "det_y0", "det_x1", "det_y1")):
        row[key] = "" if det is None else det[j]
    return row


def _from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    def num(key: str) -> float | None:
        value = row.get(key, "")
        return None if value in ("", None) else float(value)

    lm_vals = [num(f"{n}_{a}") for n in _LANDMARK_NAMES for a in "xy"]
    det_vals = [num(k) for k in ("det_x0", "det_y0", "det_x1", "det_y1")]
    return {
        "source": row.get("source", ""), "image_size": [int(num("image_width") or 0), int(num("image_height") or 0)],
        "face_index": int(num("face_index") or 0), "output": row.get("output", ""),
        "crop_size": int(num("crop_size") or 0),
        "box": [num("box_x0"), num("box_y0"), num("box_side")], "probability": num("probability"),
        "landmarks5": None if None in lm_vals else [lm_vals[i : i + 2] for i in range(0, 10, 2)],
        "detection": None if None in det_vals else det_vals,
        "fallback": bool(int(num("fallback") or 0)),
    }


# ---- report ----------------------------------------------------------------------------------


def _print_summary(summary: _Summary, records_path: Path | None) -> None:
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
        for name, reason in summary.unreadable:
            console.print(f"  {escape(name)}: {escape(reason)}", highlight=False, soft_wrap=True)
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
