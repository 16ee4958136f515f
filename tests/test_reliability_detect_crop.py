"""detect-crop under failure: one run per output folder (a lock file), corrupt records files named,
a lone unreadable input named, and no empty records file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failure_harness import ROOT, cli, error_lines

pytest.importorskip("facenet_pytorch")


def _noise(path: Path, seed: int, h: int = 96, w: int = 128) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR).save(path)
    return path


def _inputs(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [str(_noise(folder / n, i)) for i, n in enumerate(names)]


def test_a_second_run_on_a_locked_folder_refuses(tmp_path: Path) -> None:
    """While another process holds OUTDIR's lock, a run stops with one line naming the folder
    and the holder; when the holder is gone (here: killed), the lock goes with it."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from facerecon.io_utils import folder_lock\n"
         "with folder_lock(sys.argv[1], 'detect-crop'):\n    print('held', flush=True); time.sleep(600)\n", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        images = _inputs(tmp_path / "in", ["a.png"])
        r = cli("detect-crop", *images, "-o", str(out), "--size", "32")
        lines = error_lines(r.stderr)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(lines) == 1 and str(out) in lines[0] and f"pid {holder.pid}" in lines[0], lines
        assert not (out / "crops.jsonl").exists() and not (out / "a.jpg").exists()
    finally:
        holder.kill()  # kill -9: the kernel releases the flock
        holder.wait()
    r = cli("detect-crop", *images, "-o", str(out), "--size", "32")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["output"] for x in (out / "crops.jsonl").read_text().splitlines()] == ["a.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "crops.jsonl"]  # the lock file is gone


def test_two_concurrent_runs_lose_no_record(tmp_path: Path) -> None:
    """Started together on one folder: either both finish and every crop has its record, or one
    refuses with the lock line and the other's records are complete."""
    out = tmp_path / "out"
    first = _inputs(tmp_path / "in1", ["a1.png", "a2.png"])
    second = _inputs(tmp_path / "in2", ["b1.png", "b2.png"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, "-m", "facerecon", "detect-crop", *imgs, "-o", str(out), "--size", "32"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for imgs in (first, second)
    ]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    records = [json.loads(x) for x in (out / "crops.jsonl").read_text().splitlines()]
    outputs = sorted(r["output"] for r in records)
    crops = sorted(p.name for p in out.iterdir() if p.suffix == ".jpg")
    assert outputs == crops  # no crop without its record
    codes = sorted(code for code, _ in results)
    if codes == [0, 0]:
        assert outputs == ["a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg"]
    else:
        assert codes == [0, 1], results
        refused = next(err for code, err in results if code == 1)
        assert "another facerecon detect-crop is writing into this folder" in refused
        assert outputs in (["a1.jpg", "a2.jpg"], ["b1.jpg", "b2.jpg"])


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("crops.jsonl", b"\xff\xfe\x00garbage\x80\n", "not UTF-8"),
        ("crops.jsonl", b'{"source": "/x/a.png", "output": "a.jpg", "face_index": 0}\n{"source": 3\n', ":2: not a JSON record"),
        ("crops.jsonl", b'[1, 2, 3]\n', ":1: not a crops record"),
        ("crops.csv", b"source,output,face_index\n/x/a.png,a.jpg,zero\n", ":2: not a crops record"),
        ("crops.csv", b"\x00\x01\x02binary", "not a crops.csv"),
    ],
)
def test_a_corrupt_records_file_is_named_and_kept(name: str, content: bytes, expected: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    images = _inputs(tmp_path / "in", ["a.png"])
    r = cli("detect-crop", *images, "-o", str(out), "--size", "32", *(["--csv"] if name.endswith(".csv") else []))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    assert str(out / name) in lines[0] and expected in lines[0], lines[0]
    assert (out / name).read_bytes() == content  # left as it was
    assert not (out / ".facerecon.lock").exists()


def test_one_unreadable_input_is_named_and_leaves_no_records_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    r = cli("-q", "detect-crop", str(bad), "-o", str(out))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "broken.jpg" in lines[0] and "(listed above)" not in lines[0], lines
    assert not (out / "crops.jsonl").exists()
    assert not out.exists()  # the run made the folder and left nothing in it: removed
