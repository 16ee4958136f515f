"""``facerecon predict`` under interruption, bad output paths and huge photos: one line naming the file and the problem, exit 2 for bad input, no traceback, no
temporary file left behind, memory bounded whatever the batch size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facerecon.cli import app
from testutils import synthetic_photo

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "facerecon" / "assets" / "astronaut.png"


_photo = synthetic_photo


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_overlay_to_an_unwritable_place_fails_before_inference(tiny_run: dict, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the overlay folder should be")
    ckpt = str(tiny_run["checkpoint"])
    cases = {
        "under a file": [str(photo), "-o", str(tmp_path / "a.obj"), "--overlay", str(blocker / "ov.png")],
        "a folder": [str(photo), "-o", str(tmp_path / "b.obj"), "--overlay", str(tmp_path)],
        "folder mode, a file": [str(tmp_path), "-o", str(tmp_path / "meshes"), "--overlay", str(blocker)],
    }
    for name, args in cases.items():
        result = runner.invoke(app, ["-q", "predict", *args, "--checkpoint", ckpt])
        lines = _lines(result.output)
        assert result.exit_code == 2, (name, result.output)
        assert len(lines) == 1 and "overlay" in lines[0] and "Traceback" not in result.output, (name, result.output)
    # nothing was reconstructed: no mesh, no record
    assert not list(tmp_path.glob("*.obj")) and not list(tmp_path.glob("*.json"))
    assert not (tmp_path / "meshes").exists() or not list((tmp_path / "meshes").iterdir())


def test_output_mesh_path_that_is_a_folder(tiny_run: dict, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png")
    (tmp_path / "out" / "x.obj").mkdir(parents=True)
    result = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(tmp_path / "out" / "x.obj"), "--checkpoint", str(tiny_run["checkpoint"])])
    lines = _lines(result.output)
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "x.obj" in lines[0] and "folder" in lines[0], result.output
    assert "Errno" not in result.output


def _predict_three_photos_with(tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, before_second_call) -> tuple:
    """``predict`` on three photos, batch 1, with ``owner.name`` wrapped: ``before_second_call(*args)``
    runs just before the function's second call (the second photo). Returns (result, out folder)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for photo in ("a.png", "b.png", "c.png"):
        _photo(folder / photo)
    out = tmp_path / "out"
    real = getattr(owner, name)
    calls = []

    def wrapped(*args):
        calls.append(args)
        if len(calls) == 2:
            before_second_call(*args)
        return real(*args)

    monkeypatch.setattr(owner, name, wrapped)
    result = runner.invoke(app, ["-q", "predict", str(folder), "-o", str(out), "--batch-size", "1", "--checkpoint", str(tiny_run["checkpoint"])])
    return result, out


def test_sigterm_while_writing_leaves_no_temporary_file(tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arriving in the middle of a mesh write (injected there): the half-written
    temporary file is removed, one line says what happened, exit 143."""
    from facerecon import io_utils

    real = io_utils._write_all
    meshes = []

    def half_written_then_terminate(fd, data):
        if bytes(data[:1]) == b"#":  # an .obj (the records are JSON)
            meshes.append(fd)
            if len(meshes) == 2:  # the second photo's mesh
                os.write(fd, bytes(data[: len(data) // 3]))
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises right here
        return real(fd, data)

    monkeypatch.setattr(io_utils, "_write_all", half_written_then_terminate)
    result, out = _predict_three_photos_with(tiny_run, tmp_path, monkeypatch, io_utils, "_write_all", lambda *args: None)
    assert result.exit_code == 143, result.output
    lines = _lines(result.output)
    assert len(lines) == 1 and "terminated" in lines[0], result.output
    assert _leftovers(out) == []
    assert sorted(p.name for p in out.glob("*.obj")) == ["a.obj"]  # the first face is complete
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_between_a_mesh_and_its_record(tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    """Ctrl-C or SIGTERM after a mesh is written and before its JSON record (injected exactly
    there, on the second photo): that mesh is removed again, so every mesh left has its record."""
    from facerecon.engine import results as engine_results

    def signal_with_the_mesh_on_disk(path, record):
        assert Path(path).with_suffix(".obj").is_file()
        os.kill(os.getpid(), sig)  # the handler raises right here

    result, out = _predict_three_photos_with(tiny_run, tmp_path, monkeypatch, engine_results, "write_record", signal_with_the_mesh_on_disk)
    assert result.exit_code == (130 if sig == signal.SIGINT else 143), result.output
    assert _leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.obj"]


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signals_in_a_real_process(tiny_run: dict, tmp_path: Path, sig: int, code: int, word: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        _photo(folder / f"p{i:02d}.png")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "facerecon", "-q", "predict", str(folder), "-o", str(out), "--batch-size", "1",
         "--checkpoint", str(tiny_run["checkpoint"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.json")):
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"predict ended before the signal: {proc.returncode} {proc.stderr.read()}")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    lines = _lines(stderr)
    assert len(lines) == 1 and word in lines[0], stderr
    assert "Traceback" not in stderr + stdout
    assert _leftovers(out) == []
    for mesh in out.glob("*.obj"):  # every mesh written is complete and has its record
        assert mesh.with_suffix(".json").is_file()


def test_no_face_warning_is_one_line(tiny_run: dict, tmp_path: Path) -> None:
    folder = tmp_path / ("a-rather-long-folder-name-" * 3)
    folder.mkdir()
    _photo(folder / ("a-photo-without-any-face-in-it-at-all-" * 2 + ".png"))
    _photo(folder / "second.png")
    result = runner.invoke(app, ["predict", str(folder), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_run["checkpoint"])])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "no face found" in line]
    assert len(warnings) == 2, result.output
    for line in warnings:
        assert line.startswith("warning:") and line.rstrip().endswith("used the average crop"), line


def test_folder_of_huge_photos_keeps_memory_bounded(tmp_path: Path) -> None:
    """Eight 8,000 x 8,000 photos (192 MB each decoded; 1.5 GB more if all were held for a
    batch of 8), the shipped model, batch 8: the process's peak resident memory stays under 2 GB
    (the photos are decoded, reduced to crops and released one at a time)."""
    cv2 = pytest.importorskip("cv2")
    from facerecon.engine.predict import default_checkpoint

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status for the peak resident set")

    if default_checkpoint() is None:
        pytest.skip("this installation ships no default model")
    side = 8_000
    big = np.full((side, side, 3), 128, np.uint8)
    face = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    big[2000:5000, 2500:5500] = cv2.resize(face, (3000, 3000), interpolation=cv2.INTER_LINEAR)
    folder = tmp_path / "big"
    folder.mkdir()
    cv2.imwrite(str(folder / "p0.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del big
    for i in range(1, 8):
        os.link(folder / "p0.png", folder / f"p{i}.png")
    code = (
        "import atexit, sys\n"
        # VmHWM: this program's peak resident set (ru_maxrss would include the parent's at fork)
        "peak = lambda: [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "atexit.register(lambda: print('PEAK_KB', peak(), file=sys.stderr))\n"
        f"sys.argv = ['facerecon', '-q', 'predict', r'{folder}', '-o', r'{tmp_path / 'out'}', '--batch-size', '8']\n"
        "from facerecon.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(proc.stderr.split("PEAK_KB")[-1].split()[0])
    print(f"\npeak RSS for 8 photos of {side}x{side} px, batch 8: {peak_kb / 1024:.0f} MB")
    assert len(list((tmp_path / "out").glob("*.obj"))) == 8
    assert peak_kb * 1024 < 2e9, peak_kb


@pytest.mark.parametrize(("load", "preset", "expected"), [(99.0, None, "PASSIVE"), (0.0, None, "unset"), (99.0, "ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_on_a_busy_machine(load: float, preset, expected: str) -> None:
    code = (
        "import os\n"
        f"os.getloadavg = lambda: ({load}, {load}, {load})\n"
        "from facerecon.cli.predict import _passive_openmp_when_busy\n"
        "_passive_openmp_when_busy()\n"
        "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected
