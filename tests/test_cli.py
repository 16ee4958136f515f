"""The command-line framework: help, version, the error convention (one line, exit codes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

try:  # typer >= 0.20 vendors its own copy of click
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click

import facerecon
from facerecon.cli import app
from facerecon.errors import FaceReconError, InputError

runner = CliRunner()


#: The subcommands in pipeline order (docs/index.md), one per non-private module of facerecon/cli/.
SUBCOMMANDS = ["prepare", "detect-crop", "make-initial-mesh", "train", "eval", "predict", "export", "view", "info"]


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--version" in result.output
    # the command rows of the rich help panels: "│ name   help text"
    listed = re.findall(r"^│ ([a-z][a-z-]*)  +\S", result.output, flags=re.MULTILINE)
    assert listed == SUBCOMMANDS, result.output
    registered = typer.main.get_command(app).list_commands(click.Context(typer.main.get_command(app)))
    assert sorted(registered) == sorted(SUBCOMMANDS)
    modules = sorted(p.stem.replace("_", "-") for p in (Path(facerecon.__file__).parent / "cli").glob("[!_]*.py"))
    assert modules == sorted(SUBCOMMANDS)


def test_version_prints_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"facerecon {facerecon.__version__}" in result.output


def test_unknown_option_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["--no-such-option"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "no-such-option" in lines[0].lower()
    assert "Traceback" not in result.output


def test_unknown_command_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    assert len([l for l in result.output.splitlines() if l.strip()]) == 1


def _app_with_failing_command(exc: Exception) -> typer.Typer:
    """The real app's group class and callback with one extra command that raises ``exc``."""
    from facerecon.cli import _FaceReconGroup, _root

    test_app = typer.Typer(cls=_FaceReconGroup)
    test_app.callback()(_root)

    @test_app.command("boom")
    def boom() -> None:
        raise exc

    @test_app.command("other")
    def other() -> None:  # a second command so "boom" stays a subcommand
        pass

    return test_app


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InputError("faces.jpg: cannot read image (truncated file)"), 2),
        (FaceReconError("training diverged (loss is NaN at step 12)"), 1),
        (RuntimeError("unexpected"), 1),
    ],
)
def test_errors_are_one_red_line_with_exit_code(exc: Exception, code: int) -> None:
    result = runner.invoke(_app_with_failing_command(exc), ["boom"])
    assert result.exit_code == code
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert str(exc) in lines[0]
    assert "Traceback" not in result.output


def test_verbose_shows_traceback() -> None:
    result = runner.invoke(_app_with_failing_command(FaceReconError("bad thing")), ["--verbose", "boom"])
    assert result.exit_code == 1
    assert "Traceback" in result.output
    assert "bad thing" in result.output


def test_console_script_runs_in_subprocess() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "facerecon", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert facerecon.__version__ in out.stdout


def test_help_keeps_bracketed_text() -> None:
    """Rich markup must not swallow the square brackets of help texts ("[model]", "[default: 8]"):
    for every subcommand, each bracketed phrase its source writes in a help string is rendered."""
    import ast
    import importlib

    seen = 0
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"facerecon.cli.{name.replace('-', '_')}")
        tree = ast.parse(Path(module.__file__).read_text())
        phrases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "help" and isinstance(node.value, ast.Constant):
                phrases.update(re.findall(r"\[([a-z][^\]]*)\]", node.value.value.replace("\\[", "[")))
        out = re.sub(r"[\s│]+", " ", runner.invoke(app, [name, "--help"], terminal_width=200).output)
        for phrase in phrases:
            flat = re.sub(r"\s+", " ", phrase)
            assert f"[{flat}]" in out, (name, phrase)
        seen += len(phrases)
    assert seen >= 5  # train alone writes [model], [loss], [train] and several [default: ...]
