"""One stop-signal policy for every long-running command (``prepare``, ``detect-crop``, ``train``,
``eval``, ``predict`` on folders and videos).

Ctrl-C (SIGINT) and SIGTERM (a scheduler's or a service manager's stop) end a command the same
way: the work under way is abandoned at a safe point (``finally`` blocks run: temporary files go,
locks are released, records of finished work are written), one line says what was kept and how
to continue, and the exit code is the shell's for that signal: 130 after Ctrl-C, 143 after
SIGTERM (128 + the signal number).

- :func:`interruptible` wraps a command whose work may simply be abandoned: SIGTERM raises
  :class:`Terminated` in the main thread as Ctrl-C raises ``KeyboardInterrupt``, and both leave
  the block as :class:`Interrupted`, carrying the line the CLI prints and the exit code.
- :func:`stop_requests` is for ``train``, whose step under way must finish: either signal only
  sets a flag the loop polls (a second Ctrl-C raises ``KeyboardInterrupt``).
- :func:`stop_signals_blocked` and :func:`ignore_stop_signals` keep helper processes (data-loader
  and pool workers) alive when a signal goes to the whole process group: their parent decides.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterator

from facerecon.errors import FaceReconError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_WHAT: dict[int, str] = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM inside :func:`sigterm_raises` (a ``BaseException``
    like ``KeyboardInterrupt``, so no ``except Exception`` stops it by mistake)."""


class Interrupted(FaceReconError):
    """A command stopped by a signal; the message says what was kept and how to continue.

    ``exit_code`` is 130 (Ctrl-C) or 143 (SIGTERM); :meth:`line` is the one line to print."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = exit_code(signum)

    def line(self) -> str:
        return f"{_WHAT.get(self.signum, f'stopped by signal {self.signum}')}: {self}"


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: let the clean-up run to its end
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (once; a repeat is
    ignored while the clean-up runs). The previous handler is put back on the way out. Outside
    the main thread (a library caller's worker thread) signals are left alone."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interruptible(kept: Callable[[], str]) -> Iterator[None]:
    """Run the block with SIGTERM raising like Ctrl-C; either leaves it as :class:`Interrupted`
    whose message is ``kept()`` (called after the block's own clean-up: what was kept, and how
    to continue). An :class:`Interrupted` raised inside (a library's own account) passes as it is."""
    try:
        with sigterm_raises():
            yield
    except KeyboardInterrupt:
        raise Interrupted(kept(), signal.SIGINT) from None
    except Terminated:
        raise Interrupted(kept(), signal.SIGTERM) from None


# ------------------------------------------------------------------------------------- graceful stop
class StopRequest:
    """Set by the first Ctrl-C or SIGTERM inside :func:`stop_requests`; the loop polls it."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal received

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Ctrl-C and SIGTERM only ask the loop to stop: it finishes the step under way, saves and
    returns, so nothing holds a half-done step. A second Ctrl-C raises ``KeyboardInterrupt`` at
    once. Forked children (data-loader workers) inherit the handler and ignore both signals (a
    signal to the whole process group must not kill the batch the step under way waits for),
    unless their parent is gone: then SIGTERM ends them as by default."""
    request = StopRequest()
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            if signum == signal.SIGTERM and os.getppid() != owner:  # orphaned: behave as by default
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not request.requested:
            request.signum = signum
        request.requested = True

    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous = {}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------- helper processes
@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block Ctrl-C and SIGTERM in this thread while helper processes are forked: a child
    inherits the blocked mask, so a signal to the process group that arrives before it ignores
    the signals (:func:`ignore_stop_signals`) stays pending instead of ending it. This process
    receives its own copy once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a helper process (a data-loader ``worker_init_fn``, a pool initializer): ignore Ctrl-C
    and SIGTERM sent to the whole process group; the parent finishes or abandons the work and
    shuts its helpers down. Ignoring first discards any signal that arrived while blocked
    (:func:`stop_signals_blocked`); only then are they unblocked."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
