"""``facerecon eval``: Chamfer distance, F-scores and landmark NME on a cache split."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from facerecon.cli._common import console, display_path, info, make_progress
from facerecon.errors import InputError
from facerecon.signals import interruptible

if TYPE_CHECKING:
    from facerecon.engine.evaluate import EvalReport, EvalSettings

ORDER = 50

_METRICS = (
    ("chamfer", "Chamfer distance (crop units^2, x1000)", 1000.0),
    ("fscore@tau", "F-score @ tau (%)", 100.0),
    ("precision@tau", "  precision @ tau (%)", 100.0),
    ("recall@tau", "  recall @ tau (%)", 100.0),
    ("fscore@2tau", "F-score @ 2 tau (%)", 100.0),
    ("precision@2tau", "  precision @ 2 tau (%)", 100.0),
    ("recall@2tau", "  recall @ 2 tau (%)", 100.0),
    ("nme", "NME, 68 landmarks, x-y (%)", 1.0),
    ("nme_yaw_0_30", "  NME |yaw| 0-30 (%)", 1.0),
    ("nme_yaw_30_60", "  NME |yaw| 30-60 (%)", 1.0),
    ("nme_yaw_60_90", "  NME |yaw| 60-90 (%)", 1.0),
    ("nme_yaw_mean", "  NME mean of yaw bins (%)", 1.0),
    ("folds", "folded interior edges, > 60 deg (%)", 1.0),
)


def _rows_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def eval_command(
    cache: Path = typer.Option(..., "--cache", help="HDF5 cache from 'facerecon prepare'."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model checkpoint (best.pt / last.pt). Default: the model shipped with facerecon, if any."),
    split: str = typer.Option("test", "--split", help="train | val | test | all."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON summary; the per-sample CSV goes beside it (same name, .csv)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Per-sample CSV (default: beside --output)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also evaluate baselines, comma-separated: 'mean' (the constant mean of the train ground truths), 'five-point' (the face model's mean face posed by a least-squares fit of its five points to MTCNN's five points of each crop), or 'all'."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Samples per forward pass (results do not depend on it)."),
    tau: float = typer.Option(0.01, "--tau", min=0.0, help="F-score threshold, a distance in crop units (0.01 = ~1.1 px of a 224 crop, ~1 mm on a face); also reported at 2 tau."),
    samples: int = typer.Option(10000, "--samples", min=100, help="Points sampled uniformly on each predicted surface before the point metrics."),
    seed: int = typer.Option(0, "--seed", help="Seed of the surface sampling."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N samples of the split."),
) -> None:
    """Evaluate a checkpoint (and/or the mean-face baseline) on a cache split.

    Predicted meshes are sampled uniformly on their surface (--samples points) and compared with
    every ground-truth point: Chamfer distance (mean squared nearest distance both ways, summed,
    crop units^2), F-score at tau and 2 tau with precision and recall, and the 68-landmark NME of
    the AFLW2000-3D protocol (x-y, normalised by sqrt(w h) of the ground-truth landmark box) by
    |yaw| bin.
    """
    from facerecon.engine.evaluate import EvalSettings

    baselines = _check_inputs(cache, split, baseline, device)
    checkpoint = _checkpoint_or_default(checkpoint, baseline)
    settings = EvalSettings(tau=tau, surface_samples=samples, seed=seed)
    if csv_path is None and output is not None:
        csv_path = output.with_suffix(".csv")
    if output is not None and output.suffix.lower() != ".json":
        raise InputError(f"{output}: the report is JSON; give a .json path")
    reports = _evaluate_runs(cache, split, checkpoint, baselines, settings, batch_size, device, limit)
    _print_table(reports, split, settings, cache)
    if output is not None:
        _write_summary(output, reports, cache, split, checkpoint, settings, batch_size)
    if csv_path is not None:
        from facerecon.io_utils import atomic_open

        rows = []
        for label, rep in reports.items():
            rows += [{"run": label, **row} for row in rep.rows]
        with atomic_open(csv_path, "w", encoding="utf-8", newline="") as fh:
            fh.write(_rows_csv(rows))
    written = [display_path(p) for p in (output, csv_path) if p is not None]
    if written:
        info("wrote " + ", ".join(written))


def _check_inputs(cache: Path, split: str, baseline: Optional[str], device: str) -> list[str]:
    """Refuse bad options and a damaged cache before anything is evaluated; the baselines asked for."""
    import torch

    if split not in ("train", "val", "test", "all"):
        raise InputError(f"--split {split!r}: use train, val, test or all")
    baselines: list[str] = []
    if baseline is not None:
        baselines = ["mean", "five-point"] if baseline.strip() == "all" else [b.strip() for b in baseline.split(",") if b.strip()]
        for b in baselines:
            if b not in ("mean", "five-point"):
                raise InputError(f"--baseline {b!r}: use mean, five-point, or all")
    if not cache.is_file():
        raise InputError(f"{cache}: cache file not found (make one with 'facerecon prepare')")
    from facerecon.data.validate import check_cache

    check_cache(cache)  # a damaged cache: one line naming it and the sample, not an internal error
    if "five-point" in baselines:  # refuse before evaluating anything
        import h5py

        from facerecon.engine.evaluate import FivePointBaseline

        with h5py.File(cache, "r") as f:
            FivePointBaseline.check(f, str(cache))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return baselines


def _checkpoint_or_default(checkpoint: Optional[Path], baseline: Optional[str]) -> Optional[Path]:
    """The checkpoint to evaluate: the one given, else the shipped model (None: baselines only)."""
    from facerecon.engine.predict import default_checkpoint

    if checkpoint is not None:
        return checkpoint
    checkpoint = default_checkpoint()
    if checkpoint is None and baseline is None:
        raise InputError("no --checkpoint given and no default model is installed (or use --baseline mean)")
    if checkpoint is not None:
        info(f"using the default model shipped with facerecon: {checkpoint.name}")
    return checkpoint


def _evaluate_runs(
    cache: Path, split: str, checkpoint: Optional[Path], baselines: list[str], settings: EvalSettings,
    batch_size: int, device: str, limit: Optional[int],
) -> dict[str, EvalReport]:
    """The model's report (when there is a checkpoint) and each baseline's, by label."""
    from facerecon.data.dataset import FaceCacheDataset
    from facerecon.engine.evaluate import evaluate_cache
    from facerecon.engine.predict import load_model

    runs: list[tuple[str, Any]] = []
    if checkpoint is not None:
        runs.append(("model", load_model(checkpoint, device)))
    labels = {"mean": "mean-face baseline", "five-point": "five-point baseline"}
    for b in baselines:
        runs.append((labels[b], b))
    reports: dict[str, EvalReport] = {}

    def done() -> str:
        return f"{len(reports)} of {len(runs)} evaluation(s) done, nothing written (the report is written at the end); run the same command again"

    with interruptible(done):  # Ctrl-C / SIGTERM: 130 / 143 and one line
        for label, model in runs:
            from facerecon.data.dataset import FaceCacheDataset

            n = len(FaceCacheDataset(cache, split=split, points_per_region=None, profile_views=False))
            n = n if limit is None else min(n, limit)
            with make_progress() as bar:
                task = bar.add_task(f"eval {label}", total=n, unit="sample")
                reports[label] = evaluate_cache(
                    str(cache),
                    split,
                    settings,
                    network=None if isinstance(model, str) else model.network,
                    baseline=model if isinstance(model, str) else None,
                    batch_size=batch_size,
                    device=device,
                    limit=limit,
                    on_batch=lambda k: bar.advance(task, k),
                )
    return reports


def _write_summary(
    output: Path, reports: dict[str, EvalReport], cache: Path, split: str, checkpoint: Optional[Path],
    settings: EvalSettings, batch_size: int,
) -> None:
    """The JSON report: every run's summary, with the units and settings spelled out."""
    from facerecon.io_utils import write_json

    samples, seed = settings.surface_samples, settings.seed
    doc = {
        "cache": str(cache),
        "split": split,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "units": {
            "chamfer": "squared crop units (mean squared nearest distance, both directions, summed)",
            "tau": "crop units (distance)",
            "fscore": "fraction in [0, 1]",
            "nme": "percent of sqrt(w*h) of the ground-truth 68-landmark box, x-y only",
        },
        "surface_sampling": f"{samples} points uniformly on each predicted surface (area-weighted), seed {seed}",
        "settings": {"tau": settings.tau, "samples": samples, "seed": seed, "batch_size": batch_size},
        "results": {label: rep.summary for label, rep in reports.items()},
    }
    write_json(output, doc)


def _print_table(reports: dict[str, EvalReport], split: str, settings: EvalSettings, cache: Path) -> None:
    from rich.table import Table

    n = next(iter(reports.values())).summary["num_samples"]
    table = Table(title=f"{display_path(cache)}, split {split}, {n} samples; tau = {settings.tau} crop units", title_justify="left")
    table.add_column("metric")
    for label in reports:
        table.add_column(label, justify="right")
    for key, name, factor in _METRICS:
        values = [rep.summary.get(key) for rep in reports.values()]
        if all(v is None for v in values):
            continue
        table.add_row(name, *("-" if v is None else f"{v * factor:.3f}" for v in values))
    console.print(table)
    console.print(
        f"Predicted meshes were sampled uniformly on their surface ({settings.surface_samples} points) "
        "before the point metrics (the five-point baseline too); the mean-face baseline uses its mean points."
    )


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel="Model")(eval_command)
