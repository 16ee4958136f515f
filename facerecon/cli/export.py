"""``facerecon export``: a checkpoint's network (and MTCNN's) as ONNX, for the torch-free runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ORDER = 65


def export_command(
    output: Path = typer.Argument(..., help="The ONNX file to write (e.g. model.onnx).", dir_okay=False),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-c", help="Checkpoint to export (default: the model shipped with facerecon)."
    ),
    mtcnn: Optional[Path] = typer.Option(
        None, "--mtcnn", help="Also write MTCNN's three networks (mtcnn_pnet/rnet/onet.onnx) into this folder.",
        file_okay=False,
    ),
) -> None:
    """Export the network as one ONNX file that ONNX Runtime runs without torch (docs/runtime.md)."""
    import time

    from facerecon.cli._common import display_path, info
    from facerecon.runtime.export import export_mtcnn, export_onnx

    t0 = time.perf_counter()
    path = export_onnx(checkpoint, output)
    size_mb = path.stat().st_size / 1e6
    info(f"wrote {display_path(path)} ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    if mtcnn is not None:
        written = export_mtcnn(mtcnn)
        info(f"wrote MTCNN's networks: {', '.join(display_path(p) for p in written.values())}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` subcommand."""
    app.command("export", help="Export the network (and MTCNN) to ONNX for the torch-free runtime.",
                rich_help_panel="Model")(export_command)
