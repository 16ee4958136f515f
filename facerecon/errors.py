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
