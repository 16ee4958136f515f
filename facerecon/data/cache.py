"""``prepare``: a raw dataset into one HDF5 cache, resumably, in parallel.

Writing protocol (crash safety):

* Everything is written to ``OUT.partial`` (an HDF5 file in SWMR-write mode, so the file stays
  readable whatever happens to the writer), one sample after the other in the sorted source
  order. After every ``flush_every`` samples (or ``flush_seconds``) the data is flushed, then the
  progress marker ``_progress = [sources done, rows, points, skipped]`` is written and flushed
  again: everything up to the marker is on disk.
* On Ctrl-C the writer flushes, closes the partial file cleanly and raises
  :class:`PrepareInterrupted`. A run killed outright (``kill -9``, power loss of the process)
  leaves a partial file whose SWMR flag is still set; the next run reads it in SWMR-read mode and
  copies the rows up to the marker into a fresh partial file. Either way the rerun continues from
  the marker (rows after it are discarded) and the finished file equals an uninterrupted run.
* A full disk is caught *before* a block is written (free space against the block's
  uncompressed size plus a margin): HDF5 cannot recover from a failed write (the file is damaged
  and the process may segfault), so the writer closes the partial file cleanly instead and
  raises :class:`PrepareDiskFull`; the same command resumes once space is freed.
* When every source is processed the split, the vlen ``ids`` and the attributes are written and
  ``OUT.partial`` is renamed to ``OUT``; a half-written ``OUT`` never exists. A run in which no
  sample is usable deletes the partial file and fails.

Bad samples (unreadable image, corrupt ``.mat``, missing fields, NaN / inf face-model parameters
or ground truth) are recorded in
``skipped/ids`` / ``skipped/reasons`` and reported; they do not stop the run.
The cache schema is in docs/formats.md ("The training cache").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Generator, Sequence

import numpy as np

from facerecon import __version__
from facerecon.crop import CROP_SIZE, RelativeBoxMean
from facerecon.data.face_model import FaceModel, load_face_model
from facerecon.data.readers import SampleRef
from facerecon.data.samples import (
    ID_BYTES,
    SampleContext,
    SampleResult,
    compute_sample,
    make_context,
    run_jobs,
    sample_job,
)
from facerecon.detect import FaceDetector
from facerecon.errors import FaceReconError, InputError
from facerecon.io_utils import ensure_parent
from facerecon.signals import Interrupted, Terminated

if TYPE_CHECKING:
    import h5py

SCHEMA_VERSION = 2
SPLIT_NAMES = ("train", "val", "test")
#: Fraction of the samples in (train, val, test) by default: 1600/200/200 for AFLW2000-3D.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_POINT_CHUNK = 65536

# name: (trailing shape, dtype) of the per-row datasets
_ROW_FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "images": ((CROP_SIZE, CROP_SIZE, 3), "u1"),
    "landmarks": ((68, 3), "f4"),
    # MTCNN's five points (eyes, nose, mouth corners) of the detection that made the crop, crop
    # units; NaN for fallback and landmark-box crops (schema 2).
    "landmarks5": ((5, 2), "f4"),
    "boxes": ((3,), "f8"),
    "probabilities": ((), "f4"),
    "fallback": ((), "u1"),
    "pose": ((3,), "f4"),
    "mm_per_unit": ((), "f4"),
    "image_sizes": ((2,), "i4"),
    "_ids": ((), f"S{ID_BYTES}"),
}
# name: (trailing shape, dtype) of the per-point datasets
_POINT_FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "points": ((3,), "f4"),
    "normals": ((3,), "f2"),
    "regions": ((), "u1"),
    "colors": ((3,), "u1"),
}


class PrepareInterrupted(Interrupted):
    """Ctrl-C or SIGTERM during ``prepare``: the partial file is flushed and closed; rerun to
    resume (exit code 130 or 143, ``facerecon.signals``)."""


@dataclass
class PrepareOptions:
    """What ``prepare`` does (everything that changes the file's content, plus speed knobs).

    Attributes:
        crop_from: ``"detector"`` (MTCNN, as at inference) or ``"landmarks"`` (the ground-truth
            landmark box enlarged 1.1x, made square: fast, no detector).
        workers: processes computing samples (0: in this process).
        device: torch device for MTCNN.
        min_probability: MTCNN faces below it are ignored.
        second_chance: as ``predict`` does, recheck a face the full search finds below
            ``FaceDetector.RECHECK_BELOW`` on turned copies (``FaceDetector.recheck``), and when
            it finds no face, try rotated copies and lower thresholds
            (``FaceDetector.detect_second_chance``) before the average crop.
        compression: ``"gzip"`` (level 4), ``"lzf"`` or ``"none"`` for the crop images (point arrays are stored uncompressed).
        split_seed: seed of the deterministic train/val/test permutation.
        split_file: optional text file of ``<id> <train|val|test>`` lines instead.
        limit: only the first ``limit`` sources (sorted order).
        flush_every: samples between progress markers.
        flush_seconds: at most this long between progress markers.
        profile_views: face-profiled views added per training row of a face-model dataset, after
            the rows (``facerecon.data.views``; 0: none).
    """

    crop_from: str = "detector"
    workers: int = 0
    device: str = "cpu"
    min_probability: float = 0.9
    second_chance: bool = True
    compression: str = "gzip"
    split_seed: int = 0
    split_file: Path | None = None
    limit: int | None = None
    flush_every: int = 32
    flush_seconds: float = 10.0
    profile_views: int = 0

    def content_key(self) -> dict:
        """The options that change the file's content (checked when resuming)."""
        key = {
            "crop_from": self.crop_from,
            "min_probability": self.min_probability if self.crop_from == "detector" else None,
            "second_chance": self.second_chance if self.crop_from == "detector" else None,
            # a doubtful find is rechecked on turned copies below this probability (FaceDetector)
            "recheck_below": FaceDetector.RECHECK_BELOW if self.crop_from == "detector" and self.second_chance else None,
            "compression": self.compression,
        }
        if self.profile_views:  # views are seeded by the split's seed
            key.update(profile_views=self.profile_views, split_seed=self.split_seed)
        return key


@dataclass
class PrepareSummary:
    """The outcome of :func:`prepare_cache`."""

    path: Path
    n_sources: int
    n_written: int
    n_fallback: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_counts: tuple[int, int, int] = (0, 0, 0)
    resumed_from: int = 0
    seconds: float = 0.0
    file_bytes: int = 0
    n_views: int = 0
    view_failures: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# the partial file


class PrepareDiskFull(FaceReconError):
    """Not enough free space for the next block: nothing of it was written, the partial file is
    closed cleanly and keeps every sample before it; rerun after freeing space to resume."""

    exit_code = 1


#: Free space kept beyond each block's estimated size (HDF5 metadata, the progress marker).
_SPACE_MARGIN = 1 << 20


def _ensure_space(path: Path, nbytes: int, done: str) -> None:
    """Refuse to write ``nbytes`` more to ``path`` unless the disk has room for them.

    The HDF5 library cannot recover from a failed write: the file is left damaged and the
    process may crash on the next call. So a full disk is detected before anything is written,
    with room to spare for the metadata, and the file is closed cleanly instead.
    """
    need = int(nbytes * 1.25) + _SPACE_MARGIN
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < need:
        raise PrepareDiskFull(
            f"{path}: no space left on the device ({free / 1e6:.1f} MB free, about {need / 1e6:.1f} MB needed "
            f"for the next samples); {done}: free some space and run the same command again to resume"
        )


def partial_path(out: str | os.PathLike[str]) -> Path:
    """Where the unfinished cache for ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _compression_kwargs(name: str) -> dict:
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "none":
        return {}
    raise InputError(f"unknown compression {name!r} (use lzf, gzip or none)")


def _create_partial(path: Path, config: dict) -> h5py.File:
    import h5py

    f = h5py.File(path, "w", libver="latest")
    comp = _compression_kwargs(config["options"]["compression"])
    for name, (shape, dtype) in _ROW_FIELDS.items():
        chunks = (1, *shape) if name == "images" else (256, *shape)
        kw = comp if name == "images" else {}
        f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks, **kw)
    for name, (shape, dtype) in _POINT_FIELDS.items():
        # uncompressed: appending re-writes the last partly filled chunk, and a compressed chunk
        # re-written under SWMR takes new file space each time (measured: lzf files ended up
        # larger than uncompressed ones); uncompressed, the loader also reads at ~1 GB/s.
        f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(_POINT_CHUNK, *shape))
    f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
    f.create_dataset("_skipped_ids", shape=(0,), maxshape=(None,), dtype=f"S{ID_BYTES}", chunks=(64,))
    f.create_dataset("_skipped_reasons", shape=(0,), maxshape=(None,), dtype="S1024", chunks=(64,))
    f.create_dataset("_progress", data=np.zeros(4, np.int64))
    f.attrs["_config"] = json.dumps(config, sort_keys=True)
    f.swmr_mode = True
    return f


def _read_marker(f) -> tuple[int, int, int, int]:
    src, rows, pts, skipped = (int(v) for v in f["_progress"][:])
    return src, rows, pts, skipped


def _truncate(f, rows: int, pts: int, skipped: int) -> None:
    for name in _ROW_FIELDS:
        f[name].resize(rows, axis=0)
    for name in _POINT_FIELDS:
        f[name].resize(pts, axis=0)
    f["offsets"].resize(rows + 1, axis=0)
    f["_skipped_ids"].resize(skipped, axis=0)
    f["_skipped_reasons"].resize(skipped, axis=0)


def _copy_partial(src_path: Path, dst_path: Path, config: dict) -> h5py.File:
    """A partial file whose writer was killed: copy its rows up to the marker into a fresh one."""
    import h5py

    with h5py.File(src_path, "r", libver="latest", swmr=True) as src:
        _check_config(src, config, src_path)
        n_src, rows, pts, skipped = _read_marker(src)
        dst = _create_partial(dst_path, config)
        _truncate(dst, rows, pts, skipped)
        for name in _ROW_FIELDS:
            for a in range(0, rows, 64):
                dst[name][a : min(rows, a + 64)] = src[name][a : min(rows, a + 64)]
        step = 4 * _POINT_CHUNK
        for name in _POINT_FIELDS:
            for a in range(0, pts, step):
                dst[name][a : min(pts, a + step)] = src[name][a : min(pts, a + step)]
        dst["offsets"][:] = src["offsets"][: rows + 1]
        dst["_skipped_ids"][:] = src["_skipped_ids"][:skipped]
        dst["_skipped_reasons"][:] = src["_skipped_reasons"][:skipped]
        dst.flush()
        dst["_progress"][:] = [n_src, rows, pts, skipped]
        dst.flush()
    return dst


def _check_config(f, config: dict, path: Path) -> None:
    old = json.loads(f.attrs.get("_config", "{}"))
    if old != config:
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise InputError(
            f"{path}: this unfinished cache was made with other inputs or options ({', '.join(diff)}); "
            f"rerun with the same ones to resume, or delete it to start over"
        )


def _open_partial(path: Path, config: dict) -> tuple[h5py.File, bool]:
    """Open (resume) or create the partial file; returns (file, resumed)."""
    import h5py

    if not path.exists():
        return _create_partial(path, config), False
    try:
        f = h5py.File(path, "r+", libver="latest")
    except OSError:
        f = None
    if f is not None:  # closed cleanly (Ctrl-C): continue in place
        try:
            _check_config(f, config, path)
            _truncate(f, *_read_marker(f)[1:])
            f.flush()
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return f, True
    # the writer was killed: its SWMR flag is still set; rebuild from what the marker covers
    fresh = path.with_name(path.name + ".resume")
    _ensure_space(fresh, path.stat().st_size, "nothing was changed (rebuilding the killed run's partial file needs a copy)")
    try:
        dst = _copy_partial(path, fresh, config)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        fresh.unlink(missing_ok=True)
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise FaceReconError(
            f"{path}: the unfinished cache is damaged and cannot be resumed ({reason}); delete it to start over"
        ) from None
    dst.close()
    os.replace(fresh, path)
    f = h5py.File(path, "r+", libver="latest")
    f.swmr_mode = True
    return f, True


class _Writer:
    """Appends rows to the partial file and maintains the progress marker."""

    def __init__(self, f, options: PrepareOptions) -> None:
        self.f = f
        self.options = options
        self.n_src, self.rows, self.pts, self.skipped = _read_marker(f)
        self._buf: list[tuple[dict, dict]] = []  # (row, point cloud) of each queued sample
        self._skip_buf: list[tuple[bytes, bytes]] = []
        self._pending_src = 0
        self._last_flush = time.monotonic()
        boxes = f["boxes"][: self.rows]
        sizes = f["image_sizes"][: self.rows]
        fallback = f["fallback"][: self.rows].astype(bool)
        self._rel_mean = RelativeBoxMean()
        self._rel_mean.add(boxes[~fallback], sizes[~fallback])
        self.n_fallback = int(fallback.sum())

    def fallback_box(self) -> tuple[float, float, float]:
        """Running mean of the detected boxes so far, relative to image size (deterministic)."""
        return self._rel_mean.value()

    def add(self, res: SampleResult) -> None:
        """Queue one result; rows are written in blocks by :meth:`mark`."""
        if res.error is not None:
            self._skip_buf.append((res.id.encode()[:ID_BYTES], res.error.encode()[:1024]))
        else:
            assert res.row is not None and res.cloud is not None
            self._buf.append((res.row, res.cloud))
            if res.row["fallback"]:
                self.n_fallback += 1
            else:
                self._rel_mean.add(res.row["boxes"], res.row["image_sizes"])
        self._pending_src += 1
        if len(self._buf) + len(self._skip_buf) >= self.options.flush_every or (
            time.monotonic() - self._last_flush > self.options.flush_seconds
        ):
            self.mark()

    def _block_bytes(self) -> int:
        """Bytes the queued block adds to the file (uncompressed: an upper bound)."""
        total = len(self._skip_buf) * (ID_BYTES + 1024)
        for row, cloud in self._buf:
            total += sum(np.asarray(v).nbytes for v in row.values())
            total += sum(np.asarray(v).nbytes for v in cloud.values()) + 8
        return total

    def _write_block(self) -> None:
        f = self.f
        if self._buf or self._skip_buf:
            _ensure_space(Path(f.filename), self._block_bytes(), f"it keeps the {self.rows} samples written before")
        if self._skip_buf:
            k = len(self._skip_buf)
            for j, name in enumerate(("_skipped_ids", "_skipped_reasons")):
                f[name].resize(self.skipped + k, axis=0)
                f[name][self.skipped :] = np.array([item[j] for item in self._skip_buf], dtype=f[name].dtype)
            self.skipped += k
        if self._buf:
            r, k = self.rows, len(self._buf)
            for name in _ROW_FIELDS:
                f[name].resize(r + k, axis=0)
                f[name][r:] = np.stack([np.asarray(row[name]) for row, _ in self._buf]).astype(f[name].dtype)
            counts = np.array([cloud["points"].shape[0] for _, cloud in self._buf], dtype=np.int64)
            total = int(counts.sum())
            for name in _POINT_FIELDS:
                f[name].resize(self.pts + total, axis=0)
                f[name][self.pts :] = np.concatenate([cloud[name] for _, cloud in self._buf]).astype(f[name].dtype)
            f["offsets"].resize(r + k + 1, axis=0)
            f["offsets"][r + 1 :] = self.pts + np.cumsum(counts)
            self.rows += k
            self.pts += total
        self.n_src += self._pending_src
        self._buf, self._skip_buf, self._pending_src = [], [], 0

    def mark(self) -> None:
        """Write the queued rows, flush, then write and flush the progress marker (so the marker
        never runs ahead of the data on disk)."""
        self._write_block()
        self.f.flush()
        self.f["_progress"][:] = [self.n_src, self.rows, self.pts, self.skipped]
        self.f.flush()
        self._last_flush = time.monotonic()

    @property
    def done(self) -> int:
        """Sources processed, queued ones included."""
        return self.n_src + self._pending_src

    @property
    def n_skipped(self) -> int:
        """Skipped sources, queued ones included."""
        return self.skipped + len(self._skip_buf)


# ----------------------------------------------------------------------------------------------
# splits and finishing


def assign_splits(ids: Sequence[str], seed: int = 0, split_file: Path | None = None) -> np.ndarray:
    """Train/val/test labels (0/1/2) for the rows.

    Without a split file: a permutation seeded by ``seed``; the first ``round(0.1 N)`` rows of it
    are test, the next ``round(0.1 N)`` validation, the rest training (1600/200/200 for the 2000
    AFLW2000-3D images, proportional for other sizes). With a split file: each id's label from it.
    """
    n = len(ids)
    if split_file is not None:
        table = read_split_file(split_file)
        missing = [i for i in ids if i not in table]
        if missing:
            raise InputError(f"{split_file}: {len(missing)} sample(s) not listed, e.g. {', '.join(missing[:3])}")
        return np.array([table[i] for i in ids], dtype=np.uint8)
    n_test = int(round(SPLIT_FRACTIONS[2] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    perm = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.uint8)
    split[perm[:n_test]] = 2
    split[perm[n_test : n_test + n_val]] = 1
    return split


def read_split_file(path: Path) -> dict[str, int]:
    """Parse ``<id> <train|val|test>`` lines (whitespace or comma separated, ``#`` comments)."""
    table: dict[str, int] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read split file ({exc.strerror})") from None
    for k, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or parts[1] not in SPLIT_NAMES:
            raise InputError(f"{path}:{k}: expected '<id> <train|val|test>', got {line!r}")
        table[parts[0]] = SPLIT_NAMES.index(parts[1])
    return table


def _finish_bytes(rows: int, skipped: int, model: FaceModel | None) -> int:
    """What :func:`_finish` adds to the file, at most."""
    total = rows * (ID_BYTES + 32) + skipped * (ID_BYTES + 1024 + 64)
    if model is not None:
        total += model.mean.nbytes + np.asarray(model.triangles).size * 4 + 68 * 4
    return total


def _finish(f, config: dict, options: PrepareOptions, model: FaceModel | None, command: str) -> tuple[int, int, int]:
    import h5py

    rows = int(f["offsets"].shape[0] - 1)
    for name in ("split", "ids", "skipped", "face_model"):  # an earlier finish stopped by Ctrl-C: redo it
        if name in f:
            del f[name]
    ids = [b.decode() for b in f["_ids"][:rows]]
    split = assign_splits(ids, options.split_seed, options.split_file)
    f.create_dataset("split", data=split)
    f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    skipped = f.create_group("skipped")
    sk = int(f["_skipped_ids"].shape[0])
    skipped.create_dataset("ids", data=np.array([b.decode() for b in f["_skipped_ids"][:sk]], dtype=object), dtype=h5py.string_dtype())
    skipped.create_dataset(
        "reasons", data=np.array([b.decode() for b in f["_skipped_reasons"][:sk]], dtype=object), dtype=h5py.string_dtype()
    )
    attrs = f.attrs
    attrs["schema_version"] = SCHEMA_VERSION
    attrs["created_by"] = f"facerecon {__version__}"
    attrs["command"] = command
    attrs["units"] = "crop"  # points and landmarks in crop units (docs/conventions.md)
    attrs["crop_size"] = CROP_SIZE
    attrs["dataset"] = config["dataset"]
    attrs["dataset_format"] = config["format"]
    attrs["face_model"] = model.name if model is not None else ""
    attrs["face_model_sha256"] = model.sha256 if model is not None else ""
    attrs["face_model_units"] = model.units if model is not None else ""
    attrs["crop_from"] = options.crop_from
    attrs["split_names"] = ",".join(SPLIT_NAMES)
    attrs["split_seed"] = options.split_seed if options.split_file is None else -1
    attrs["region_thresholds_mm"] = np.array([10.0, 17.0])
    if model is not None:
        # The face model's mean, triangles and 68 landmark ids (schema 2): the rows of a 3DMM
        # dataset store its vertices in this order, so a fixed template-to-model correspondence
        # gives every sample a ground truth in the template's topology (per-vertex losses).
        fm = f.create_group("face_model")
        fm.create_dataset("mean", data=model.mean.reshape(-1, 3).astype(np.float32))
        fm.create_dataset("triangles", data=np.asarray(model.triangles, dtype=np.int32))
        fm.create_dataset("landmark_ids", data=np.asarray(model.landmark_ids, dtype=np.int32))
        counts = np.diff(f["offsets"][:])
        attrs["points_in_model_order"] = bool(rows > 0 and np.all(counts == model.n_vertices))
    else:
        attrs["points_in_model_order"] = False
    if "views" in f and "_progress" in f["views"]:
        del f["views/_progress"]
    for name in ("_ids", "_skipped_ids", "_skipped_reasons", "_progress"):  # last: until here a rerun can redo all
        del f[name]
    del attrs["_config"]
    train, val, test = (int((split == k).sum()) for k in range(3))
    return train, val, test


def _open_to_finish(part: Path) -> h5py.File:
    """The unfinished file, opened to write its split and index. HDF5 locks the file for that, and
    a reader of the unfinished file (an SWMR reader watching the progress) holds a lock that
    refuses it: the finish then goes ahead without the lock (what it writes comes after every
    sample; the reader keeps the view it has). Any other failure names the file."""
    import h5py

    try:
        return h5py.File(part, "r+", libver="latest")
    except OSError as exc:
        if "unable to lock file" not in str(exc):
            raise FaceReconError(f"{part}: cannot open it to finish the cache ({exc}); run the same command again") from None
    try:
        return h5py.File(part, "r+", libver="latest", locking=False)
    except OSError as exc:
        raise FaceReconError(
            f"{part}: cannot finish the cache while another process has it open ({exc}); "
            "close it and run the same command again (every sample is kept)"
        ) from None


# ----------------------------------------------------------------------------------------------
# profiled views (facerecon.data.views), after the rows and before the finish


def _add_views(
    part: Path, refs: Sequence[SampleRef], options: PrepareOptions, ctx: SampleContext, model_path: str | None,
    fallback_rel: Sequence[float], on_views: Callable[[int, int], None] | None,
) -> list[str]:
    """Add the training rows' profiled views to the partial file; the reasons of rows without."""
    import h5py

    from facerecon.data.views import add_views

    with h5py.File(part, "r+", libver="latest") as f:
        rows = int(f["offsets"].shape[0] - 1)
        split = assign_splits([b.decode() for b in f["_ids"][:rows]], options.split_seed, options.split_file)
        try:
            return add_views(f, refs, np.flatnonzero(split == 0), options, ctx, model_path,
                             _compression_kwargs(options.compression), fallback_rel, on_views)
        except KeyboardInterrupt:
            raise PrepareInterrupted(
                f"interrupted while adding profiled views; {part} keeps them: run the same command again to resume"
            ) from None


# ----------------------------------------------------------------------------------------------
# the driver


def _results(
    refs: Sequence[SampleRef], start: int, model_path: str | None, options: PrepareOptions, ctx: SampleContext
) -> Generator[SampleResult, None, None]:
    """The samples from ``start`` on, computed in order (``options.workers`` processes, or here)."""
    jobs = ((i, refs[i]) for i in range(start, len(refs)))
    return run_jobs(sample_job, jobs, ctx, options.workers, model_path, options)


def prepare_cache(
    refs: Sequence[SampleRef],
    out: str | os.PathLike[str],
    model_path: str | os.PathLike[str] | None,
    options: PrepareOptions,
    dataset: str = "",
    fmt: str = "",
    command: str = "",
    on_progress: Callable[[int, int, int], None] | None = None,
    on_views: Callable[[int, int], None] | None = None,
) -> PrepareSummary:
    """Build the cache ``out`` from the samples ``refs`` (resuming ``out.partial`` if present).

    Args:
        refs: the source samples in their deterministic order (from ``list_samples``).
        out: the ``.h5`` to write; it must not exist.
        model_path: face model for 3DMM datasets (None for scans).
        options: see :class:`PrepareOptions`.
        dataset, fmt, command: recorded in the file's attributes.
        on_progress: called as ``on_progress(sources_done, total, skipped)`` after each sample.
        on_views: called as ``on_views(rows_done, training_rows)`` after each row's profiled views.

    Raises:
        PrepareInterrupted: on Ctrl-C (the partial file is flushed; run again to resume).
        InputError: ``out`` exists, or the partial file was made with other inputs.
    """
    t0 = time.monotonic()
    out = Path(out)
    refs, model = _checked_inputs(out, refs, model_path, options)
    config = _cache_config(refs, model, options, dataset, fmt)
    ensure_parent(out)
    part = partial_path(out)
    _ensure_space(part, 0, "nothing was changed")
    f, resumed = _open_partial(part, config)
    writer = _Writer(f, options)
    resumed_from = writer.n_src if resumed else 0
    ctx = make_context(None, options, model)
    mp_path = str(model_path) if model_path is not None else None
    _write_sources(refs, writer, _results(refs, writer.n_src, mp_path, options, ctx), ctx, part, on_progress)
    skipped, n_written, n_fallback, fallback_rel = _close_rows(writer, out, part, len(refs))
    view_failures = _add_views(part, refs, options, ctx, mp_path, fallback_rel, on_views) if options.profile_views > 0 and n_written else []
    _ensure_space(part, _finish_bytes(n_written, len(skipped), model), f"all {len(refs)} samples are in it; what is left is small")
    with _open_to_finish(part) as f:
        counts = _finish(f, config, options, model, command)
        n_views = int(f["views/images"].shape[0]) if "views" in f else 0
    os.replace(part, out)
    return PrepareSummary(
        path=out,
        n_sources=len(refs),
        n_written=n_written,
        n_fallback=n_fallback,
        skipped=skipped,
        split_counts=counts,
        resumed_from=resumed_from,
        seconds=time.monotonic() - t0,
        file_bytes=out.stat().st_size,
        n_views=n_views,
        view_failures=view_failures,
    )


def _cache_config(
    refs: Sequence[SampleRef], model: FaceModel | None, options: PrepareOptions, dataset: str, fmt: str
) -> dict:
    """What a partial file must have been made with to be resumed (and the finished file records)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "format": fmt,
        "sources_sha256": hashlib.sha256("\n".join(r.id for r in refs).encode()).hexdigest(),
        "n_sources": len(refs),
        "face_model_sha256": model.sha256 if model is not None else "",
        "options": options.content_key(),
    }


def _close_rows(
    writer: _Writer, out: Path, part: Path, n_refs: int
) -> tuple[list[tuple[str, str]], int, int, tuple[float, float, float]]:
    """Close the partial file after its rows: (the skipped samples' ids and reasons, rows
    written, fallback crops, the mean fallback box). No row at all: the partial file is
    removed and the run fails (a cache without samples is of no use, and nothing to resume)."""
    f = writer.f
    skipped = [(a.decode(), b.decode()) for a, b in zip(f["_skipped_ids"][:], f["_skipped_reasons"][:])]
    n_written, n_fallback = writer.rows, writer.n_fallback
    fallback_rel = writer.fallback_box()
    f.close()
    if n_written == 0:
        part.unlink(missing_ok=True)
        first = f" (the first: {skipped[0][1]})" if skipped else ""
        raise InputError(f"{out}: not written: none of the {n_refs} samples could be used{first}")
    return skipped, n_written, n_fallback, fallback_rel


def _checked_inputs(
    out: Path, refs: Sequence[SampleRef], model_path: str | os.PathLike[str] | None, options: PrepareOptions
) -> tuple[Sequence[SampleRef], FaceModel | None]:
    """``prepare``'s checks before anything is written: the output, the options, the samples (cut
    to ``--limit``) and the face model (loaded). Returns the samples and the model."""
    if out.exists():
        raise InputError(f"{out}: already exists (delete it or choose another output)")
    if options.workers < 0:
        raise InputError(f"--workers must be >= 0, got {options.workers}")
    if options.crop_from not in ("detector", "landmarks"):
        raise InputError(f"--crop-from must be detector or landmarks, got {options.crop_from!r}")
    _compression_kwargs(options.compression)
    if options.limit is not None:
        refs = list(refs)[: max(0, options.limit)]
    if not refs:
        raise InputError("no samples to prepare")
    if options.split_file is not None:
        read_split_file(options.split_file)  # fail early on a malformed file
    model = load_face_model(model_path) if model_path is not None else None
    if model is None and any(r.format != "scans" for r in refs):
        raise InputError("3DMM datasets (AFLW2000-3D, 300W-LP) need --face-model")
    return refs, model


def _write_sources(
    refs: Sequence[SampleRef],
    writer: _Writer,
    results: Generator[SampleResult, None, None],
    ctx: SampleContext,
    part: Path,
    on_progress: Callable[[int, int, int], None] | None,
) -> None:
    """Each sample's result into the partial file (the fallback box for those without a
    detection); on a stop, the block so far is marked and the file closed (the worker pool
    stopped), and the stop is raised as :class:`PrepareInterrupted`."""
    f = writer.f
    try:
        for res in results:
            if res.needs_fallback:
                res = compute_sample(res.index, refs[res.index], ctx, fallback_rel=writer.fallback_box())
            writer.add(res)
            if on_progress is not None:
                on_progress(writer.done, len(refs), writer.n_skipped)
        writer.mark()
    except PrepareDiskFull:  # nothing of the block was written: close cleanly, keep the rest
        results.close()
        f.close()
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        results.close()  # stops the worker pool
        try:
            writer.mark()
        finally:
            f.close()
        raise PrepareInterrupted(
            f"stopped after {writer.done} of {len(refs)} samples; {part} keeps them: "
            f"run the same command again to resume",
            signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT,
        ) from None
    except BaseException:
        results.close()
        try:
            writer.mark()
        finally:
            f.close()
        raise


__all__ = [
    "SCHEMA_VERSION",
    "PrepareDiskFull",
    "PrepareInterrupted",
    "PrepareOptions",
    "PrepareSummary",
    "assign_splits",
    "partial_path",
    "prepare_cache",
    "read_split_file",
]
