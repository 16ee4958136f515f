"""``detect-crop`` as a library: find the face in each photo (MTCNN) and write the network's crops
and their records into a folder.

:func:`crop_photos` runs over the photos in order: each is decoded, its faces detected, the chosen
ones (the most confident, or all) cropped by :mod:`facerecon.crop`'s policy and written as image
files, with one record per crop merged into the folder's records file
(:mod:`facerecon.crop_records`), also when a signal stops the run: every crop written has its
record. Photos without a face get the fallback crop (the given relative box, or with
``fallback_mean`` the mean box of this run's faces, once all are detected). Unreadable photos are
counted in ``CropSummary.unreadable`` and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from facerecon.crop_records import merge_records, read_records, write_records
from facerecon.errors import InputError

__all__ = ["CropOptions", "CropSummary", "crop_photos", "make_detector", "output_names"]


@dataclass
class CropOptions:
    """How ``detect-crop`` finds and cuts faces (its command-line options)."""

    size: int = 224
    fmt: str = "jpg"
    quality: int = 95
    all_faces: bool = False
    fallback_box: tuple[float, float, float] | None = None
    fallback_mean: bool = False
    device: str = "cpu"
    min_probability: float = 0.9
    max_detect_side: int = 1024
    min_face: float = 32.0


@dataclass
class CropSummary:
    """What a run did: photos read, with a face, faces found, crops written (fallbacks among
    them) and the unreadable photos with the reason."""

    images: int = 0
    with_face: int = 0
    faces: int = 0
    crops: int = 0
    fallbacks: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    records: int = 0


def make_detector(device: str = "cpu", **kwargs: Any) -> Any:
    """MTCNN with the crop policy: in ONNX Runtime on the CPU when this installation ships MTCNN's
    exported networks (no torch: :class:`facerecon.runtime.session.OnnxFaceDetector`), else in
    PyTorch (:class:`facerecon.detect.FaceDetector`, any device)."""
    from facerecon.runtime.session import MTCNN_FILES, OnnxFaceDetector, asset_path

    if device == "cpu" and all(asset_path(name) is not None for name in MTCNN_FILES.values()):
        return OnnxFaceDetector(**kwargs)
    from facerecon.detect import FaceDetector

    return FaceDetector(device=device, **kwargs)


def crop_photos(
    paths: Sequence[Path], outdir: Path, records_path: Path, options: CropOptions, summary: CropSummary,
    on_photo: Callable[[Path], None] | None = None, on_fallback_box: Callable[[tuple[float, float, float], int], None] | None = None,
    old_records: list[dict[str, Any]] | None = None,
) -> None:
    """Detect, crop and record every photo of ``paths`` into ``outdir`` (see the module
    docstring). ``summary`` is filled as the run goes (a caller still has it after an
    interruption); ``on_photo`` is called after each photo (a progress bar), ``on_fallback_box``
    with the mean box and the number of faces behind it (``fallback_mean``). ``old_records``: the
    folder's records as :func:`facerecon.crop_records.read_records` read them (read here
    when None).

    Raises:
        InputError: the folder's records file is not a records file (it is left untouched).
    """
    old_records = read_records(records_path) if old_records is None else old_records
    detector = make_detector(
        options.device, min_probability=options.min_probability, max_detect_side=options.max_detect_side, smallest_face=options.min_face
    )
    new_records: list[dict[str, Any]] = []
    deferred: list[tuple[Path, str]] = []
    try:
        for path, stem in zip(paths, output_names(list(paths))):
            new_records += _process(path, stem, outdir, detector, summary, deferred, options)
            if on_photo is not None:
                on_photo(path)
        if deferred:
            new_records += _crop_deferred(deferred, outdir, new_records, options, summary, on_fallback_box)
    finally:
        if new_records:  # never an empty records file when nothing was cropped
            merged = merge_records(old_records, new_records, outdir)
            write_records(records_path, merged, records_path.suffix == ".csv")
            summary.records = len(merged)
        else:
            summary.records = len(old_records)


def _process(
    path: Path, stem: str, outdir: Path, detector: Any, summary: CropSummary, deferred: list[tuple[Path, str]],
    options: CropOptions,
) -> list[dict[str, Any]]:
    """Load, detect and crop one image; returns its records (none when it is unreadable)."""
    from facerecon.imageio import load_image

    summary.images += 1
    try:
        image = load_image(path)
    except InputError as exc:
        summary.unreadable.append((path, _reason(exc)))
        return []
    faces = detector.detect(image)
    summary.faces += len(faces)
    if faces:
        summary.with_face += 1
    elif options.fallback_mean:
        deferred.append((path, stem))  # cropped once the run's mean face box is known
        return []
    h, w = image.shape[:2]
    chosen = detector.select(faces, w, h, all_faces=options.all_faces, fallback_box=options.fallback_box)
    return _write_crops(image, path, stem, outdir, chosen, options, options.all_faces, summary)


def _write_crops(
    image: Any, path: Path, stem: str, outdir: Path, chosen: list[Any], options: CropOptions, all_faces: bool,
    summary: CropSummary,
) -> list[dict[str, Any]]:
    """Write the crops of one photo's chosen faces; their records."""
    from facerecon.crop import crop_image
    from facerecon.imageio import save_image

    h, w = image.shape[:2]
    records = []
    for k, face in enumerate(chosen):
        name = f"{stem}_{k}.{options.fmt}" if all_faces else f"{stem}.{options.fmt}"
        save_image(outdir / name, crop_image(image, face.box, options.size), quality=options.quality)
        summary.crops += 1
        summary.fallbacks += int(face.fallback)
        records.append(
            {"source": str(path.resolve()), "image_size": [w, h], "face_index": k, "output": name, "crop_size": options.size}
            | face.to_dict()
        )
    return records


def _crop_deferred(
    deferred: list[tuple[Path, str]], outdir: Path, records: list[dict[str, Any]], options: CropOptions,
    summary: CropSummary, on_fallback_box: Callable[[tuple[float, float, float], int], None] | None,
) -> list[dict[str, Any]]:
    """``fallback_mean``: crop the images without a face with the mean box of those with one."""
    from facerecon.crop import FaceCrop, mean_relative_box
    from facerecon.detect import FaceDetector
    from facerecon.imageio import load_image

    firsts = [r for r in records if r["face_index"] == 0 and not r["fallback"]]
    rel = mean_relative_box([FaceCrop.from_dict(r) for r in firsts], [tuple(r["image_size"]) for r in firsts])
    if on_fallback_box is not None:
        on_fallback_box(rel, len(firsts))
    out = []
    for path, stem in deferred:
        image = load_image(path)
        h, w = image.shape[:2]
        chosen = FaceDetector.select([], w, h, fallback_box=rel)
        out += _write_crops(image, path, stem, outdir, chosen, options, False, summary)
    return out


def output_names(paths: list[Path]) -> list[str]:
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
