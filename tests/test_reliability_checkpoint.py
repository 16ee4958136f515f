"""Checkpoints: one module saves and loads them; every bad file gets one line naming it
(exit 2), loading never runs pickled code nor allocates what a hand-edited config asks for."""

from __future__ import annotations

import errno
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from facerecon.config import Config
from facerecon.engine import checkpoint as ckpt_mod
from facerecon.engine.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from facerecon.errors import InputError
from failure_harness import cli, error_lines, small_tmpfs, tiny_cache


class Opaque:  # a class torch's weights-only loader refuses
    pass


def _good(**extra: object) -> dict:
    cfg = Config().replace(TINY_MODEL).to_dict()
    return {"format": "facerecon-checkpoint", "version": 1, "config": cfg, "model": {"w": torch.ones(3, 4)}, **extra}


def _write_bad(path: Path, kind: str) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        torch.save(_good(extra=Opaque()), path)
    elif kind == "legacy-pickle":  # plain pickle, protocol 4: torch warns about it before failing
        with open(path, "wb") as fh:
            pickle.dump({"format": "facerecon-checkpoint", "x": Opaque()}, fh, protocol=4)
    elif kind == "no-config":
        ckpt = _good()
        del ckpt["config"]
        torch.save(ckpt, path)
    elif kind == "nan-weights":
        torch.save(_good(model={"w": torch.tensor([1.0, float("nan")])}), path)
    elif kind == "huge-hidden":
        ckpt = _good()
        ckpt["config"]["model"]["graph"]["hidden"] = 1e6
        torch.save(ckpt, path)
    elif kind == "truncated":
        buf = io.BytesIO()
        torch.save(_good(model={"w": torch.zeros(50_000)}), buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "random":  # starts "_\x82": neither a zip archive nor a pickle
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


CASES = [
    ("empty", "the checkpoint is empty (0 bytes"),
    ("pickle", "holds pickled Python objects"),
    ("legacy-pickle", "holds pickled Python objects"),
    ("no-config", "has no 'config'"),
    ("nan-weights", "weight w holds 1 non-finite value(s)"),
    ("huge-hidden", "model.graph.hidden = 1000000.0; expected a whole number from 1 to 8192"),
    ("truncated", "truncated"),
    ("folder", "is a folder"),
    ("random", "not a checkpoint file: it is neither a zip archive nor a pickle (random or foreign bytes)"),
    ("png", "not a checkpoint file: it is a PNG image"),
]


@pytest.mark.parametrize("kind, expected", CASES)
def test_load_checkpoint_refuses_with_one_clear_line(kind: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    _write_bad(path, kind)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and expected in text and "\n" not in text, text


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cache(tmp_path_factory.mktemp("ckcache") / "c.h5", n=8, points=300, same_topology=True)


@pytest.mark.parametrize("kind, expected", [c for c in CASES if c[0] in ("empty", "legacy-pickle", "huge-hidden", "nan-weights", "no-config")])
def test_eval_with_a_bad_checkpoint_is_one_line_exit_2(kind: str, expected: str, cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    _write_bad(path, kind)
    r = cli("eval", "--cache", str(cache), "--checkpoint", str(path))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1, r.stderr  # no torch warning before it
    assert "internal error" not in lines[0] and str(path) in lines[0] and expected in lines[0], lines[0]


def test_predict_with_an_empty_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (120, 100, 90)).save(image)
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    r = cli("predict", str(image), "-o", str(tmp_path / "face.obj"), "--checkpoint", str(path))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "list index out of range" not in lines[0]
    assert str(path) in lines[0] and "empty" in lines[0]


def test_save_is_atomic_on_a_full_disk(tmp_path: Path) -> None:
    """A checkpoint that does not fit: CheckpointWriteError naming it, the old file intact."""
    with small_tmpfs("1m") as disk:
        path = disk / "best.pt"
        save_checkpoint(path, _good())
        before = path.read_bytes()
        with pytest.raises(CheckpointWriteError, match="no space left on the device") as info:
            save_checkpoint(path, _good(model={"w": torch.zeros(400_000)}))  # 1.6 MB
        assert str(path) in str(info.value) and "the previous one is kept" in str(info.value)
        assert path.read_bytes() == before and load_checkpoint(path)["model"]["w"].shape == (3, 4)
        assert sorted(p.name for p in disk.iterdir()) == ["best.pt"]


def test_save_with_an_injected_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same where no tmpfs can be mounted: the write call fails with ENOSPC."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, _good())
    before = path.read_bytes()

    class FullFile(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "open", lambda p, mode="r": FullFile(p, mode.replace("b", "")), raising=False)
    with pytest.raises(CheckpointWriteError, match="no space left on the device"):
        save_checkpoint(path, _good())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_absurd_per_block_widths_are_refused(tmp_path: Path) -> None:
    ckpt = _good()
    ckpt["config"]["model"]["graph"]["hidden_per_block"] = [64, 32, 10**7]
    path = tmp_path / "wide.pt"
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"model.graph.hidden_per_block\[2\] = 10000000"):
        load_checkpoint(path)


def test_the_shipped_default_model_passes_the_checks() -> None:
    from facerecon.engine.predict import default_checkpoint

    shipped = default_checkpoint()
    if shipped is None:
        pytest.skip("no default model installed")
    assert load_checkpoint(shipped)["format"] == "facerecon-checkpoint"
