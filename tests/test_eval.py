"""``facerecon eval``: metrics independent of batch size, the mean-face baseline against an
independent computation (numpy + scipy), reports, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from facerecon.cli import app
from facerecon.engine.evaluate import EvalSettings, evaluate_cache, yaw_bin_nme
from facerecon.engine.predict import load_model

runner = CliRunner()


def test_batch_size_does_not_change_numbers(tiny_run: dict) -> None:
    model = load_model(tiny_run["checkpoint"])
    settings = EvalSettings(surface_samples=2000)
    one = evaluate_cache(str(tiny_run["cache"]), "all", settings, network=model.network, batch_size=1)
    eight = evaluate_cache(str(tiny_run["cache"]), "all", settings, network=model.network, batch_size=8)
    assert [r["id"] for r in one.rows] == [r["id"] for r in eight.rows]
    for a, b in zip(one.rows, eight.rows):
        for key in ("chamfer", "fscore@tau", "fscore@2tau", "nme"):
            # float32 rounding only: GEMM blocking depends on the batch, and inference folds the
            # batch norms from the second call on (a different rounding of the same function)
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), key


def test_mean_baseline_matches_independent_computation(tiny_run: dict) -> None:
    cache = tiny_run["cache"]
    tau = 0.05
    with h5py.File(cache) as f:
        split, off = f["split"][:], f["offsets"][:]
        pts = f["points"][:].astype(np.float64)
        lms = f["landmarks"][:].astype(np.float64)
    train = np.flatnonzero(split == 0)
    mean = np.mean([pts[off[i] : off[i + 1]] for i in train], axis=0)
    mean_lm = lms[train].mean(axis=0)
    report = evaluate_cache(str(cache), "test", EvalSettings(tau=tau, surface_samples=100000), baseline="mean")
    for row, i in zip(report.rows, np.flatnonzero(split == 2)):
        gt = pts[off[i] : off[i + 1]]
        d_pg, _ = cKDTree(gt).query(mean)
        d_gp, _ = cKDTree(mean).query(gt)
        assert row["chamfer"] == pytest.approx((d_pg**2).mean() + (d_gp**2).mean(), rel=1e-4)
        precision, recall = (d_pg < tau).mean(), (d_gp < tau).mean()
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        assert row["precision@tau"] == pytest.approx(precision, abs=1e-6)
        assert row["fscore@tau"] == pytest.approx(f, abs=1e-6)
        # NME: x-y error normalised by sqrt(w * h) of the ground-truth landmark box, in percent
        gt_lm = lms[i]
        w, h = np.ptp(gt_lm[:, 0]), np.ptp(gt_lm[:, 1])
        nme = np.linalg.norm(mean_lm[:, :2] - gt_lm[:, :2], axis=1).mean() / np.sqrt(w * h) * 100
        assert row["nme"] == pytest.approx(nme, rel=1e-4)


def test_yaw_bins_by_hand() -> None:
    rows = [{"nme": 1.0, "yaw": 10.0}, {"nme": 3.0, "yaw": -25.0}, {"nme": 4.0, "yaw": 45.0}, {"nme": 6.0, "yaw": -75.0},
            {"nme": 8.0, "yaw": 95.0}]
    bins = yaw_bin_nme(rows)
    assert bins["nme_yaw_0_30"] == 2.0
    assert bins["nme_yaw_30_60"] == 4.0
    assert bins["nme_yaw_60_90"] == 7.0
    assert bins["nme_yaw_mean"] == pytest.approx((2 + 4 + 7) / 3)


def _eval_cli(tiny_run: dict, out: Path, baseline: str, samples: int):
    """``facerecon -q eval`` of the tiny run's checkpoint on its test split, JSON to ``out``."""
    return runner.invoke(
        app,
        ["-q", "eval", "--cache", str(tiny_run["cache"]), "--checkpoint", str(tiny_run["checkpoint"]),
         "--split", "test", "--baseline", baseline, "--samples", str(samples), "-o", str(out)],
    )


def test_cli_report_json_csv_and_table(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = _eval_cli(tiny_run, out, "mean", 1000)
    assert result.exit_code == 0, result.output
    assert "Chamfer" in result.output and "mean-face baseline" in result.output
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"model", "mean-face baseline"}
    for summary in doc["results"].values():
        assert summary["num_samples"] == 2
        for key in ("chamfer", "fscore@tau", "fscore@2tau", "precision@tau", "recall@2tau", "nme"):
            assert np.isfinite(summary[key])
    assert "units" in doc and "surface" in doc["surface_sampling"]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 4 and {r["run"] for r in rows} == {"model", "mean-face baseline"}


def test_cli_bad_inputs(tiny_run: dict, tmp_path: Path) -> None:
    cache = str(tiny_run["cache"])
    cases = {
        "missing checkpoint": ["eval", "--cache", cache, "--checkpoint", str(tmp_path / "none.pt")],
        "missing cache": ["eval", "--cache", str(tmp_path / "none.h5"), "--baseline", "mean"],
        "bad split": ["eval", "--cache", cache, "--baseline", "mean", "--split", "nope"],
    }
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    cases["not a checkpoint"] = ["eval", "--cache", cache, "--checkpoint", str(junk)]
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    cases["foreign checkpoint"] = ["eval", "--cache", cache, "--checkpoint", str(foreign)]
    for name, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        lines = [l for l in result.output.splitlines() if l.strip() and "━" not in l]
        assert len(lines) == 1 and "error" in lines[0], (name, result.output)
    assert not (tmp_path / "report.json").exists()


def test_five_point_baseline_recovers_an_exactly_posed_face(tmp_path: Path) -> None:
    """The tiny cache's faces are its "face model" (a unit cap) scaled and shifted, and its five
    points are exact means of landmark subsets, so the five-point fit must pose the model mean
    onto every face: landmark NME ~ 0 and the posed vertices on the ground truth in x-y."""
    from facerecon.engine.evaluate import FivePointBaseline
    from synthetic_cache import make_tiny_cache

    cache = make_tiny_cache(tmp_path / "c.h5", n=6, points=300, same_topology=True)
    rep = evaluate_cache(str(cache), "all", EvalSettings(surface_samples=500), baseline="five-point")
    assert rep.summary["nme"] < 1e-3
    base = FivePointBaseline(str(cache))
    with h5py.File(cache) as f:
        five, off, pts = f["landmarks5"][:], f["offsets"][:], f["points"][:]
    verts, _ = base.predict(torch.from_numpy(five))
    for i in range(5):
        np.testing.assert_allclose(verts[i, :, :2].numpy(), pts[off[i] : off[i + 1], :2], atol=1e-4)


def test_cli_all_baselines_and_folds(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _eval_cli(tiny_run, out, "all", 500)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"model", "mean-face baseline", "five-point baseline"}
    assert 0.0 <= doc["results"]["model"]["folds"] <= 100.0
    bad = runner.invoke(app, ["eval", "--cache", str(tiny_run["cache"]), "--baseline", "median"])
    assert bad.exit_code == 2 and "median" in bad.output


def test_point_metrics_search_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chamfer and both F-scores come from one nearest-neighbour search (both directions)."""
    import facerecon.ops as ops
    from facerecon.engine.evaluate import point_metrics

    calls = []
    real = ops.nearest_neighbors

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "nearest_neighbors", counting)
    gen = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 50, 3, generator=gen), torch.rand(2, 80, 3, generator=gen)
    out = point_metrics(pred, gt, torch.tensor([80, 60]), EvalSettings(tau=0.1))
    assert len(calls) == 1
    # against scipy: F-score at tau for the first sample
    d_p, _ = cKDTree(gt[0].numpy()).query(pred[0].numpy())
    d_g, _ = cKDTree(pred[0].numpy()).query(gt[0].numpy())
    p, r = (d_p < 0.1).mean(), (d_g < 0.1).mean()
    assert float(out["fscore@tau"][0]) == pytest.approx(2 * p * r / (p + r))
    assert float(out["chamfer"][0]) == pytest.approx((d_p**2).mean() + (d_g**2).mean(), rel=1e-5)


def test_cli_five_point_baseline_refuses_a_cache_without_face_model_first(tmp_path: Path) -> None:
    """Refused before any evaluation runs: one line, exit 2, no report written."""
    from synthetic_cache import make_tiny_cache

    cache = make_tiny_cache(tmp_path / "scan.h5", n=6, points=200, same_topology=False)
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--cache", str(cache), "--baseline", "five-point", "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert lines[-1].startswith("error:") and "five-point" in lines[-1] and "eval" not in " ".join(lines[:-1])
    assert not out.exists()
