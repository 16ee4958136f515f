"""``facerecon train``: train the network on a cache made by ``facerecon prepare``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, List, Optional

import typer

from facerecon.cli._common import console, display_path, info, state
from facerecon.errors import InputError

ORDER = 40


def _run_config(config: Path | None, out: Path, resume: bool, overrides: list) -> Any:
    """The run's configuration: ``--config`` (or the defaults) with the overrides; on ``--resume``
    without ``--config``, the run's own ``config.json`` with the overrides."""
    from facerecon.config import Config, load_config

    saved_config = out / "config.json"
    if not (resume and config is None and saved_config.is_file()):
        return load_config(config, overrides)
    import json

    try:
        saved = json.loads(saved_config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{saved_config}: cannot read the run's configuration ({exc}); give --config") from None
    if not isinstance(saved, dict):
        raise InputError(f"{saved_config}: not a configuration (a JSON object); give --config")
    return Config.from_dict(saved, source=saved_config).replace(overrides, source=saved_config)


def train(
    cache: Path = typer.Option(..., "--cache", help="HDF5 cache from 'facerecon prepare' (uses its train and val splits)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: config.json, metrics.jsonl, last.pt, best.pt."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config (sections \\[model], \\[loss], \\[train]); unknown keys are errors."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs on this machine, one process each (DDP, NCCL). 0: CPU. Default: 1 if CUDA is available, else 0."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="CPU processes (DDP over gloo) when --gpus 0."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Samples per process and step \\[default: 8]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs \\[default: 80]."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Adam learning rate \\[default: 1e-4; x0.3 at epochs 25, 40, 60]."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="vgg16 | resnet18 | resnet50 | resnet50_vggface2 | mobilenet_v2 | mobilenet_v2_050."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="Local backbone state dict (never downloaded)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data-loader worker processes per training process \\[default: 2]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed \\[default: 0]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt (optimizer, schedule and RNG state included)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps in this invocation (resumable)."),
    val_limit: Optional[int] = typer.Option(None, "--val-limit", min=1, help="Validate on the first N val samples only."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip validation (best.pt is then not written)."),
    set_: List[str] = typer.Option([], "--set", help="Any config value, KEY=VALUE with a dotted key, e.g. --set loss.laplace=0.3 (repeatable; each key once, and not beside its shortcut flag)."),
) -> None:
    """Train the network on the cache (face paper defaults: Adam, lr 1e-4, 80 epochs).

    Writes [bold]last.pt[/bold] every epoch and [bold]best.pt[/bold] at the best validation Chamfer,
    both loadable with torch.load(weights_only=True). Ctrl-C saves and exits; --resume continues.
    Several machines: launch the same command with torchrun (see docs/train.md).
    """
    import torch

    from facerecon.config import command_line_overrides
    from facerecon.engine.train import TrainOptions, check_train_inputs, run_training

    overrides = command_line_overrides(set_, {  # the shortcut flags: each a spelling of one key
        "train.batch_size": ("--batch-size", batch_size), "train.epochs": ("--epochs", epochs), "train.lr": ("--lr", lr),
        "model.backbone": ("--backbone", backbone), "train.num_workers": ("--workers", workers), "train.seed": ("--seed", seed),
        "model.backbone_weights": ("--backbone-weights", str(backbone_weights) if backbone_weights else None),
    })
    cfg = _run_config(config, out, resume, overrides)
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    opts = TrainOptions(cache=cache, out=out, gpus=gpus, nproc=nproc, resume=resume, max_steps=max_steps,
                        validate=not no_validate, val_limit=val_limit, quiet=state.quiet)
    check_train_inputs(cfg, opts)
    where = f"{gpus} GPU(s)" if gpus else f"CPU x {nproc} process(es)"
    network = "the FaceVision-GAN (facevision)" if cfg.model.kind == "facevision" else f"{cfg.model.backbone} ({cfg.model.kind})"
    info(f"training {network} on {display_path(cache)} -> {display_path(out)} ({where})")
    result = run_training(cfg, opts, reporter=info)
    summary = f"{result.epochs_done}/{cfg.train.epochs} epochs, {result.global_step} steps"
    if result.last_metrics:
        summary += ", val Chamfer {chamfer:.5g}".format(**result.last_metrics)
    if result.interrupted:  # Ctrl-C / SIGTERM (facerecon.signals): 130 / 143 and one line
        from facerecon.signals import Interrupted

        raise Interrupted(f"{summary}; {display_path(out / 'last.pt')} kept: continue with the same command and --resume", result.stop_signal or signal.SIGINT)
    console.print("done: " + summary + f"; checkpoints in {display_path(out)}")


def register(app: typer.Typer) -> None:
    app.command("train", rich_help_panel="Model")(train)
