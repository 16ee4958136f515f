"""The ``facerecon`` command line: one typer app, one module per subcommand.

Every module in this package whose name does not start with ``_`` defines ``register(app)`` and
is registered automatically (ordered by its ``ORDER`` constant), so adding a subcommand means
adding one file. Modules import heavy libraries (torch, open3d) inside their command functions,
so ``facerecon --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
from typing import Any, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors its own copy of click; older versions use click itself
    from typer import _click as click
    from typer._click import exceptions as _click_exceptions  # noqa: F401  (makes click.exceptions importable)
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]  # the same module under its own name

from facerecon import __version__
from facerecon.cli._common import err_console, state
from facerecon.errors import FaceReconError, missing_extra
from facerecon.signals import Interrupted, Terminated, exit_code

_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _FaceReconGroup(TyperGroup):
    """Runs a command and turns errors into the toolkit's convention.

    One red line on stderr; exit 2 for bad input (usage errors and ``InputError``), 1 for other
    failures; the traceback only with ``--verbose``.
    """

    def main(self, args: Any = None, prog_name: Any = None, **extra: Any) -> Any:  # type: ignore[override]  # click's keywords pass through **extra
        extra.pop("standalone_mode", None)
        argv = list(sys.argv[1:] if args is None else args)
        state.verbose = "--verbose" in argv or "-v" in argv
        try:
            rv = super().main(args=argv, prog_name=prog_name or "facerecon", standalone_mode=False, **extra)
            sys.exit(rv if isinstance(rv, int) else 0)  # non-standalone mode returns typer.Exit's code
        except _NoArgsIsHelp as exc:
            print(exc.format_message())
            sys.exit(0)
        except typer.Abort:
            err_console.print("[red]Aborted.[/red]")
            sys.exit(130)
        except click.exceptions.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx is not None else "facerecon"
            _error_line(f"{exc.format_message()} (see '{cmd} --help')")
            sys.exit(2)
        except click.exceptions.ClickException as exc:
            _error_line(exc.format_message())
            sys.exit(exc.exit_code)
        except Interrupted as exc:  # a long-running command's own account: what was kept, how to go on
            err_console.print(f"[red]{escape(exc.line())}[/red]", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[red]Interrupted.[/red]")
            sys.exit(exit_code(signal.SIGINT))
        except Terminated:
            err_console.print("[red]Terminated.[/red]")
            sys.exit(exit_code(signal.SIGTERM))
        except FaceReconError as exc:
            _report(exc)
            sys.exit(exc.exit_code)
        except ImportError as exc:  # a command of the `train` extra on an install without it
            missing = missing_extra(exc, f"facerecon {_command_name(argv)}".rstrip())
            if missing is None:
                _report(exc, prefix="internal error: ")
                sys.exit(1)
            _report(missing)
            sys.exit(missing.exit_code)
        except (OSError, MemoryError) as exc:
            _report(exc)
            sys.exit(1)
        except Exception as exc:  # an unexpected bug: still one line unless --verbose
            _report(exc, prefix="internal error: ")
            sys.exit(1)


def _command_name(argv: list[str]) -> str:
    """The subcommand named on the command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), "")


def _error_line(message: str) -> None:
    message = escape(" ".join(str(message).split()))  # exactly one line, shown as written (no markup)
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True, soft_wrap=True)


def _report(exc: BaseException, prefix: str = "") -> None:
    """One line for ``exc``; never raises (a failing report must not hide the error)."""
    try:
        if state.verbose:
            err_console.print_exception(show_locals=False)
        text = _exception_text(exc)
        _error_line(f"{prefix}{text}" + ("" if state.verbose or not prefix else " (run with --verbose for the traceback)"))
    except Exception:  # pragma: no cover - the last resort: plain stderr
        sys.stderr.write(f"error: {prefix}{type(exc).__name__}\n")


def _exception_text(exc: BaseException) -> str:
    """The exception's message, whole, with the file an ``OSError`` names (its type when empty)."""
    try:
        text = " ".join(str(exc).split())
    except Exception:
        text = ""
    if isinstance(exc, OSError):
        names = [str(n) for n in (exc.filename, getattr(exc, "filename2", None)) if n]
        reason = exc.strerror or text
        if names and not any(n in text for n in names):
            text = f"{' -> '.join(names)}: {reason}" if reason else " -> ".join(names)
    return text or type(exc).__name__


app = typer.Typer(
    name="facerecon",
    cls=_FaceReconGroup,
    help="Reconstruct a 3D face mesh from a single photo (Pixel2Mesh for faces).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from facerecon.cli._common import console

        console.print(f"facerecon {__version__}")
        try:
            from facerecon.ops import backend_summary  # the nearest-neighbour backend in use

            console.print(backend_summary())
        except ImportError:
            pass
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs and full tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or info messages."),
) -> None:
    """Reconstruct a 3D face mesh from a single photo (Pixel2Mesh for faces)."""
    state.verbose = verbose
    state.quiet = quiet


def _register_all() -> None:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        modules.append((getattr(module, "ORDER", 100), info.name, module))
    for _, _, module in sorted(modules, key=lambda m: (m[0], m[1])):
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()
