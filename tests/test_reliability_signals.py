"""One stop-signal policy for every long-running command: Ctrl-C exits 130 and SIGTERM 143, with
one line saying what was kept and how to continue; locks go, records of finished work are
written, partial files stay resumable. Each case runs the real command in its own process and
delivers the signal at a chosen call (the N-th image, sample or evaluation), so it lands mid-run
every time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failure_harness import ROOT, cli, error_lines

sys.path.insert(0, str(Path(__file__).parent))

# python DRIVER MODULE ATTR N SIGNAL -- facerecon ARGS: the N-th call of MODULE.ATTR (a function or
# Class.method) sends SIGNAL to this process first, then the command runs as `facerecon ARGS`.
DRIVER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    module, attr, after, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), getattr(signal, sys.argv[4])
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == after:
            os.kill(os.getpid(), sig)  # handled before the call below starts
        return real(*args, **kwargs)

    setattr(owner, name, wrapped)
    from facerecon.cli import main
    sys.argv = ["facerecon", *sys.argv[6:]]
    main()
    """
)

WHAT = {"SIGINT": (130, "interrupted (Ctrl-C): "), "SIGTERM": (143, "terminated (SIGTERM): ")}


def _signalled(tmp_path: Path, target: str, after: int, sig: str, *args: str) -> subprocess.CompletedProcess:
    module, _, attr = target.partition(":")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="300")
    return subprocess.run([sys.executable, str(driver), module, attr, str(after), sig, "--", "-q", *args], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _one_line(r: subprocess.CompletedProcess, sig: str) -> str:
    code, prefix = WHAT[sig]
    lines = error_lines(r.stderr)
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith(prefix), r.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_detect_crop_keeps_every_crop_with_its_record_and_removes_the_lock(sig: str, tmp_path: Path) -> None:
    pytest.importorskip("facenet_pytorch")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((128, 96)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    r = _signalled(tmp_path, "facerecon.detect:FaceDetector.detect", 4, sig, "detect-crop", str(folder), "-o", str(out), "--size", "32")
    line = _one_line(r, sig)
    assert "3 crop(s) and their records kept in" in line and "run the same command again" in line, line
    records = [json.loads(x)["output"] for x in (out / "crops.jsonl").read_text().splitlines()]
    assert sorted(records) == sorted(p.name for p in out.glob("*.jpg")) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert not (out / ".facerecon.lock").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_prepare_keeps_a_resumable_partial_file(sig: str, tmp_path: Path) -> None:
    from facerecon.data.cache import partial_path
    from test_cache import _assert_same_file, make_fixture_dataset

    data, model = make_fixture_dataset(tmp_path, n=8)
    common = ["--face-model", str(model), "--crop-from", "landmarks", "--flush-every", "2"]
    r = cli("-q", "prepare", str(data), str(tmp_path / "ref.h5"), *common)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "c.h5"
    args = ["prepare", str(data), str(out), *common]
    line = _one_line(_signalled(tmp_path, "facerecon.data.samples:compute_sample", 5, sig, *args), sig)
    assert "stopped after 4 of 8 samples" in line and str(partial_path(out)) in line and "resume" in line, line
    assert partial_path(out).exists() and not out.exists()
    r = cli("-q", *args)
    assert r.returncode == 0, r.stderr
    _assert_same_file(tmp_path / "ref.h5", out)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_eval_stops_with_one_line_and_no_report(sig: str, tiny_run: dict, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ["eval", "--cache", str(tiny_run["cache"]), "--checkpoint", str(tiny_run["checkpoint"]), "--split", "test", "--samples", "500",
            "--baseline", "mean", "-o", str(report)]
    line = _one_line(_signalled(tmp_path, "facerecon.engine.evaluate:evaluate_cache", 2, sig, *args), sig)
    assert "1 of 2 evaluation(s) done, nothing written" in line and "run the same command again" in line, line
    assert not report.exists() and not list(tmp_path.glob(".report*"))


def test_a_stop_request_remembers_the_first_signal() -> None:
    """train's graceful stop: the first signal decides the exit code (SIGTERM then Ctrl-C: 143)."""
    from facerecon.signals import stop_requests

    with stop_requests() as request:
        assert not request.requested and request.exit_code == 130
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.requested and request.signum == signal.SIGTERM and request.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10))
    assert request.exit_code == 143
