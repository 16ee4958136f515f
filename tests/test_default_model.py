"""The model shipped with the package: loads safely, reconstructs the bundled photo, and its
landmarks fall inside the detected face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facerecon.engine.predict import default_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "facerecon" / "assets"


@pytest.fixture(scope="module")
def shipped() -> Path:
    path = default_checkpoint()
    assert path is not None, "facerecon/assets/default_model.pt is missing: the package must ship a default model"
    return path


def test_loads_with_weights_only_and_is_small(shipped: Path) -> None:
    ckpt = torch.load(shipped, weights_only=True)
    assert ckpt["format"] == "facerecon-checkpoint"
    assert "optimizer" not in ckpt  # inference-only
    assert shipped.stat().st_size < 25 * 2**20
    assert ckpt["landmark_reference"].shape == (68, 3)


@pytest.mark.slow
def test_reconstructs_bundled_photo(shipped: Path) -> None:
    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, load_model
    from facerecon.imageio import load_image

    image = load_image(ASSETS / "astronaut.png")
    predictor = Predictor(load_model(shipped), FaceDetector())
    crop = predictor.crops_of(image)[0]
    assert not crop.fallback and crop.probability > 0.9
    (result,) = predictor.reconstruct([(ASSETS / "astronaut.png", image, crop, 0)])
    assert result.vertices_px.shape == (7001, 3) and result.faces.shape == (13440, 3)
    assert np.isfinite(result.vertices_px).all()
    x0, y0, x1, y1 = crop.detection  # the raw MTCNN face box (tight: the jaw contour lies on its edge)
    lm = result.landmarks_px[:, :2]
    m = 0.1 * (x1 - x0)
    assert ((lm[:, 0] > x0 - m) & (lm[:, 0] < x1 + m) & (lm[:, 1] > y0 - m) & (lm[:, 1] < y1 + m)).mean() > 0.95
    # an independent reference: MTCNN's own five points (eye centres, nose tip, mouth corners)
    from facerecon.model.face_prior import five_points_from_68

    five_err = np.linalg.norm(five_points_from_68(lm) - crop.landmarks5, axis=1) / (x1 - x0)
    assert five_err.max() < 0.08, five_err
    yaw, pitch, roll = result.pose
    assert abs(yaw) < 30 and abs(roll) < 30  # a near-frontal portrait
