"""Progress display shared by the library and the CLI: the stderr console and a rich progress bar.

Library code (``engine/train.py``) and the subcommands (``cli/``) both draw their bars with
:func:`make_progress`; the CLI's ``--quiet`` flag is applied by ``cli/_common.make_progress``.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

err_console = Console(stderr=True)  # logs, progress and errors go to stderr


class RateColumn(ProgressColumn):
    """Items per second; the unit comes from the task's ``unit`` field (default "it")."""

    def render(self, task) -> Text:  # type: ignore[no-untyped-def]
        unit = task.fields.get("unit", "it")
        if task.speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:.1f} {unit}/s", style="progress.data.speed")


def make_progress(*extra_columns: object, disable: bool = False) -> Progress:
    """A rich progress bar on stderr with rate and ETA (hidden when ``disable``)."""
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
        disable=disable,
        transient=False,
    )
