"""Crash-safe file writing: everything the toolkit writes goes to a temporary file beside the
target and is renamed into place, so an interrupted run never leaves a half-written file.
A failed write (a full disk) removes the temporary file and raises an ``OSError`` that names the
target. :func:`folder_lock` keeps a second process out of an output folder.

*Durable* writes (the default) also flush the file to the disk (``fsync``) before the rename, so
that a power cut or an OS crash right after cannot leave an empty file in its place: caches,
checkpoints, templates, configs and reports. ``facerecon predict``'s per-photo outputs (meshes,
records, overlays) are written atomically but not flushed (``durable=False``): the flush costs
1.5-3 ms per file on the disks measured, about a third of a photo's export, and those files are
recomputed in a fraction of a second; an interrupted run still leaves each one complete or
absent."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from facerecon.errors import InputError


def ensure_parent(path: str | os.PathLike[str]) -> Path:
    """Create the parent folder of ``path`` (a clear ``InputError`` when that is impossible)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    return path


def _temporary(path: Path, suffix: str) -> tuple[int, Path]:
    """An open file descriptor and the path of a new temporary file beside ``path``, with the
    permissions a plain ``open()`` would give (``mkstemp`` creates files 0600)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write here ({exc.strerror})") from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


@contextlib.contextmanager
def _renamed_onto(path: Path, tmp_path: Path) -> Iterator[None]:
    """The block completes ``tmp_path``; then it is renamed onto ``path``. On any exception the
    temporary file is removed (the target untouched), and an ``OSError`` about the temporary
    file is raised again naming the target."""
    try:
        yield
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if exc.filename is None or str(exc.filename) == str(tmp_path):  # name the target, not our temporary
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the target's suffix (or ``suffix``) so that libraries that pick a
    format from the extension (trimesh, h5py, cv2) behave the same. On any exception the
    temporary file is removed and the target is left untouched. ``durable``: flush the file to
    the disk before the rename (see the module docstring).
    """
    path = ensure_parent(path)
    fd, tmp_path = _temporary(path, path.suffix if suffix is None else suffix)
    os.close(fd)
    with _renamed_onto(path, tmp_path):
        yield tmp_path
        if durable:
            _fsync(tmp_path)  # by path: a library may have written the file through its own handle


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", durable: bool = True, **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing, atomically: the file appears complete or not at all."""
    if not any(m in mode for m in "wx"):
        raise ValueError("atomic_open is for writing ('w' or 'wb')")
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as fh:
            yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (as :func:`atomic_path`), through the temporary
    file's own descriptor: one open instead of three for a small file.

    Raises:
        InputError: the folder cannot be written (permission denied).
    """
    path = ensure_parent(path)
    fd, tmp_path = _temporary(path, path.suffix)
    try:
        with _renamed_onto(path, tmp_path):
            try:
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
    except PermissionError:
        raise InputError(f"{path}: cannot write here (permission denied)") from None


def check_writable_file(path: str | os.PathLike[str], what: str) -> None:
    """Fail before any work when ``path`` (a file to be written, ``what`` it is) cannot be
    written: its folder cannot be created or written, or the path is a folder.

    Raises:
        InputError: one line naming the path and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the {what} (or another path)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the folder for the {what} ({exc.strerror or exc})") from None
    _probe_folder(path.parent, path, what)


def check_writable_folder(folder: str | os.PathLike[str], what: str) -> None:
    """Fail before any work when ``folder`` (for ``what``, e.g. "meshes") is a file, or cannot
    be created or written.

    Raises:
        InputError: one line naming the folder and the reason.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the {what} go into a folder, and this is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the folder for the {what} ({exc.strerror or exc})") from None
    _probe_folder(folder, folder, what)


def _probe_folder(folder: Path, named: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``: the one sure test that it can be written."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".facerecon-probe.", dir=folder)
    except OSError as exc:
        raise InputError(f"{named}: cannot write the {what} there ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, name: str = ".facerecon.lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a lock file in it) while the block runs.

    A second process asking for the same folder is refused at once with a ``FaceReconError``
    that names the folder and the holder's pid. The lock is an ``flock`` on ``folder/name``,
    released by the kernel when the process ends however it ends (``kill -9`` included); the
    file is removed on the way out. Where ``fcntl`` is missing (Windows) nothing is locked.

    Args:
        folder: the folder to lock (created if missing).
        what: what holds it, for the message (e.g. ``"detect-crop"``).
    """
    from facerecon.errors import FaceReconError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(folder) / name
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    path = folder / name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(fd)
            raise FaceReconError(
                f"{folder}: another facerecon {what} is writing into this folder (pid {holder}); "
                f"wait for it to finish or choose another output folder"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: start over
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiting process then sees another inode and retries
        os.close(fd)
