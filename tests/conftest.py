"""Shared fixtures. Tests that need ../shared/data skip cleanly (with a reason) when it is absent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A suite started in the background by a script (`make test &`) inherits SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler, in this process or in the ones the tests start.
# The Ctrl-C tests need what a terminal or CI gives: the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACERECON_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The research-only data folder beside the project (../shared/data), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FACERECON_SHARED_DATA)")
    return SHARED_DATA


def shared_subdir(name: str) -> Path:
    """A sub-folder of the shared data, or skip the calling test."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} not found")
    return path


# A small network configuration for tests: the real hemisphere template and four blocks, with
# narrow G-ResNets so a CPU step takes about a second.
TINY_MODEL = {
    "model.backbone": "resnet18",
    "model.graph.hidden": 32,
    "model.graph.layers_per_block": 4,
    "train.points_per_region": [300, 100, 100],
    "train.num_workers": 0,
    "train.batch_size": 2,
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny synthetic cache (shared topology, so the mean baseline works) and a checkpoint
    trained on it for one short epoch: {'cache': Path, 'checkpoint': Path, 'run': Path}."""
    from facerecon.config import Config
    from facerecon.engine.train import TrainOptions, run_training
    from synthetic_cache import make_tiny_cache

    root = tmp_path_factory.mktemp("tiny_run")
    cache = make_tiny_cache(root / "cache.h5", n=8, points=500, same_topology=True)
    cfg = Config().replace({**TINY_MODEL, "train.epochs": 1})
    run_training(cfg, TrainOptions(cache=cache, out=root / "run", quiet=True))
    return {"cache": cache, "checkpoint": root / "run" / "best.pt", "run": root / "run"}
