"""The exceptions library code raises; the CLI turns them into one red line and an exit code."""

from __future__ import annotations


class FaceReconError(Exception):
    """A failure a user can act on. The CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class InputError(FaceReconError, ValueError):
    """Bad input: a missing or malformed file, an invalid argument or tensor. Exit code 2."""

    exit_code = 2


class DependencyError(FaceReconError):
    """An optional dependency or system library is missing or unusable. Exit code 1."""

    exit_code = 1


#: The install command that brings PyTorch and the rest of what training needs.
TRAIN_EXTRA = "pip install 'facerecon[train]'"
#: The top-level modules of the ``train`` extra (pyproject.toml): a plain install has none of them.
TRAIN_MODULES = frozenset({"torch", "torchvision", "facenet_pytorch", "h5py", "onnx", "ninja"})


class MissingExtraError(InputError):
    """Something that needs the ``train`` extra (PyTorch) on an install without it. Exit code 2."""


def missing_extra(exc: BaseException, what: str) -> MissingExtraError | None:
    """``exc`` as one actionable line when it is the import of a ``train``-extra module that this
    installation lacks (``what`` needs it, e.g. ``"facerecon train"``); else None."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not name or name.partition(".")[0] not in TRAIN_MODULES:
        return None
    return MissingExtraError(f"{what} needs PyTorch ({name.partition('.')[0]} is not installed): {TRAIN_EXTRA}")
