"""Shared CLI state and helpers: consoles, progress bars, the --quiet/--verbose flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    ProgressColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console()  # results (tables, summaries) go to stdout
err_console = Console(stderr=True)  # logs, progress and errors go to stderr


@dataclass
class _State:
    verbose: bool = False
    quiet: bool = False


state = _State()


def info(message: str) -> None:
    """An informational line on stderr, silenced by --quiet."""
    if not state.quiet:
        err_console.print(message, highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second; the unit comes from the task's ``unit`` field (default "it")."""

    def render(self, task) -> Text:  # type: ignore[no-untyped-def]
        unit = task.fields.get("unit", "it")
        if task.speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:.1f} {unit}/s", style="progress.data.speed")


def make_progress(*extra_columns: object, disable: bool = False) -> Progress:
    """A rich progress bar on stderr with rate and ETA; disabled by --quiet (or ``disable``)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=state.quiet or disable,
        transient=False,
    )


def display_path(path: str | Path) -> str:
    """A path as the user would type it (relative to the working directory when possible)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
