"""Photos and folders of photos -> faces, batched, with ``predict``'s skip and fallback policy.

:func:`plan_photos` turns the user's inputs (files, folders, globs) and output names into a
:class:`PhotoJob`: the photos, and where each face's mesh and overlay go. :func:`reconstruct_photos`
yields one :class:`PhotoOutcome` per photo, in order: the faces of several photos share a network
pass (``Predictor.batch_size`` faces), and only the crops wait for the network, never the decoded
photos, so memory does not grow with the batch size or the number of photos. :func:`write_photos`
writes each outcome's files as it comes (``facerecon predict``); a Python caller may keep the
outcomes instead (:class:`facerecon.api.Reconstructor`).

The policy, the same for the CLI and the library:

* a photo with no detected face is reconstructed from the average crop (``no_face``), or is an
  error with ``require_face``;
* a photo that cannot be read (or, with ``require_face``, has no face) is skipped with the reason
  (``error``) and the others go on; with ``strict`` (one photo asked for) the error is raised.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from facerecon.engine.results import FaceResult, Predictor, PreparedFace, write_result
from facerecon.errors import FaceReconError, InputError

__all__ = ["PhotoJob", "PhotoOutcome", "PhotoSummary", "plan_photos", "reconstruct_photos", "write_photos"]


@dataclass
class PhotoOutcome:
    """One photo: its faces in the photo's pixel frame, or why it was skipped.

    Attributes:
        path: the photo.
        faces: one :class:`FaceResult` per face (the most confident one unless ``all_faces``);
            empty when the photo was skipped.
        no_face: no face was detected; the face comes from the average crop.
        error: why the photo was skipped (one line naming the file), else None.
        image: the decoded photo, ``(H, W, 3)`` uint8, when asked for (``keep_images``).
    """

    path: Path
    faces: list[FaceResult] = field(default_factory=list)
    no_face: bool = False
    error: str | None = None
    image: np.ndarray | None = None


@dataclass
class _Waiting:
    outcome: PhotoOutcome
    remaining: int


def reconstruct_photos(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    *,
    require_face: bool = False,
    strict: bool = False,
    keep_images: bool = False,
) -> Iterator[PhotoOutcome]:
    """Reconstruct the faces of each photo, ``predictor.batch_size`` faces per network pass.

    Yields one :class:`PhotoOutcome` per photo, in the order of ``paths``, as soon as all its
    faces are through the network. See the module docstring for the policy; ``strict`` raises the
    first photo's error instead of skipping it.
    """
    from facerecon.imageio import load_photo

    pending: list[PreparedFace] = []
    waiting: list[_Waiting] = []
    for path in map(Path, paths):
        outcome = PhotoOutcome(path)
        try:
            t0 = time.perf_counter()
            image = load_photo(path)
            predictor.timings.decode += time.perf_counter() - t0
            crops = predictor.crops_of(image)
            if crops[0].fallback:
                if require_face:
                    raise InputError(f"{path}: no face found (--require-face)")
                outcome.no_face = True
            prepared = predictor.prepare(path, image, crops)
            outcome.image = image if keep_images else None
            del image
        except (FaceReconError, OSError) as exc:
            if strict:
                raise
            outcome.error = str(exc) if isinstance(exc, FaceReconError) else f"{exc.filename or path}: {exc.strerror or exc}"
            prepared = []
        if outcome.error is None:
            predictor.timings.images += 1
        pending.extend(prepared)
        waiting.append(_Waiting(outcome, len(prepared)))
        if len(pending) >= predictor.batch_size:
            yield from _flush(predictor, pending, waiting)
        yield from _finished(waiting)
    yield from _flush(predictor, pending, waiting)


def _flush(predictor: Predictor, pending: list[PreparedFace], waiting: list[_Waiting]) -> Iterator[PhotoOutcome]:
    """The pending faces through the network, handed to their photos in order."""
    results = predictor.reconstruct(pending) if pending else []
    pending.clear()
    for result in results:
        entry = next(w for w in waiting if w.remaining > 0)
        entry.outcome.faces.append(result)
        entry.remaining -= 1
    yield from _finished(waiting)


def _finished(waiting: list[_Waiting]) -> Iterator[PhotoOutcome]:
    """The photos at the head of the queue whose faces are all reconstructed."""
    while waiting and waiting[0].remaining == 0:
        yield waiting.pop(0).outcome


@dataclass
class PhotoJob:
    """What ``predict`` does with photos: which ones, and where each face's files go.

    Attributes:
        photos: the photos, in order.
        output: the mesh file (``single``) or the folder of meshes.
        overlay: the overlay PNG (``single``) or folder of overlays, or None.
        suffix: the mesh format in folder mode (``.obj``, ``.ply``, ...).
        single: one photo to one named mesh file (errors are raised, not skipped).
    """

    photos: list[Path]
    output: Path
    overlay: Path | None
    suffix: str
    single: bool

    def targets(self, source: Path, face_index: int) -> tuple[Path, Path | None]:
        """The mesh and overlay paths of face ``face_index`` of ``source``: ``<name>_<k>`` for
        faces after the first."""
        tag = "" if face_index == 0 else f"_{face_index}"
        if self.single:
            mesh = self.output if face_index == 0 else self.output.with_name(f"{self.output.stem}{tag}{self.output.suffix}")
            overlay = self.overlay
            if overlay is not None and face_index:
                overlay = overlay.with_name(f"{overlay.stem}{tag}{overlay.suffix}")
            return mesh, overlay
        mesh = self.output / f"{source.stem}{tag}{self.suffix}"
        return mesh, None if self.overlay is None else self.overlay / f"{source.stem}{tag}.png"


def plan_photos(
    inputs: Sequence[str], output: Path, overlay: Path | None = None, suffix: str = ".obj", recursive: bool = False
) -> PhotoJob:
    """The photos named by ``inputs`` (files, folders, globs) and where their files go, with every
    output place checked before any model loads.

    One input file and an ``output`` with a mesh suffix: one mesh file. Otherwise ``output`` (and
    ``overlay``) are folders.

    Raises:
        InputError: no photo found, an unknown mesh suffix, a file where a folder is needed, or an
            output place that cannot be written (one line naming it).
    """
    from facerecon.imageio import expand_image_inputs
    from facerecon.io_utils import check_writable_file, check_writable_folder
    from facerecon.mesh.export import mesh_suffixes

    paths = expand_image_inputs(inputs, recursive=recursive)
    if not paths:
        raise InputError(f"no images found in {' '.join(inputs)}")
    single = len(paths) == 1 and len(inputs) == 1 and Path(inputs[0]).is_file()
    if single and output.suffix.lower() not in mesh_suffixes():
        if output.suffix and not output.is_dir():
            raise InputError(f"{output}: unknown mesh format {output.suffix!r} (use {', '.join(mesh_suffixes())})")
        single = False  # a folder for one image
    if not single and output.exists() and not output.is_dir():
        raise InputError(f"{output}: several images need an output folder, and this is a file")
    if single:
        check_writable_file(output, "mesh")
        if overlay is not None:
            check_writable_file(overlay, "overlay")
    else:
        check_writable_folder(output, "meshes")
        if overlay is not None:
            check_writable_folder(overlay, "overlays")
    return PhotoJob(paths, output, overlay, suffix, single)


@dataclass
class PhotoSummary:
    """What :func:`write_photos` did."""

    images: int = 0
    faces: int = 0
    no_face: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    elapsed: float = 0.0


def write_photos(
    predictor: Predictor,
    job: PhotoJob,
    *,
    require_face: bool = False,
    stages: bool = False,
    overlay_mode: str = "shaded",
    on_photo: Callable[[], None] | None = None,
    written: list[Path] | None = None,
    extras: Any = None,
) -> PhotoSummary:
    """Reconstruct the job's photos and write each face's mesh, JSON record (and overlay) as its
    photo comes out of :func:`reconstruct_photos`.

    A photo whose files cannot be written (a full disk) is reported in ``failed`` and the others
    go on; in ``single`` mode every error is raised. ``written`` receives each path as it is
    written, so a caller still knows them after an interruption; ``on_photo`` is called once per
    photo (a progress bar); ``extras`` (:class:`facerecon.engine.outputs.ExtraOutputs`) adds
    textures, maps and dense points.
    """
    written = [] if written is None else written
    summary = PhotoSummary()
    t_start = time.perf_counter()
    outcomes = reconstruct_photos(predictor, job.photos, require_face=require_face, strict=job.single, keep_images=job.single)
    for outcome in outcomes:
        if outcome.error is not None:
            summary.failed.append((outcome.path, outcome.error))
        else:
            if outcome.no_face:
                summary.no_face.append(outcome.path)
            try:
                _write_outcome(predictor, job, outcome, stages, overlay_mode, written, extras)
            except OSError as exc:  # e.g. a full disk: name the file, go on with the others
                if job.single:
                    raise
                summary.failed.append((outcome.path, f"{exc.filename or outcome.path}: {exc.strerror or exc}"))
        if on_photo is not None:
            on_photo()
    summary.elapsed = time.perf_counter() - t_start
    summary.images = predictor.timings.images
    summary.faces = predictor.timings.faces
    return summary


def _write_outcome(
    predictor: Predictor, job: PhotoJob, outcome: PhotoOutcome, stages: bool, overlay_mode: str, written: list[Path],
    extras: Any = None,
) -> None:
    """One photo's files; the photo is decoded again for its overlays unless the outcome kept it."""
    from facerecon.imageio import load_photo

    t0 = time.perf_counter()
    image: Any = outcome.image
    face_extras: list[Any] = [None] * len(outcome.faces)
    if extras is not None and extras.any and outcome.faces:
        face_extras, image = _photo_extras(predictor, job, outcome, image, extras, written)
    for result, extra in zip(outcome.faces, face_extras):
        mesh_path, overlay_path = job.targets(result.source, result.face_index)
        if overlay_path is not None and image is None:
            image = load_photo(result.source)
        written.extend(write_result(
            result, mesh_path, overlay_path, stages=stages, image=image, overlay_mode=overlay_mode, extra=extra,
        ))
    predictor.timings.export += time.perf_counter() - t0


def _photo_extras(
    predictor: Predictor, job: PhotoJob, outcome: PhotoOutcome, image: Any, extras: Any, written: list[Path]
) -> tuple[list[Any], Any]:
    """The photo's maps and UV textures written, its meshes textured: (one FaceExtras per face,
    the photo when it was decoded for them, else ``image`` as given)."""
    from facerecon.engine.outputs import photo_extras, uv_target
    from facerecon.imageio import load_photo

    if extras.needs_photo and image is None:
        image = load_photo(outcome.path)
    mesh_paths = [job.targets(r.source, r.face_index)[0] for r in outcome.faces]
    uv_paths = [uv_target(extras.uv_texture, job.single, r.source, r.face_index) for r in outcome.faces]
    done = photo_extras(predictor.network, outcome.faces, image, mesh_paths, uv_paths, extras)
    written.extend(done.files)
    return done.faces, image
