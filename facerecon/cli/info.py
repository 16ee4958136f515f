"""``facerecon info``: versions, torch/CUDA, and the nearest-neighbour backend with its build cache."""

from __future__ import annotations

import typer

ORDER = 90


def info_command(
    build: bool = typer.Option(
        False, "--build", help="Build the compiled nearest-neighbour extension now if it is not cached (~1 min once)."
    ),
) -> None:
    """Print versions, the torch/CUDA setup and which nearest-neighbour backend is in use."""
    import platform
    import shutil
    import sys
    import warnings

    from rich.table import Table

    from facerecon import __version__
    from facerecon.cli._common import console

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numpy
        import scipy
        import torch

        from facerecon.ops import backend, backend_summary
        from facerecon.ops import build as ops_build

        if build:
            backend("cpu")
        summary = backend_summary()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    cuda = "available: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    rows = [
        ("facerecon", __version__),
        ("python", f"{sys.version.split()[0]} ({platform.platform()})"),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'}), {torch.get_num_threads()} threads"),
        ("CUDA device", cuda),
        ("CUDA toolkit (nvcc)", ops_build.cuda_home() or "not found"),
        ("C++ compiler", shutil.which("c++") or shutil.which("g++") or "not found"),
        ("numpy / scipy", f"{numpy.__version__} / {scipy.__version__}"),
        ("backend", summary),
        ("build cache", str(ops_build.cache_root())),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``info`` subcommand."""
    app.command("info", help="Show versions, torch/CUDA and the nearest-neighbour backend in use.",
                rich_help_panel="Utilities")(info_command)
