"""facerecon.detect: the crop geometry (exact, against independent references) and MTCNN on real photos."""

from __future__ import annotations

import json
import math
import resource
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.crop import (
    CROP_SIZE,
    DEFAULT_FALLBACK_BOX,
    FaceCrop,
    RelativeBoxMean,
    bounding_box,
    box_to_relative,
    crop_image,
    landmark_box,
    mean_relative_box,
    relative_to_box,
    square_box,
)
from facerecon.crop import box_iou as detect_box_iou  # testutils' box_iou is the tests' reference
from facerecon.detect import FaceDetector
from facerecon.errors import InputError
from testutils import box_iou

cv2 = pytest.importorskip("cv2")


# ---- geometry ---------------------------------------------------------------------------------


def test_square_box_hand_values() -> None:
    # 100 x 60 box centred at (150, 230): side 1.1 * 100 = 110, same centre
    x0, y0, side = square_box([100.0, 200.0, 200.0, 260.0])
    assert side == pytest.approx(110.0)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((150.0, 230.0))
    assert square_box([0, 0, 10, 40], enlarge=1.0) == pytest.approx((-15.0, 0.0, 40.0))
    with pytest.raises(InputError):
        square_box([5, 5, 5, 9])


def test_landmark_box_is_the_square_box_of_the_landmarks_bounds() -> None:
    # bounds (2, -4) .. (12, 16): 10 x 20 centred at (7, 6); side 1.1 * 20 = 22 (worked by hand)
    lm = np.array([[2.0, 0.0, 5.0], [12.0, 16.0, -1.0], [5.0, -4.0, 0.0]])
    assert bounding_box(lm) == (2.0, -4.0, 12.0, 16.0)
    assert landmark_box(lm) == pytest.approx((7 - 11, 6 - 11, 22.0))
    assert landmark_box(lm) == square_box([2.0, -4.0, 12.0, 16.0])  # one policy for both
    assert landmark_box(lm, enlarge=1.0) == pytest.approx((-3.0, -4.0, 20.0))
    assert landmark_box(np.array([[3.0, 1.0], [3.0, 9.0]])) == pytest.approx((3 - 4.4, 5 - 4.4, 8.8))  # flat in x: still a box
    with pytest.raises(InputError, match="degenerate landmarks"):
        landmark_box(np.array([[3.0, 1.0], [3.0, 1.0]]))


def test_box_iou_hand_values() -> None:
    assert detect_box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert detect_box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)  # half overlap
    assert detect_box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)  # inside
    assert detect_box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert detect_box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty union


def test_relative_boxes() -> None:
    # image 400 x 200: min side 200
    assert relative_to_box((0.5, 0.5, 1.0), (400, 200)) == pytest.approx((100.0, 0.0, 200.0))
    assert relative_to_box((0.25, 0.5, 0.5), (400, 200)) == pytest.approx((50.0, 50.0, 100.0))
    assert box_to_relative((50.0, 50.0, 100.0), (400, 200)) == pytest.approx((0.25, 0.5, 0.5))
    # several at once: (cx / W, cy / H, side / min(W, H)) row by row
    np.testing.assert_allclose(
        box_to_relative([[50.0, 50.0, 100.0], [0.0, 0.0, 100.0]], [[400, 200], [100, 100]]), [[0.25, 0.5, 0.5], [0.5, 0.5, 1.0]]
    )

    def face(box: tuple[float, float, float], fallback: bool = False) -> FaceCrop:
        return FaceCrop(box=box, probability=0.99, landmarks5=None, detection=None, fallback=fallback)

    crops = [face((50.0, 50.0, 100.0)), face((0.0, 0.0, 100.0)), face((1.0, 2.0, 3.0), fallback=True)]
    sizes = [(400, 200), (100, 100), (10, 10)]
    # (0.25, 0.5, 0.5) and (0.5, 0.5, 1.0) averaged; the fallback ignored
    assert mean_relative_box(crops, sizes) == pytest.approx((0.375, 0.5, 0.75))
    assert mean_relative_box([], []) == DEFAULT_FALLBACK_BOX
    # the running mean (the cache writer's fallback box): the same, whether added at once or one by one
    running = RelativeBoxMean()
    assert running.value() == DEFAULT_FALLBACK_BOX
    running.add([50.0, 50.0, 100.0], [400, 200])
    assert running.value() == pytest.approx((0.25, 0.5, 0.5))
    running.add(np.array([[0.0, 0.0, 100.0]]), np.array([[100, 100]], dtype=np.int32))
    assert running.count == 2 and running.value() == pytest.approx((0.375, 0.5, 0.75))
    running.add(np.zeros((0, 3)), np.zeros((0, 2)))  # nothing to add
    assert running.count == 2 and running.value() == pytest.approx((0.375, 0.5, 0.75))


def test_face_crop_to_dict_round_trip() -> None:
    crop = FaceCrop(
        box=(1.0, 2.0, 3.0), probability=0.5, landmarks5=np.arange(10, dtype=np.float32).reshape(5, 2),
        detection=np.array([1, 2, 3, 4], np.float32), fallback=False,
    )
    data = json.loads(json.dumps(crop.to_dict()))
    back = FaceCrop.from_dict(data)
    assert back.box == crop.box and back.probability == 0.5 and not back.fallback
    np.testing.assert_array_equal(back.landmarks5, crop.landmarks5)
    fallback = FaceCrop(box=(0.0, 0.0, 5.0), probability=float("nan"), landmarks5=None, detection=None, fallback=True)
    d = json.loads(json.dumps(fallback.to_dict()))  # nan would not be valid JSON
    assert d["probability"] is None and d["fallback"] is True
    assert math.isnan(FaceCrop.from_dict(d).probability)


# ---- crop_image -------------------------------------------------------------------------------


def _dot_image(h: int, w: int, x: float, y: float, sigma: float) -> np.ndarray:
    """A Gaussian dot centred at image px (x, y) (pixel centres at +0.5), on black."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(crop: np.ndarray) -> tuple[float, float]:
    """Intensity centroid in crop px (pixel centres at +0.5)."""
    wgt = crop[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]] + 0.5
    return float((wgt * xx).sum() / wgt.sum()), float((wgt * yy).sum() / wgt.sum())


@pytest.mark.parametrize(
    ("box", "sigma"),
    [
        ((50.25, 30.75, 150.0), 2.0),  # upsampling (bilinear only)
        ((-40.3, -25.6, 180.0), 2.0),  # box partly outside the image
        ((13.7, -101.2, 1000.0), 9.0),  # 4.5x downscaling: the antialiased path
        ((-333.3, 12.9, 672.0), 6.0),  # exactly 3x, partly outside
    ],
)
def test_crop_maps_a_dot_to_the_predicted_position(box: tuple[float, float, float], sigma: float) -> None:
    x, y = 123.3, 87.6
    image = _dot_image(400, 640, x, y, sigma)
    crop = crop_image(image, box, CROP_SIZE)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    x0, y0, side = box
    expected = ((x - x0) * CROP_SIZE / side, (y - y0) * CROP_SIZE / side)
    assert _centroid(crop) == pytest.approx(expected, abs=0.5)


def test_crop_matches_pil_extent_transform() -> None:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 1.5)
    for x0, y0, side in [(50.25, 30.75, 150.0), (10.0, 20.0, 260.0), (120.6, 3.3, 170.5)]:
        ours = crop_image(image, (x0, y0, side), 224)
        pil = Image.fromarray(image).transform(
            (224, 224), Image.Transform.EXTENT, (x0, y0, x0 + side, y0 + side), resample=Image.Resampling.BILINEAR
        )
        diff = np.abs(ours.astype(int) - np.asarray(pil).astype(int))
        assert diff.max() <= 1, (x0, y0, side)  # rounding of the fixed-point weights only


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_large_downscale_equals_area_resize(factor: int) -> None:
    """When side is an integer multiple of the crop size, the crop is the box's area average."""
    image = np.random.default_rng(factor).integers(0, 256, (1300, 1400, 3), dtype=np.uint8)
    x0, y0, side = 37, 81, 224 * factor
    ours = crop_image(image, (float(x0), float(y0), float(side)), 224)
    reference = cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def test_outside_the_image_is_black() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_image(image, (-100.0, -50.0, 200.0), 100)  # the image fills crop [50, 100) x [25, 75)
    assert (crop[:, :49] == 0).all() and (crop[:24] == 0).all() and (crop[76:] == 0).all()
    assert (crop[26:74, 51:] == 200).all()
    crop = crop_image(image, (-50.0, 0.0, 100.0), 100)  # the same without the antialiased path
    assert (crop[:, :49] == 0).all() and (crop[1:-1, 51:-1] == 200).all()
    assert (crop_image(image, (500.0, 500.0, 50.0), 64) == 0).all()  # entirely outside
    assert (crop_image(image, (-5000.0, -5000.0, 4000.0), 64) == 0).all()  # antialiased path, outside
    big = crop_image(image, (-100.0, -100.0, 300.0), 30)  # 10x downscale around the image
    assert (big[:9] == 0).all() and (big[11:19, 11:19] == 200).all()


def test_crop_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        crop_image(np.zeros((10, 10, 3), np.float32), (0, 0, 5))
    with pytest.raises(InputError):
        crop_image(np.zeros((10, 10, 3), np.uint8), (0, 0, -5))


def test_fallback_policy_without_detection() -> None:
    faces: list[FaceCrop] = []
    (crop,) = FaceDetector.select(faces, 400, 200)
    assert crop.fallback and math.isnan(crop.probability) and crop.landmarks5 is None
    assert crop.box == pytest.approx((100.0, 0.0, 200.0))  # the largest centred square
    (crop,) = FaceDetector.select(faces, 400, 200, fallback_box=(0.25, 0.5, 0.5))
    assert crop.box == pytest.approx((50.0, 50.0, 100.0))


def test_detector_argument_checks() -> None:
    with pytest.raises(InputError):
        FaceDetector(min_probability=1.5)
    with pytest.raises(InputError):
        FaceDetector(thresholds=[0.5, 0.5])
    with pytest.raises(InputError, match="uint8"):
        FaceDetector().detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(InputError, match="min_face_fraction"):
        FaceDetector(min_face_fraction=1.5)
    with pytest.raises(InputError, match="min_face_size"):
        FaceDetector(min_face_size=5)


# ---- MTCNN on the shared photos -------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    pytest.importorskip("facenet_pytorch")
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> Path:
    path = shared_data / "photos"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def _load(photos: Path, name: str) -> np.ndarray:
    from facerecon.imageio import load_image

    return load_image(photos / name)


def _plausible_face(face: FaceCrop) -> None:
    """Landmarks of a real, upright-ish face: inside the box, eyes above the mouth, sane spacing."""
    lm = face.landmarks5
    assert lm is not None and lm.shape == (5, 2) and lm.dtype == np.float32
    x0, y0, side = face.box
    assert ((lm >= [x0, y0]) & (lm <= [x0 + side, y0 + side])).all()
    eyes_y, mouth_y = lm[:2, 1].mean(), lm[3:, 1].mean()
    assert eyes_y < lm[2, 1] < mouth_y  # eyes, then nose, then mouth going down
    eye_dist = np.linalg.norm(lm[1] - lm[0])
    assert 0.1 * side < eye_dist < 0.6 * side


@pytest.mark.parametrize(
    "name", ["JianzhuGuo.jpg", "aflw-test.jpg", "emma_watson_01.jpg", "emma_watson_02.jpg", "emma_watson_03.jpg"]
)
def test_one_face(detector: FaceDetector, photos: Path, name: str) -> None:
    image = _load(photos, name)
    faces = detector.detect(image)
    assert len(faces) == 1, [f.probability for f in faces]
    (face,) = detector.select(faces, image.shape[1], image.shape[0])
    assert not face.fallback and face.probability >= 0.95
    _plausible_face(face)
    det = face.detection
    assert det is not None
    assert face.box[2] == pytest.approx(1.1 * max(det[2] - det[0], det[3] - det[1]), rel=1e-5)


@pytest.mark.parametrize(("name", "at_least"), [("trump_hillary.jpg", 2), ("t1.jpg", 5)])
def test_most_confident_of_several(detector: FaceDetector, photos: Path, name: str, at_least: int) -> None:
    image = _load(photos, name)
    all_faces = detector.select(detector.detect(image), image.shape[1], image.shape[0], all_faces=True)
    assert len(all_faces) >= at_least
    probs = [f.probability for f in all_faces]
    assert probs == sorted(probs, reverse=True) and min(probs) >= 0.9
    for face in all_faces:
        _plausible_face(face)
    best = detector.select(all_faces, image.shape[1], image.shape[0])
    assert len(best) == 1 and best[0].probability == max(probs)
    # faces are distinct people: their boxes do not overlap much
    centres = np.array([[f.box[0] + f.box[2] / 2, f.box[1] + f.box[2] / 2] for f in all_faces])
    sides = np.array([f.box[2] for f in all_faces])
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(sides)) * 1e9
    assert (dist > 0.5 * np.minimum(sides[:, None], sides[None])).all()


def test_no_face_gives_the_fallback(detector: FaceDetector, photos: Path) -> None:
    image = _load(photos, "grass.jpg")
    (crop,) = detector.crop(image)
    assert crop.fallback and crop.detection is None
    h, w = image.shape[:2]
    assert crop.box == pytest.approx(((w - h) / 2, 0.0, float(h)))


def test_large_photo_detects_downscaled_and_crops_the_original(
    detector: FaceDetector, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _load(photos, "emma.jpg")  # 3913 x 1901: a triptych, one face per panel
    h, w = image.shape[:2]
    assert (w, h) == (3913, 1901)
    seen_shapes: list[tuple[int, ...]] = []
    run = detector._search
    monkeypatch.setattr(detector, "_search", lambda small, *a: (seen_shapes.append(small.shape), run(small, *a))[1])

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    tracemalloc.start()
    faces = detector.detect(image)
    crops = [crop_image(image, f.box, CROP_SIZE) for f in faces]
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before

    assert seen_shapes and max(seen_shapes[0][:2]) == 1024  # detection ran on the downscaled copy
    assert len(faces) == 3
    panels = sorted(int((f.box[0] + f.box[2] / 2) // (w / 3)) for f in faces)
    assert panels == [0, 1, 2]  # mapped back to the original: one face in each third
    for face in faces:
        _plausible_face(face)
        assert face.box[2] > 400  # faces ~500 px wide in the original (~130 px in the copy)
    for crop in crops:
        assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.mean() > 40
    assert numpy_peak < 200e6, numpy_peak  # the image is 22 MB
    assert rss_growth < 1e9, rss_growth


def test_batch_equals_single_and_mirrors(detector: FaceDetector, photos: Path) -> None:
    image = _load(photos, "aflw-test.jpg")
    mirrored = np.ascontiguousarray(image[:, ::-1])
    single = detector.detect(image)
    batch = detector.detect_batch([image, mirrored])
    assert len(batch) == 2 and len(batch[0]) == len(single) == 1 and len(batch[1]) == 1
    np.testing.assert_allclose(batch[0][0].detection, single[0].detection, atol=0.5)
    # the mirrored face's box, mirrored back, covers the original's (MTCNN is not exactly
    # mirror-symmetric: ~15 px differences on this 220 px face)
    w = image.shape[1]
    det, det_m = single[0].detection, batch[1][0].detection
    assert _iou([w - det_m[2], det_m[1], w - det_m[0], det_m[3]], det) > 0.75


_iou = box_iou


