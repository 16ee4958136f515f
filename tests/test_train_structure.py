"""The shape of ``facerecon train``'s start: the cache is opened once and each of its
datasets read once before the loaders' Datasets take over; the statistics of that pass equal
independent numpy computations whatever the chunking; training's validation is eval's loop; the
statistics reach every DDP rank from rank 0; the loop's functions fit on a screen."""

from __future__ import annotations

import ast
import json
import os
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from facerecon.config import Config
from facerecon.data import validate
from facerecon.engine import statistics
from facerecon.engine.statistics import read_cache_statistics
from facerecon.engine.train import TrainOptions, run_training
from synthetic_cache import make_tiny_cache

ROOT = Path(__file__).resolve().parents[1]
_LOADER_DATASETS = os.path.join("facerecon", "data", "dataset.py")  # the training reads, not the start's


@pytest.fixture
def h5_log(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every ``h5py.File`` open and dataset read from then on, except those of the loaders'
    ``FaceCacheDataset`` (``opens``: the calling file; ``reads``: (dataset name, calling file))."""
    log: dict[str, list] = {"opens": [], "reads": []}
    real_file, real_getitem = h5py.File, h5py.Dataset.__getitem__

    class CountedFile(real_file):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            caller = sys._getframe(1).f_code.co_filename
            if not caller.endswith(_LOADER_DATASETS):
                log["opens"].append(caller)

    def counted_getitem(self: h5py.Dataset, *args: object, **kwargs: object) -> object:
        caller = sys._getframe(1).f_code.co_filename
        if not caller.endswith(_LOADER_DATASETS):
            log["reads"].append((self.name, caller))
        return real_getitem(self, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", CountedFile)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted_getitem)
    monkeypatch.setattr(statistics, "_read", {})  # as in a new process: nothing remembered
    monkeypatch.setattr(validate, "_checked", {})
    return log


def test_a_run_opens_the_cache_once_and_reads_each_dataset_once(tmp_path: Path, h5_log: dict) -> None:
    """A whole tiny run (template placement, landmark-head start, landmark reference, checks,
    validation): one open outside the loaders' Datasets, and in it every dataset read once."""
    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=500, same_topology=True)
    h5_log["opens"].clear()
    h5_log["reads"].clear()
    cfg = Config().replace({**TINY_MODEL, "train.epochs": 1})
    result = run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True))
    assert result.epochs_done == 1 and "chamfer" in result.last_metrics  # it validated, through the Datasets
    assert len(h5_log["opens"]) == 1, h5_log["opens"]
    assert h5_log["opens"][0].endswith(os.path.join("data", "validate.py"))
    counts = Counter(name for name, _ in h5_log["reads"])
    assert set(counts) >= {"/offsets", "/split", "/landmarks", "/pose", "/mm_per_unit", "/points", "/normals", "/regions"}
    assert all(n == 1 for n in counts.values()), counts
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["landmark_reference"] is not None and saved["config"]["model"]["pixel2mesh"]["template_scale"] != Config().model.pixel2mesh.template_scale


def test_a_second_run_on_the_unchanged_cache_reads_nothing_at_start(tmp_path: Path, h5_log: dict) -> None:
    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=500)
    cfg = Config().replace({**TINY_MODEL, "train.epochs": 1})
    run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "a", quiet=True, validate=False, max_steps=1))
    h5_log["opens"].clear()
    run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "b", quiet=True, validate=False, max_steps=1))
    assert h5_log["opens"] == []


def test_a_model_v2_run_opens_the_cache_once(tmp_path: Path, h5_log: dict) -> None:
    from test_model_v2 import TINY_V2

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=400, same_topology=True)
    h5_log["opens"].clear()
    cfg = Config().replace({**TINY_V2, "train.epochs": 1})
    run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True, validate=False, max_steps=1))
    assert len(h5_log["opens"]) == 1, h5_log["opens"]


def test_statistics_equal_numpy_in_any_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean face, mean landmarks (a sample without landmarks left out) and the frontal reference,
    computed here from the whole arrays; reading the points 37 at a time (samples split across
    chunks) gives the same bits as one chunk."""
    cache = make_tiny_cache(tmp_path / "c.h5", n=9, points=300, same_topology=True, seed=3, splits=(6, 2, 1))
    with h5py.File(cache, "r+") as f:
        lms = f["landmarks"][:]
        lms[1] = np.nan  # a training sample without landmarks
        f["landmarks"][:] = lms
        offsets, points, split = f["offsets"][:], f["points"][:].astype(np.float64), f["split"][:]
    train = np.flatnonzero(split == 0)
    monkeypatch.setattr(statistics, "_read", {})
    whole = read_cache_statistics(cache)
    monkeypatch.setattr(validate, "CHUNK_POINTS", 37)
    monkeypatch.setattr(statistics, "_read", {})
    monkeypatch.setattr(validate, "_checked", {})
    chunked = read_cache_statistics(cache)
    assert np.array_equal(whole.mean_points, chunked.mean_points)
    expected = np.mean([points[offsets[r] : offsets[r + 1]] for r in train], axis=0)
    np.testing.assert_allclose(chunked.mean_points, expected, rtol=1e-6, atol=1e-7)
    good = [r for r in train if r != 1]
    np.testing.assert_allclose(chunked.mean_landmarks, lms[good].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    frontal = []  # zero poses: frontalising only centres and scales to unit RMS radius
    for r in good:
        c = lms[r].astype(np.float64) - lms[r].astype(np.float64).mean(0)
        frontal.append(c / np.sqrt((c**2).sum(1).mean()))
    ref = np.mean(frontal, axis=0)
    ref = (ref - ref.mean(0)) / np.sqrt(((ref - ref.mean(0)) ** 2).sum(1).mean())
    np.testing.assert_allclose(chunked.landmark_reference, ref, atol=1e-6)
    assert chunked.face_model is not None and chunked.face_model[1].dtype == np.int64


def test_ragged_cache_has_no_mean_face_and_says_why(tmp_path: Path) -> None:
    from facerecon.engine.statistics import mean_face
    from facerecon.errors import InputError

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=200)
    stats = read_cache_statistics(cache)
    assert stats.mean_points is None and stats.face_model is None and stats.mean_landmarks is not None
    with pytest.raises(InputError, match="different point counts"):
        mean_face(str(cache))


def test_validation_numbers_are_evals(tmp_path: Path) -> None:
    """The val_* metrics a run logs are ``facerecon eval``'s on the val split for the same weights
    (the one evaluation loop), to the last bit."""
    from facerecon.engine.evaluate import EvalSettings, evaluate_cache, metric_means
    from facerecon.engine.predict import load_model

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=500, same_topology=True)
    settings = EvalSettings(surface_samples=3000)
    cfg = Config().replace({**TINY_MODEL, "train.epochs": 1})
    run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True, eval_settings=settings))
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    network = load_model(tmp_path / "run" / "last.pt").network
    report = evaluate_cache(str(cache), "val", settings, network=network, batch_size=cfg.train.batch_size)
    expected = {f"val_{k}": v for k, v in metric_means(report.rows).items() if k != "folds"}
    assert {k: v for k, v in logged.items() if k.startswith("val_")} == expected


def _share(rank: int, world: int, fail: bool) -> list:
    """One rank of a gloo group: what ``run_on_main`` hands each rank."""
    from facerecon.engine.distributed import process_group, run_on_main
    from facerecon.errors import InputError

    def on_main() -> dict:
        if fail:
            raise InputError("rank 0 refused")
        return {"pid": os.getpid(), "array": np.arange(5.0)}

    with process_group(rank, world, False) as info:
        got = run_on_main(on_main, info)
        everyone: list = [None] * world
        torch.distributed.all_gather_object(everyone, (got["pid"], got["array"].tolist(), os.getpid()))
        return everyone


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_on_main_hands_rank_0s_result_to_every_rank_and_its_error_too() -> None:
    from facerecon.engine.distributed import spawn

    everyone = spawn(_share, 2, (False,))
    (pid0, arr0, own0), (pid1, arr1, own1) = everyone
    assert pid0 == pid1 == own0 != own1  # computed once, by rank 0
    assert arr0 == arr1 == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(Exception, match="rank 0 refused"):  # every rank fails; none waits forever
        spawn(_share, 2, (True,))


def test_the_training_loop_reads_in_functions_of_a_screen() -> None:
    """engine/train.py: no function longer than 50 lines; train_worker calls the stages in
    data-flow order, each defined below it in that order."""
    path = ROOT / "facerecon" / "engine" / "train.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    long = {name: n.end_lineno - n.lineno + 1 for name, n in functions.items() if n.end_lineno - n.lineno + 1 > 50}
    assert not long, long
    worker = functions["train_worker"]
    called = [c.func.id for c in ast.walk(worker) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id.startswith("_")]
    stages = [name for name in ("_run_config", "_build_model", "_start_or_resume", "_build_data", "_train") if name in called]
    assert stages == ["_run_config", "_build_model", "_start_or_resume", "_build_data", "_train"]
    lines = [functions[name].lineno for name in stages]
    assert lines == sorted(lines) and lines[0] > worker.lineno
    imports = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in imports if m.startswith("facerecon.cli")]


# ---- every function of the package fits a screen -------------------------------------------------

#: The screen: functions longer than this need a comment on their ``def`` line (or the line above
#: it) saying why.
SCREEN_LINES = 60

def _long_functions() -> dict[tuple[str, str], int]:
    """(module path, function name) -> length in lines (``def`` to last line) of every function
    of facerecon/ over :data:`SCREEN_LINES` without a comment saying why."""
    long = {}
    for path in sorted((ROOT / "facerecon").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            reason = "#" in lines[node.lineno - 1] or (first > 1 and lines[first - 2].strip().startswith("#"))
            if length > SCREEN_LINES and not reason:
                long[(path.relative_to(ROOT).as_posix(), node.name)] = length
    return long


def test_functions_of_the_package_fit_a_screen() -> None:
    """No function of facerecon/ is over 60 lines without a stated reason."""
    long = _long_functions()
    assert not long, long


def test_the_screen_check_sees_a_long_function_and_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself, on a small tree: a 61-line function is reported, one with a comment
    above its decorator is not, nor is a 60-line one."""
    body = "    x = 0\n" * 59
    (tmp_path / "facerecon").mkdir()
    (tmp_path / "facerecon" / "m.py").write_text(
        "def long():\n" + body + "    return x\n\n\n"
        "# long: a table of cases, clearer in one place\n@staticmethod\ndef explained():\n" + body + "    return x\n\n\n"
        "def fits():\n" + "    x = 0\n" * 58 + "    return x\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _long_functions() == {("facerecon/m.py", "long"): 61}
