"""Shared CLI state and helpers: consoles, progress bars, the --quiet/--verbose flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, ProgressColumn

from facerecon import progress as _progress
from facerecon.progress import err_console as err_console  # re-exported: the subcommands import it from here

console = Console()  # results (tables, summaries) go to stdout


@dataclass
class _State:
    verbose: bool = False
    quiet: bool = False


state = _State()


def info(message: str) -> None:
    """An informational line on stderr, silenced by --quiet."""
    if not state.quiet:
        err_console.print(message, highlight=False, soft_wrap=True)


def make_progress(*extra_columns: str | ProgressColumn, disable: bool = False) -> Progress:
    """A rich progress bar on stderr with rate and ETA; disabled by --quiet (or ``disable``)."""
    return _progress.make_progress(*extra_columns, disable=state.quiet or disable)


def display_path(path: str | Path) -> str:
    """A path as the user would type it (relative to the working directory when possible)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
