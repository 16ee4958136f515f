"""Progress display shared by the library and the CLI: the stderr console, a rich progress bar,
and training's progress line with its running loss means (:func:`training_progress`).

Library code (``engine/train.py``) and the subcommands (``cli/``) both draw their bars with
:func:`make_progress`; the CLI's ``--quiet`` flag is applied by ``cli/_common.make_progress``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

err_console = Console(stderr=True)  # logs, progress and errors go to stderr


class RateColumn(ProgressColumn):
    """Items per second; the unit comes from the task's ``unit`` field (default "it")."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        if task.speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:.1f} {unit}/s", style="progress.data.speed")


def make_progress(*extra_columns: str | ProgressColumn, disable: bool = False) -> Progress:
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


class TrainingProgress:
    """Training's progress line: a rich bar with the loss terms, samples/s and ETA (or, into a log
    file, a plain line every minute; or nothing), and the running means of the epoch's losses."""

    def __init__(self, bar: Any, epochs: int, steps_per_epoch: int, log: Callable[[str], None] | None = None) -> None:
        self.bar = bar
        self.log = log  # when stderr is not a terminal (a log file): a plain line every minute
        self.last_log = time.perf_counter()
        self.epoch = 0
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.task = None
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def start_epoch(self, epoch: int, done: int) -> None:
        self.sums, self.count, self.samples, self.t0 = {}, 0, 0, time.perf_counter()
        self.epoch, self.done = epoch, done
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, completed=done, unit="batch", terms="")

    def step(self, samples: int, loss: float, terms: dict[str, float]) -> None:
        self.count += 1
        self.samples += samples
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        shown = " ".join(f"{k} {v / self.count:.3g}" for k, v in self.sums.items())
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, terms=f"{shown} | {rate:.2f} samples/s")
        if self.log is not None and time.perf_counter() - self.last_log > 60:
            self.last_log = time.perf_counter()
            step = self.done + self.count
            self.log(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps}: {shown} | {rate:.2f} samples/s")

    def running(self) -> dict:
        """The epoch's sums so far (saved in a mid-epoch checkpoint)."""
        return {"sums": dict(self.sums), "count": self.count}

    def restore(self, running: dict) -> None:
        """Continue the sums of a resumed epoch (so its means cover every step of it)."""
        if running:
            self.sums = {str(k): float(v) for k, v in dict(running.get("sums", {})).items()}
            self.count = int(running.get("count", 0))
            self.done = max(0, self.done - self.count)  # the progress line shows done + count

    def epoch_means(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out["samples_per_s"] = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        return out


@contextlib.contextmanager
def training_progress(show: bool, epochs: int, steps: int, log: Callable[[str], None]) -> Iterator[TrainingProgress]:
    """The training progress of ``epochs`` epochs of ``steps`` steps: a live bar on a terminal,
    ``log`` lines every minute otherwise, nothing (the means only) when not ``show``."""
    if not show:
        yield TrainingProgress(None, epochs, steps)
        return
    from rich.progress import TextColumn

    if not err_console.is_terminal:  # a log file: plain periodic lines instead of a live bar
        yield TrainingProgress(None, epochs, steps, log=log)
        return
    bar = make_progress(TextColumn("{task.fields[terms]}"))
    with bar:
        yield TrainingProgress(bar, epochs, steps)
