"""Rolled faces: the turned copy of a photo and its matrix, detections of a turned photo mapped
back onto the upright photo's, and the second chance left alone when the fast search finds a face.

References: a dot's centroid and the rotation about the centre worked out by hand; the upright
photo's own detection; the photos are turned here with OpenCV directly, not through facerecon.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from facerecon.detect import FaceDetector, invert_affine, rotate_image

cv2 = pytest.importorskip("cv2")

ASTRONAUT = Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png"


def _dot(h: int, w: int, x: float, y: float, sigma: float = 2.0) -> np.ndarray:
    """A Gaussian dot centred at continuous image px (x, y) (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return (255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))).astype(np.float32)[..., None].repeat(3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] + 0.5
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0, 90.0, 137.0])
def test_rotate_image_moves_a_dot_as_a_turn_about_the_centre(angle: float) -> None:
    h, w, x, y = 60, 100, 71.3, 22.8
    rotated, forward = rotate_image(_dot(h, w, x, y), angle)
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    # the canvas holds the whole turned rectangle
    assert rotated.shape[:2] == (math.ceil(h * abs(c) + w * abs(s)), math.ceil(h * abs(s) + w * abs(c)))
    # counter-clockwise on screen (y down): (dx, dy) -> (dx c + dy s, -dx s + dy c), centre to centre
    dx, dy = x - w / 2, y - h / 2
    expected = np.array([rotated.shape[1] / 2 + dx * c + dy * s, rotated.shape[0] / 2 - dx * s + dy * c])
    np.testing.assert_allclose(_centroid(rotated), expected, atol=0.05)
    np.testing.assert_allclose(forward[:, :2] @ [x, y] + forward[:, 2], expected, atol=1e-9)
    back = invert_affine(forward)
    np.testing.assert_allclose(back[:, :2] @ expected + back[:, 2], [x, y], atol=1e-9)


def _turned(image: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo on a square canvas (its diagonal) turned by ``angle`` degrees counter-clockwise
    about the canvas centre with OpenCV, and the (2, 3) map from the photo's image px to the
    turned copy's (OpenCV's index matrix taken to continuous px: x + 0.5)."""
    h, w = image.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    canvas = np.zeros((side, side, 3), np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = image
    rot = cv2.getRotationMatrix2D((side / 2 - 0.5, side / 2 - 0.5), angle, 1.0)
    turned = cv2.warpAffine(canvas, rot, (side, side))
    # photo px p -> canvas px p + (ox, oy) -> indices - 0.5 -> rot -> + 0.5
    offset = rot[:, :2] @ (np.array([ox, oy]) - 0.5) + rot[:, 2] + 0.5
    return turned, np.hstack([rot[:, :2], offset[:, None]])


def _back(points: np.ndarray, forward: np.ndarray) -> np.ndarray:
    a, b = forward[:, :2], forward[:, 2]
    return (np.asarray(points, np.float64) - b) @ np.linalg.inv(a).T


def _photo(shared: bool, request: pytest.FixtureRequest) -> Path:
    """The bundled astronaut, or a shared photo (skipped without ../shared/data)."""
    if not shared:
        return ASTRONAUT
    path = request.getfixturevalue("shared_data") / "photos" / "JianzhuGuo.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.mark.parametrize("shared", [False, True], ids=["astronaut", "shared-photo"])
@pytest.mark.parametrize("angle", [-45.0, 30.0])
def test_a_turned_photo_gives_the_upright_box_and_five_points_turned(
    detector: FaceDetector, shared: bool, angle: float, request: pytest.FixtureRequest
) -> None:
    """Whichever search finds it, the face of a turned photo maps back onto the upright photo's:
    five points within MTCNN's own accuracy (a few px, a tenth of the eye distance), the box's centre within a quarter of the
    eye distance and about its size (MTCNN's box of a rolled face is the axis-aligned box of the
    face it sees, so its centre moves a little)."""
    from facerecon.imageio import load_image

    path = _photo(shared, request)
    image = load_image(path)
    (upright,) = detector.crop(image)
    assert not upright.fallback
    turned, forward = _turned(image, angle)
    (crop,) = detector.crop(turned)
    assert not crop.fallback, detector.last_search
    eye_dist = float(np.linalg.norm(upright.landmarks5[1] - upright.landmarks5[0]))
    points = _back(crop.landmarks5, forward)
    err = np.linalg.norm(points - upright.landmarks5, axis=1)
    # MTCNN's points themselves move with the roll: on JianzhuGuo.jpg (eye distance 79 px) a mouth
    # corner lands 11-14 px apart between the upright photo and any turned copy, levelled or not
    assert err.mean() < 0.12 * eye_dist and err.max() < 0.2 * eye_dist, (detector.last_search, err, eye_dist)
    centre = _back(np.array([crop.box[:2]]) + crop.box[2] / 2, forward)[0]
    up_centre = np.array(upright.box[:2]) + upright.box[2] / 2
    assert np.linalg.norm(centre - up_centre) < 0.25 * eye_dist, (detector.last_search, centre, up_centre)
    assert 0.8 < crop.box[2] / upright.box[2] < 1.5


def test_the_second_chance_runs_only_when_the_fast_search_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upright face: one search (the fast one), no rotated copy, and the box the fast search
    alone gives (so a face found today keeps its box)."""
    from facerecon.imageio import load_image

    image = load_image(ASTRONAUT)
    alone = FaceDetector(device="cpu", second_chance=False)
    (fast,) = alone.crop(image)
    detector = FaceDetector(device="cpu")
    searches: list[float] = []
    real_search = detector._search

    def counted(small: np.ndarray, min_face: float, thresholds: list[float]):  # type: ignore[no-untyped-def]
        searches.append(min_face)
        return real_search(small, min_face, thresholds)

    def no_rotation(*args: object) -> list:
        raise AssertionError("a rotated copy was searched although the fast search found the face")

    monkeypatch.setattr(detector, "_search", counted)
    monkeypatch.setattr(detector, "_rotated_search", no_rotation)
    (crop,) = detector.crop(image)
    assert detector.last_search == "fast" and len(searches) == 1
    np.testing.assert_array_equal(crop.detection, fast.detection)
    np.testing.assert_array_equal(crop.landmarks5, fast.landmarks5)


@pytest.mark.parametrize("angle", [-25.0, 35.0])
def test_a_rolled_face_takes_the_five_points_of_a_levelled_copy(angle: float) -> None:
    """A face the fast search finds rolled: its box stays the one found, its five points come from
    the copy turned upright, and they lie on the upright photo's points turned, within MTCNN's
    accuracy (``benchmarks/bench_rolled.py`` measures how much closer than the rolled face's own
    points on real rolled faces)."""
    from facerecon.imageio import load_image

    image = load_image(ASTRONAUT)
    (upright,) = FaceDetector(device="cpu").crop(image)
    turned, forward = _turned(image, angle)
    expected = upright.landmarks5 @ forward[:, :2].T + forward[:, 2]
    plain = FaceDetector(device="cpu", level_roll=0.0)
    plain.RECHECK_BELOW = 0.0  # the fast find as it is (the recheck has its own tests below)
    (rolled,) = plain.crop(turned)
    assert plain.last_search == "fast" and not plain.last_levelled
    detector = FaceDetector(device="cpu")
    detector.RECHECK_BELOW = 0.0
    (crop,) = detector.crop(turned)
    assert detector.last_search == "fast" and detector.last_levelled
    assert crop.box == rolled.box and crop.probability == rolled.probability
    np.testing.assert_array_equal(crop.detection, rolled.detection)
    err = np.linalg.norm(crop.landmarks5 - expected, axis=1)
    eye_dist = float(np.linalg.norm(expected[1] - expected[0]))
    assert err.max() < max(4.0, 0.1 * eye_dist), err
    again = detector.level(turned, rolled)  # prepare's call on the face it picked: the same points
    assert again.box == rolled.box and detector.last_levelled
    np.testing.assert_array_equal(again.landmarks5, crop.landmarks5)


def test_eye_line_angle_hand_values() -> None:
    from facerecon.detect import eye_line_angle

    points = np.array([[10.0, 10.0], [20.0, 10.0], [15, 15], [12, 20], [18, 20]])
    assert eye_line_angle(points) == pytest.approx(0.0)
    points[1] = [20.0, 20.0]  # right eye lower on screen (y down): turn by +45 to level
    assert eye_line_angle(points) == pytest.approx(45.0)
    turned, forward = rotate_image(np.zeros((40, 40, 3), np.uint8), 45.0)
    eyes = points[:2] @ forward[:, :2].T + forward[:, 2]
    assert eyes[1, 1] - eyes[0, 1] == pytest.approx(0.0, abs=1e-9)


def test_level_roll_is_checked() -> None:
    from facerecon.errors import InputError

    with pytest.raises(InputError, match="level_roll"):
        FaceDetector(level_roll=-1.0)


def test_each_turn_is_tried_both_ways_and_the_more_confident_face_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing found upright: the copies turned by -45 and +45 degrees are both searched before
    any other turn, and the more confident of their faces is the one returned."""
    from facerecon.crop import FaceCrop, square_box
    from facerecon.mtcnn_cascade import Detections

    def face(p: float) -> FaceCrop:
        det = np.array([10.0, 10.0, 60.0, 70.0], np.float32)
        return FaceCrop(square_box(det), p, np.zeros((5, 2), np.float32), det, False)

    detector = FaceDetector(device="cpu", level_roll=0.0)
    tried: list[float] = []
    found = {-45.0: [face(0.93)], 45.0: [face(0.99)], -30.0: [face(1.0)]}

    def rotated(small: np.ndarray, angle: float, *args: object) -> list:
        tried.append(angle)
        return found.get(angle, [])

    monkeypatch.setattr(detector, "_search", lambda *args: Detections.empty())
    monkeypatch.setattr(detector, "_rotated_search", rotated)
    (crop,) = detector.crop(np.zeros((100, 100, 3), np.uint8))
    assert detector.last_search == "rotated" and sorted(tried) == [-45.0, 45.0]
    assert crop.probability == 0.99


def test_a_weak_face_on_one_turned_copy_must_be_found_again_levelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A face found only on a turned copy below ``CONFIRM_BELOW`` is kept when the copy turned
    so that its own eyes are level finds it again, and dropped otherwise (the search goes on to
    the next turn); a confident one is kept without the extra search."""
    from facerecon.crop import FaceCrop, square_box
    from facerecon.mtcnn_cascade import Detections

    # eyes tilted by 20 degrees: the levelled copy is the one turned by eye_line_angle(points)
    t = math.radians(20.0)
    eyes = np.array([[30.0, 40.0], [30.0 + 20 * math.cos(t), 40.0 - 20 * math.sin(t)]])
    points = np.concatenate([eyes, [[40.0, 50.0], [32.0, 60.0], [48.0, 60.0]]]).astype(np.float32)
    from facerecon.detect import eye_line_angle

    level = eye_line_angle(points)

    def face(p: float, det: tuple[float, ...] = (10.0, 10.0, 60.0, 70.0)) -> FaceCrop:
        box = np.array(det, np.float32)
        return FaceCrop(square_box(box), p, points, box, False)

    def run(found: dict[float, list]) -> tuple[FaceCrop, list[float], str]:
        detector = FaceDetector(device="cpu", level_roll=0.0)
        tried: list[float] = []

        def rotated(small: np.ndarray, angle: float, *args: object) -> list:
            tried.append(round(angle, 6))
            return found.get(round(angle, 6), [])

        monkeypatch.setattr(detector, "_search", lambda *args: Detections.empty())
        monkeypatch.setattr(detector, "_rotated_search", rotated)
        (crop,) = detector.crop(np.zeros((100, 100, 3), np.uint8))
        return crop, tried, detector.last_search

    lv = round(level, 6)
    # weak, found again on the levelled copy: kept
    crop, tried, how = run({45.0: [face(0.93)], lv: [face(0.99, (12.0, 12.0, 58.0, 68.0))]})
    assert how == "rotated" and crop.probability == 0.93 and lv in tried
    # weak, the levelled copy finds a face elsewhere only: dropped, the next turn's face taken
    crop, tried, how = run({45.0: [face(0.93)], lv: [face(0.99, (300.0, 300.0, 350.0, 360.0))], 30.0: [face(0.97)]})
    assert how == "rotated" and crop.probability == 0.97
    # weak and never found again, nothing else: the average crop
    crop, tried, how = run({45.0: [face(0.93)]})
    assert how == "none" and crop.fallback
    # confident: kept without searching the levelled copy
    crop, tried, how = run({45.0: [face(0.96)]})
    assert crop.probability == 0.96 and lv not in tried


def test_equalise_contrast_spreads_lightness_and_keeps_grey_and_geometry() -> None:
    """A grey ramp of lightness 100-120 (of 255): CLAHE spreads it over a half wider range at least, pixels stay
    grey, lightness still rises along the ramp, and the image keeps its size."""
    from facerecon.detect import equalise_contrast

    ramp = np.tile(np.linspace(100, 120, 128).round().astype(np.uint8)[None, :, None], (96, 1, 3))
    even = equalise_contrast(ramp)
    assert even.shape == ramp.shape and even.dtype == np.uint8
    assert np.abs(even[..., 0].astype(int) - even[..., 1]).max() <= 1 and np.abs(even[..., 0].astype(int) - even[..., 2]).max() <= 1
    row = even[48, :, 0].astype(int)
    assert row.max() - row.min() > 1.5 * (120 - 100)
    assert row[:32].mean() < row[48:80].mean() < row[-32:].mean()


def test_a_face_in_deep_shadow_is_found_on_the_contrast_equalised_copy() -> None:
    """The astronaut at 7 % of its brightness: MTCNN's fast search finds no face; the second
    chance finds it on the equalised copy, in the box of the upright photo's own detection."""
    image = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    reference = FaceDetector().detect_best(image)[0]
    dark = (image.astype(np.float32) * 0.07 + 3).round().clip(0, 255).astype(np.uint8)
    assert FaceDetector(second_chance=False).detect_best(dark) == []
    detector = FaceDetector()
    found = detector.detect_best(dark)
    assert detector.last_search == "equalised" and found[0].probability >= 0.9
    (x0, y0, s0), (x1, y1, s1) = reference.box, found[0].box
    overlap = max(0.0, min(x0 + s0, x1 + s1) - max(x0, x1)) * max(0.0, min(y0 + s0, y1 + s1) - max(y0, y1))
    assert overlap / (s0 * s0 + s1 * s1 - overlap) > 0.9


def test_a_doubtful_fast_find_is_replaced_by_a_turned_copys_view_of_the_same_face(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast search finds a face below ``RECHECK_BELOW`` with level eyes; a copy turned by 45
    degrees finds the same face (its box centre inside) more confidently, with its eyes tilted by
    45 degrees: that detection is taken ("rechecked"). Not taken when the turned copy sees the
    eyes as level too (its points are then the less accurate ones), when its face lies elsewhere
    or is less confident; and a confident fast find is not rechecked at all."""
    from facerecon.crop import FaceCrop, square_box
    from facerecon.mtcnn_cascade import Detections

    level = np.array([[30.0, 40.0], [50.0, 40.0], [40.0, 50.0], [32.0, 60.0], [48.0, 60.0]], np.float32)
    t = math.radians(45.0)
    tilted = level.copy()
    tilted[1] = [30.0 + 20 * math.cos(t), 40.0 - 20 * math.sin(t)]

    def run(fast_p: float, rival: FaceCrop | None) -> tuple[FaceCrop, list[float], str]:
        detector = FaceDetector(device="cpu")
        tried: list[float] = []
        fast = Detections(np.array([[10.0, 10.0, 70.0, 80.0]], np.float32), np.array([fast_p], np.float32), level[None])

        def rotated(small: np.ndarray, angle: float, *args: object) -> list:
            tried.append(round(angle, 6))
            return [rival] if rival is not None and round(angle, 6) == -45.0 else []

        monkeypatch.setattr(detector, "_search", lambda *args: fast)
        monkeypatch.setattr(detector, "_rotated_search", rotated)
        (crop,) = detector.crop(np.zeros((100, 100, 3), np.uint8))
        return crop, tried, detector.last_search

    def face(p: float, points: np.ndarray, det: tuple[float, ...] = (12.0, 12.0, 68.0, 78.0)) -> FaceCrop:
        box = np.array(det, np.float32)
        return FaceCrop(square_box(box), p, points, box, False)

    crop, tried, how = run(0.95, face(0.999, tilted))
    assert how == "rechecked" and crop.probability == pytest.approx(0.999) and -45.0 in tried and 45.0 in tried
    np.testing.assert_array_equal(crop.landmarks5, tilted)
    for rival in (face(0.999, level), face(0.999, tilted, (300.0, 300.0, 360.0, 370.0)), face(0.94, tilted)):
        crop, tried, how = run(0.95, rival)
        assert how == "fast" and crop.probability == pytest.approx(0.95)
    crop, tried, how = run(0.999, face(1.0, tilted))
    assert how == "fast" and tried == []


def _turned_aflw_face(shared_data: Path, name: str, angle: float) -> tuple[np.ndarray, np.ndarray, float]:
    """An AFLW2000-3D photo turned by ``angle`` degrees, its ground truth's five points turned
    with it (eye centres, nose tip, mouth corners) and the landmark box's sqrt(w h); skips the
    test when the shared data is absent."""
    from scipy.io import loadmat

    from facerecon.imageio import load_image

    path = shared_data / "aflw2000-3d" / f"{name}.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gt = np.asarray(loadmat(path.with_suffix(".mat"))["pt3d_68"], dtype=np.float64)[:2].T
    image, forward = rotate_image(load_image(path), angle)
    gt = gt @ forward[:, :2].T + forward[:, 2]
    five = np.stack([gt[36:42].mean(0), gt[42:48].mean(0), gt[30], gt[48], gt[54]])
    return image, five, math.sqrt(float(np.prod(np.ptp(gt, axis=0))))


@pytest.mark.parametrize("name", ["image03563", "image02608"])
def test_rolled_aflw_faces_the_fast_search_gets_wrong_are_rechecked(name: str, shared_data: Path) -> None:
    """Two AFLW2000-3D faces turned by -45 degrees, which MTCNN's fast search finds at p < 0.995
    with the five points of an upright face (off by half the face): the recheck on turned copies
    puts them within a tenth of the face of the ground truth's."""
    image, five, size = _turned_aflw_face(shared_data, name, -45.0)

    def error(detector: FaceDetector) -> float:
        (crop,) = detector.crop(image)
        assert crop.landmarks5 is not None
        return float(np.linalg.norm(crop.landmarks5 - five, axis=1).mean()) / size

    without = FaceDetector(device="cpu")
    without.RECHECK_BELOW = 0.0
    assert error(without) > 0.3 and without.last_search == "fast"
    detector = FaceDetector(device="cpu")
    assert error(detector) < 0.1 and detector.last_search == "rechecked"


@pytest.mark.parametrize("name", ["image03563", "image02608"])
def test_prepares_recheck_of_a_full_search_face_corrects_the_same_rolled_faces(name: str, shared_data: Path) -> None:
    """``recheck``, which ``prepare`` applies to the face its full search picks: on the same two
    rolled AFLW2000-3D faces, the full search's five points are off by a third of the face or
    more, the rechecked ones within a tenth, as ``predict``'s."""
    image, five, size = _turned_aflw_face(shared_data, name, -45.0)
    detector = FaceDetector(device="cpu")
    found = detector.detect(image)[0]
    assert found.landmarks5 is not None and found.probability < detector.RECHECK_BELOW
    assert float(np.linalg.norm(found.landmarks5 - five, axis=1).mean()) / size > 0.3
    rechecked = detector.recheck(image, found)
    assert rechecked.landmarks5 is not None and detector.last_search == "rechecked"
    assert float(np.linalg.norm(rechecked.landmarks5 - five, axis=1).mean()) / size < 0.1
    assert FaceDetector(device="cpu", second_chance=False).recheck(image, found) is found


def test_a_confident_face_is_not_rechecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``recheck`` leaves a face at or above ``RECHECK_BELOW`` (or without five points) as it is,
    without searching a turned copy."""
    from facerecon.crop import FaceCrop, square_box

    detector = FaceDetector(device="cpu")
    monkeypatch.setattr(detector, "_rotated_search", lambda *args: pytest.fail("searched a turned copy"))
    box = np.array([10.0, 10.0, 70.0, 80.0], np.float32)
    points = np.array([[30.0, 40.0], [50.0, 40.0], [40.0, 50.0], [32.0, 60.0], [48.0, 60.0]], np.float32)
    image = np.zeros((100, 100, 3), np.uint8)
    for face in (FaceCrop(square_box(box), detector.RECHECK_BELOW, points, box, False), FaceCrop(square_box(box), 0.95, None, box, False)):
        assert detector.recheck(image, face) is face
