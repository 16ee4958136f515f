"""``facerecon train``: learning, distributed data parallel, exact resume, checkpoints, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_MODEL
from facerecon.cli import app
from facerecon.config import Config
from facerecon.engine.checkpoint import load_checkpoint
from facerecon.engine.train import TrainOptions, run_training
from facerecon.errors import InputError
from synthetic_cache import make_tiny_cache

runner = CliRunner()


def _cfg(**extra: object) -> Config:
    return Config().replace({**TINY_MODEL, **extra})


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache") / "c.h5", n=8, points=500)


@pytest.mark.slow
def test_overfitting_two_samples_drops_chamfer_5x() -> None:
    """The network can learn: on two fixed samples the Chamfer term falls at least 5x."""
    import tempfile

    from facerecon.data.dataset import FaceCacheDataset, collate_faces
    from facerecon.losses import MeshLoss
    from facerecon.model.network import build_network

    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_cache(Path(tmp) / "o.h5", n=6, points=600)
        cfg = _cfg(**{"model.landmarks": False})
        torch.manual_seed(0)
        net = build_network(cfg.model)
        ds = FaceCacheDataset(path, "train", points_per_region=None)
        batch = collate_faces([ds[0], ds[1]])
    loss = MeshLoss(cfg.loss)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        result = loss(net(batch["image"]), batch)
        opt.zero_grad()
        result.total.backward()
        opt.step()
        history.append(float(result.terms["chamfer"]))
    assert history[-1] <= history[0] / 5, history


def test_checkpoint_contents_and_weights_only(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_training(_cfg(**{"train.epochs": 1}), TrainOptions(cache=cache, out=out, quiet=True))
    assert result.epochs_done == 1 and result.global_step == 2  # 4 train samples, batch 2
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / name, weights_only=True)  # a checkpoint cannot run code
        assert ckpt["format"] == "facerecon-checkpoint"
        assert ckpt["epoch"] == 1
        assert Config.from_dict(ckpt["config"]) == _cfg(**{"train.epochs": 1})
        assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "landmark_reference"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["backbone"] == "resnet18"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and "val_chamfer" in record and "val_fscore@tau" in record and "val_nme" in record
    assert not list(out.glob("*.tmp*")), "temporary files left behind"


def test_resume_equals_uninterrupted_run(cache: Path, tmp_path: Path) -> None:
    """2 epochs in one run == 1 epoch, then --resume for the second (bit-identical on CPU)."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_training(_cfg(**{"train.epochs": 2}), TrainOptions(cache=cache, out=a, quiet=True))
    run_training(_cfg(**{"train.epochs": 1}), TrainOptions(cache=cache, out=b, quiet=True))
    run_training(_cfg(**{"train.epochs": 2}), TrainOptions(cache=cache, out=b, resume=True, quiet=True))
    pa, pb = _params(a / "last.pt"), _params(b / "last.pt")
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["global_step"] == cb["global_step"] == 4
    assert len((b / "metrics.jsonl").read_text().splitlines()) == 2


def test_mid_epoch_stop_and_resume_is_exact(cache: Path, tmp_path: Path) -> None:
    """Stopping after one batch (as Ctrl-C does) and resuming gives the uninterrupted result."""
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = _cfg(**{"train.epochs": 1})
    run_training(cfg, TrainOptions(cache=cache, out=a, quiet=True, validate=False))
    run_training(cfg, TrainOptions(cache=cache, out=b, quiet=True, validate=False, max_steps=1))
    assert load_checkpoint(b / "last.pt")["step_in_epoch"] == 1
    run_training(cfg, TrainOptions(cache=cache, out=b, quiet=True, validate=False, resume=True))
    pa, pb = _params(a / "last.pt"), _params(b / "last.pt")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process_on_doubled_batch(cache: Path, tmp_path: Path) -> None:
    """2 gloo processes x batch 1 == 1 process x batch 2 after one step; ranks agree."""
    frozen = {"model.freeze_backbone": True, "train.epochs": 1}  # BatchNorm statistics depend on the batch split
    one = run_training(
        _cfg(**frozen, **{"train.batch_size": 2}),
        TrainOptions(cache=cache, out=tmp_path / "one", quiet=True, validate=False, max_steps=1),
    )
    two = run_training(
        _cfg(**frozen, **{"train.batch_size": 1}),
        TrainOptions(cache=cache, out=tmp_path / "two", nproc=2, quiet=True, validate=False, max_steps=1),
    )
    assert len(two.rank_checksums) == 2
    assert two.rank_checksums[0] == two.rank_checksums[1], "ranks hold different parameters"
    p1, p2 = _params(tmp_path / "one" / "last.pt"), _params(tmp_path / "two" / "last.pt")
    start = load_checkpoint(tmp_path / "one" / "last.pt")
    assert start["global_step"] == 1 and one.global_step == 1
    moved = 0
    for key in p1:
        torch.testing.assert_close(p1[key], p2[key], rtol=1e-4, atol=1e-6, msg=key)
    # and the step really changed the trainable parameters (not a vacuous comparison)
    fresh = Config.from_dict(start["config"])
    from facerecon.model.network import build_network

    torch.manual_seed(fresh.train.seed)
    init = build_network(fresh.model).state_dict()
    moved = sum(not torch.equal(init[k], p1[k]) for k in p1 if k in init)
    assert moved > 10


def test_cli_train_and_errors(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["train", "--cache", str(cache), "--out", str(out), "--epochs", "1", "--workers", "0", "--no-validate"]
    sets = [x for k, v in TINY_MODEL.items() if not k.startswith("train.") for x in ("--set", f"{k}={json.dumps(v)}")]
    result = runner.invoke(app, ["-q", *args, *sets])
    assert result.exit_code == 0, result.output
    assert (out / "last.pt").is_file()
    # the same folder again without --resume: refused, nothing overwritten
    before = (out / "last.pt").stat().st_mtime_ns
    again = runner.invoke(app, ["-q", *args, *sets])
    assert again.exit_code == 2 and "--resume" in again.output
    assert (out / "last.pt").stat().st_mtime_ns == before
    missing = runner.invoke(app, ["train", "--cache", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nope.h5" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    bad_key = runner.invoke(app, ["train", "--cache", str(cache), "--out", str(tmp_path / "y"), "--set", "train.lrr=1"])
    assert bad_key.exit_code == 2 and "train.lrr" in bad_key.output
    no_resume = runner.invoke(app, ["train", "--cache", str(cache), "--out", str(tmp_path / "z"), "--resume"])
    assert no_resume.exit_code == 2 and "nothing to resume" in no_resume.output


def test_training_on_train_and_val(cache: Path, tmp_path: Path) -> None:
    """``train.splits = ["train", "val"]``: every epoch covers both splits' samples, the start
    statistics are the union's, and validation is skipped with a line that says why."""
    import h5py
    import numpy as np

    from facerecon.engine.statistics import read_cache_statistics

    with h5py.File(cache, "r") as f:
        marks, landmarks = f["split"][:], f["landmarks"][:]
    picked = np.isin(marks, (0, 1))
    with_landmarks = picked & np.isfinite(landmarks).all(axis=(1, 2))
    assert with_landmarks.sum() > (with_landmarks & (marks == 0)).sum()  # val adds faces
    stats = read_cache_statistics(cache, "train+val")
    np.testing.assert_allclose(stats.mean_landmarks, landmarks[with_landmarks].mean(0), rtol=1e-6, atol=1e-6)
    said: list[str] = []
    cfg = _cfg(**{"train.splits": ["train", "val"], "train.epochs": 1, "train.batch_size": 2, "train.num_workers": 0})
    result = run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "tv"), reporter=said.append)
    assert result.global_step == -(-int(picked.sum()) // 2)  # ceil(samples / batch)
    assert any("validation skipped" in line for line in said)
    assert (tmp_path / "tv" / "last.pt").is_file() and not (tmp_path / "tv" / "best.pt").exists()
    with pytest.raises(InputError, match="train.splits is empty"):
        run_training(_cfg(**{"train.splits": []}), TrainOptions(cache=cache, out=tmp_path / "none"))
    with pytest.raises(InputError, match="train.splits"):
        _cfg(**{"train.splits": ["dev"]})


@pytest.mark.slow
def test_sigint_saves_and_exits_cleanly(cache: Path, tmp_path: Path) -> None:
    """Ctrl-C in a real process: last.pt is written mid-run and the exit code is 130."""
    out = tmp_path / "sig"
    sets = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "facerecon", "-q", "train", "--cache", str(cache), "--out", str(out),
           "--epochs", "50", "--no-validate", *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:  # the first epoch ends
        time.sleep(0.5)
    assert (out / "last.pt").exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] >= 1
    assert "Traceback" not in output


def test_export_inference_checkpoint(tiny_run: dict, tmp_path: Path) -> None:
    from facerecon.engine.checkpoint import export_inference_checkpoint
    from facerecon.engine.predict import load_model

    slim_path = tmp_path / "slim.pt"
    export_inference_checkpoint(tiny_run["checkpoint"], slim_path)
    slim = torch.load(slim_path, weights_only=True)
    assert "optimizer" not in slim and "rng" not in slim
    assert slim_path.stat().st_size < 0.6 * Path(tiny_run["checkpoint"]).stat().st_size
    full, small = load_model(tiny_run["checkpoint"]), load_model(slim_path)
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(full.network(image).vertices, small.network(image).vertices)
