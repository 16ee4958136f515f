"""facerecon.mtcnn and the tuned FaceDetector against facenet-pytorch itself, the reference.

* the three networks give facenet-pytorch's outputs; the area resampling is torch's
  ``interpolate(mode="area")``; NMS keeps what hand-worked boxes say;
* on every shared photo and the first AFLW2000-3D images (``FACERECON_DETECT_IMAGES``, default
  200; all with ``0``): the full search finds every face facenet-pytorch's MTCNN finds (as
  ``FaceDetector`` ran it before: the 1024-px copy, thresholds 0.6/0.7/0.7, 20 px, p >= 0.9)
  with IoU >= 0.9, and the most-confident-face search (fast path + second chance) returns the
  reference's most confident face with IoU >= 0.9 wherever the reference found one;
* a face found only by the second chance lies on the AFLW2000-3D ground-truth landmarks.

Skips cleanly without ../shared/data or facenet-pytorch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facerecon.detect import FaceDetector
from facerecon.errors import InputError
from facerecon.mtcnn import _area_resample, _integral, load_nets, nms
from testutils import box_iou

cv2 = pytest.importorskip("cv2")


_iou = box_iou


# ---- building blocks --------------------------------------------------------------------------


def test_networks_equal_facenet_pytorch() -> None:
    facenet = pytest.importorskip("facenet_pytorch")
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    ours = load_nets("cpu")
    torch.manual_seed(0)
    with torch.inference_mode():
        for ref, net, shape in ((PNet(), ours.pnet, (2, 3, 37, 53)), (RNet(), ours.rnet, (7, 3, 24, 24)), (ONet(), ours.onet, (5, 3, 48, 48))):
            x = torch.rand(shape) * 2 - 1
            for a, b in zip(ref.eval()(x), net(x)):
                torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)
    assert facenet is not None


def test_pnet_on_a_mosaic_of_levels_equals_facenet_pytorch_per_level() -> None:
    """The pyramid packed into one mosaic (odd and even level sizes, the smallest P-Net takes):
    each level's slice of the output is facenet-pytorch's P-Net run on that level alone."""
    pytest.importorskip("facenet_pytorch")
    from facenet_pytorch.models.mtcnn import PNet

    from facerecon.mtcnn import pack_levels

    sizes = [(118, 89), (84, 63), (60, 45), (43, 32), (30, 23), (22, 16), (13, 12), (12, 12)]
    mosaic = pack_levels(sizes)
    boxes = [(oy, ox, oy + h, ox + w) for (oy, ox), (h, w) in zip(mosaic.offsets, sizes)]
    for k, (y0, x0, y1, x1) in enumerate(boxes):  # inside the mosaic, even offsets, no overlaps
        assert y0 % 2 == 0 and x0 % 2 == 0 and y1 <= mosaic.shape[0] and x1 <= mosaic.shape[1]
        for a0, b0, a1, b1 in boxes[:k]:
            assert y1 <= a0 or a1 <= y0 or x1 <= b0 or b1 <= x0
    assert mosaic.shape[0] * mosaic.shape[1] < 1.5 * sum(h * w for h, w in sizes)
    torch.manual_seed(0)
    levels = [torch.rand(1, 3, h, w) * 2 - 1 for h, w in sizes]
    canvas = torch.rand(1, 3, *mosaic.shape) * 2 - 1  # whatever lies between the levels
    for (oy, ox), (h, w), level in zip(mosaic.offsets, sizes, levels):
        canvas[..., oy : oy + h, ox : ox + w] = level
    ref = PNet().eval()
    with torch.inference_mode():
        reg, prob = load_nets("cpu").pnet(canvas, mosaic.outside)
        for (oy, ox), level in zip(mosaic.offsets, levels):
            ref_reg, ref_prob = ref(level)
            rows, cols = ref_prob.shape[2:]
            window = (..., slice(oy // 2, oy // 2 + rows), slice(ox // 2, ox // 2 + cols))
            torch.testing.assert_close(reg[window], ref_reg, atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(prob[window], ref_prob, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(("size", "region", "out"), [((37, 53), (3, 5, 30, 41), (24, 24)), ((37, 53), (0, 0, 37, 53), (27, 39)), ((20, 20), (2, 4, 9, 7), (24, 24))])
def test_area_resample_is_torch_area_interpolation(size, region, out) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    y0, x0, h, w = region
    ours = _area_resample(_integral(image), np.array([y0]), np.array([x0]), np.array([h]), np.array([w]), *out)[0]
    tensor = torch.from_numpy(image[y0 : y0 + h, x0 : x0 + w].astype(np.float32)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(tensor, size=out, mode="area")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    # several regions at once give the same as one at a time
    two = _area_resample(_integral(image), np.array([y0, 0]), np.array([x0, 0]), np.array([h, 5]), np.array([w, 6]), *out)
    np.testing.assert_allclose(two[0], ours, atol=1e-5)


@pytest.mark.parametrize("size", [(61, 47), (120, 90)])
def test_pyramid_canvas_is_torch_area_interpolation_per_level(size) -> None:
    """P-Net's mosaic: every level is torch's ``interpolate(mode="area")`` of the image at the
    level's size, MTCNN-normalised, in its place; 0 between the levels."""
    from facerecon.mtcnn_cascade import pyramid_plan

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    plan = pyramid_plan(*size, min_face=20.0)
    assert plan is not None and len(plan.scales) >= 3
    canvas = plan.canvas(_integral(image))[0]
    tensor = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    covered = np.zeros(canvas.shape[:2], bool)
    for (oy, ox), scale in zip(plan.mosaic.offsets, plan.scales):
        hs, ws = int(size[0] * float(scale) + 1), int(size[1] * float(scale) + 1)
        ref = torch.nn.functional.interpolate(tensor, size=(hs, ws), mode="area")[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(canvas[oy : oy + hs, ox : ox + ws], (ref - 127.5) / 128.0, rtol=0, atol=1e-6)
        covered[oy : oy + hs, ox : ox + ws] = True
    assert not canvas[~covered].any()


def test_nms_hand_values() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(3, 0) = 0.5; IoU(3, 1) = 36 / 114
    assert nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    assert nms(boxes, scores, 0.6).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.45).tolist() == [3, 1, 2]
    # "min": overlap over the smaller area, +1 px sizes: box 3 lies inside box 0 (overlap 1) and
    # 50 / 66 = 0.76 of it inside box 1
    assert nms(boxes, scores, 0.7, method="min").tolist() == [3, 2]
    assert nms(boxes, scores, 0.8, method="min").tolist() == [3, 1, 2]


@pytest.mark.parametrize("count", [1, 37, 300, 700])
def test_nms_equals_torchvision_and_facenet_pytorch(count: int) -> None:
    """Random boxes on a coarse grid (many equal scores and overlaps at the threshold): "union"
    keeps torchvision's ``nms`` boxes in its order, "min" facenet-pytorch's ``nms_numpy``'s."""
    tv_ops = pytest.importorskip("torchvision.ops")
    pytest.importorskip("facenet_pytorch")
    from facenet_pytorch.models.utils.detect_face import nms_numpy

    rng = np.random.default_rng(count)
    corner = rng.integers(0, 80, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.integers(4, 30, (count, 2))], axis=1).astype(np.float32)
    scores = (rng.integers(0, 6, count) / 5).astype(np.float32)
    for threshold in (0.5, 0.7):
        ref = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        assert nms(boxes, scores, threshold).tolist() == ref.tolist()
        ref_min = nms_numpy(boxes.copy(), scores.copy(), threshold, "Min")
        assert nms(boxes, scores, threshold, method="min").tolist() == np.asarray(ref_min).tolist()


@pytest.mark.parametrize("count", [40, 700])
def test_nms_with_groups_equals_torchvision_batched_nms(count: int) -> None:
    """Groups (P-Net's pyramid levels): torchvision's ``batched_nms`` keeps the same boxes, and
    each group's kept boxes, in order, are ``nms`` of that group alone."""
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(count + 1)
    corner = rng.integers(0, 60, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.integers(4, 30, (count, 2))], axis=1).astype(np.float32)
    scores = (rng.integers(0, 6, count) / 5).astype(np.float32)
    groups = rng.integers(0, 5, count)
    kept = nms(boxes, scores, 0.5, groups=groups)
    ref = tv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.5).numpy()
    assert sorted(kept.tolist()) == sorted(ref.tolist())
    for g in range(5):
        members = np.flatnonzero(groups == g)
        alone = members[nms(boxes[members], scores[members], 0.5)]
        assert [k for k in kept.tolist() if groups[k] == g] == alone.tolist()


@pytest.mark.parametrize(("height", "width", "min_face"), [(551, 413, 41.3), (300, 640, 20.0), (97, 61, 20.0)])
def test_pyramid_plan_equals_facenet_pytorch_level_by_level(height: int, width: int, min_face: float) -> None:
    """The plan's mosaic holds each level as torch's ``interpolate(mode="area")`` of the image,
    MTCNN-normalised (to float32 rounding: torch sums in floating point, the plan in integers);
    its candidates are facenet-pytorch's ``generateBoundingBox``
    and per-level NMS (torchvision's, 0.5) on each level's slice of P-Net's output, level after
    level, bit for bit."""
    pytest.importorskip("facenet_pytorch")
    tv_ops = pytest.importorskip("torchvision.ops")
    from facenet_pytorch.models.utils.detect_face import generateBoundingBox

    from facerecon.mtcnn import pyramid_plan, pyramid_scales

    rng = np.random.default_rng(height)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    plan = pyramid_plan(height, width, min_face)
    scales = pyramid_scales(height, width, min_face)
    assert plan is not None and plan.scales.tolist() == np.float32(scales).tolist()
    canvas = plan.canvas(_integral(image))
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    sizes = [(int(height * s + 1), int(width * s + 1)) for s in scales]
    for (oy, ox), (hs, ws) in zip(plan.mosaic.offsets, sizes):
        level = torch.nn.functional.interpolate(pixels, size=(hs, ws), mode="area")
        level = ((level - 127.5) * 0.0078125)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(canvas[0, oy : oy + hs, ox : ox + ws], level, rtol=0, atol=2.5e-7)
    # P-Net on a random mosaic: our candidates against facenet-pytorch's per level
    torch.manual_seed(0)
    with torch.inference_mode():
        reg, prob = load_nets("cpu").pnet(torch.from_numpy(canvas).permute(0, 3, 1, 2), plan.mosaic.outside)
    threshold = float(np.quantile(prob[0, 1].numpy(), 0.9))  # a random image: enough boxes to suppress
    ours = plan.candidates(reg[0].numpy(), prob[0, 1].numpy(), threshold)
    expected = []
    for scale, (oy, ox), (hs, ws) in zip(scales, plan.mosaic.offsets, sizes):
        rows, cols = (hs - 1) // 2 - 4, (ws - 1) // 2 - 4
        window = (slice(None), slice(None), slice(oy // 2, oy // 2 + rows), slice(ox // 2, ox // 2 + cols))
        boxes, _ = generateBoundingBox(reg[window], prob[window][:, 1], scale, threshold)
        keep = tv_ops.nms(boxes[:, :4], boxes[:, 4], 0.5)
        expected.append(boxes[keep].numpy())
    expected = np.concatenate(expected)
    assert len(ours) > 20
    np.testing.assert_array_equal(ours, expected)


def test_warm_up_leaves_results_alone_and_plans_the_size(shared_data: Path) -> None:
    from facerecon import mtcnn
    from facerecon.imageio import image_size, load_image

    path = shared_data / "photos" / "JianzhuGuo.jpg"
    if not path.is_file():
        pytest.skip("no shared photo")
    image = load_image(path)
    cold = FaceDetector().crop(image)
    mtcnn._PLANS.clear()
    detector = FaceDetector()
    detector.warm_up(image_size(path))
    detector.finish_warm_up()
    h, w = image.shape[:2]
    assert (h, w, 0.1 * min(h, w), mtcnn.DEFAULT_FACTOR, 20.0) in mtcnn._PLANS  # the fast search's plan, made ahead
    warm = detector.crop(image)
    assert [c.to_dict() for c in warm] == [c.to_dict() for c in cold]


# ---- against facenet-pytorch on real photos ----------------------------------------------------


def _images(shared_data: Path) -> list[Path]:
    photos = sorted(p for p in (shared_data / "photos").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    limit = int(os.environ.get("FACERECON_DETECT_IMAGES", "200"))
    aflw = sorted((shared_data / "aflw2000-3d").glob("*.jpg"))
    aflw = aflw if limit == 0 else aflw[:limit]
    if not photos and not aflw:
        pytest.skip("no shared photos or AFLW2000-3D images")
    return photos + aflw


def _reference_faces(mtcnn, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """facenet-pytorch's MTCNN as FaceDetector ran it before: 1024-px copy, p >= 0.9, best first."""
    h, w = image.shape[:2]
    sx = sy = 1.0
    if max(h, w) > 1024:
        s = 1024 / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / w, nh / h
    with torch.inference_mode():
        boxes, probs = mtcnn.detect(np.ascontiguousarray(image[None]))
    if boxes[0] is None:
        return []
    boxes = np.asarray(boxes[0]).astype(np.float64).reshape(-1, 4) / [sx, sy, sx, sy]
    probs = np.asarray(probs[0]).astype(np.float64).reshape(-1)
    order = np.argsort(-probs, kind="stable")
    return [(boxes[i], float(probs[i])) for i in order if probs[i] >= 0.9]


def _ground_truth_landmarks(path: Path) -> np.ndarray | None:
    mat = path.with_suffix(".mat")
    if not mat.is_file():
        return None
    from scipy.io import loadmat

    return np.asarray(loadmat(mat)["pt3d_68"], dtype=np.float64)[:2].T  # (68, 2) image px


def test_boxes_equal_facenet_pytorch(shared_data: Path) -> None:
    facenet = pytest.importorskip("facenet_pytorch")
    from facerecon.imageio import load_image

    reference = facenet.MTCNN(keep_all=True, device="cpu", select_largest=False, post_process=False, thresholds=[0.6, 0.7, 0.7], min_face_size=20).eval()
    detector = FaceDetector(device="cpu", smallest_face=20)  # facenet-pytorch's whole pyramid
    problems, found_by_second_chance, checked = [], [], 0
    for path in _images(shared_data):
        image = load_image(path)
        ref = _reference_faces(reference, image)
        ours_all = detector.detect(image)
        for k, (box, p) in enumerate(ref):  # every face found today, found again, same box
            best = max((_iou(box, f.detection) for f in ours_all), default=0.0)
            if best < 0.9:
                problems.append(f"{path.name}: face {k} (p {p:.3f}) best IoU {best:.3f} in the full search")
        (crop,) = detector.crop(image)
        if ref:
            if crop.fallback:
                problems.append(f"{path.name}: the most confident face was lost")
            elif _iou(ref[0][0], crop.detection) < 0.9:
                problems.append(f"{path.name}: most confident face IoU {_iou(ref[0][0], crop.detection):.3f}")
        elif not crop.fallback:
            found_by_second_chance.append((path, crop, detector.last_search))
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 1
    # faces that only the second chance finds are real: on AFLW2000-3D their box holds the
    # ground-truth landmarks' centre and has about the face's size
    for path, crop, how in found_by_second_chance:
        assert how in ("low-thresholds", "equalised", "rotated", "full"), (path.name, how)
        gt = _ground_truth_landmarks(path)
        if gt is None:
            continue
        x0, y0, side = crop.box
        centre = gt.mean(axis=0)
        extent = np.ptp(gt, axis=0).max()
        assert x0 < centre[0] < x0 + side and y0 < centre[1] < y0 + side, (path.name, crop.box, centre)
        assert 0.6 * extent < side < 3.0 * extent, (path.name, side, extent)


def test_second_chance_on_a_rolled_face(shared_data: Path) -> None:
    """A face rolled by 75 degrees: the fast search misses it, a rotated copy finds it, and the
    landmarks come back onto the rolled face (they match the upright detection, rotated, to
    MTCNN's accuracy at 30 degrees of residual roll; a wrong mapping would be off by the face)."""
    from facerecon.imageio import load_image

    path = shared_data / "photos" / "JianzhuGuo.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = load_image(path)
    detector = FaceDetector(device="cpu")
    (upright,) = detector.crop(image)
    h, w = image.shape[:2]
    side = int(np.ceil(np.hypot(h, w)))
    canvas = np.zeros((side, side, 3), np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = image
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), 75, 1.0)
    rolled = cv2.warpAffine(canvas, rot, (side, side))
    (crop,) = detector.crop(rolled)
    assert not crop.fallback and detector.last_search == "rotated"
    assert detector.detect(rolled) == []  # the full search alone (what prepare runs first) misses it
    (again,) = detector.detect_second_chance(rolled)[:1]  # prepare's second chance finds the same face
    assert detector.last_search == "rotated"
    np.testing.assert_allclose(again.box, crop.box, atol=1e-3)
    expected = (upright.landmarks5 + [ox, oy]) @ rot[:, :2].T + rot[:, 2]
    err = np.linalg.norm(crop.landmarks5 - expected, axis=1)
    eye_dist = np.linalg.norm(expected[1] - expected[0])
    assert err.max() < 0.4 * eye_dist, err
    centre = np.array([crop.box[0], crop.box[1]]) + crop.box[2] / 2
    assert np.linalg.norm(centre - expected.mean(axis=0)) < 0.5 * eye_dist


def test_small_face_is_found_by_the_second_chance() -> None:
    """A face under 10 % of the shorter side: the fast search skips its pyramid levels, the full
    search of the second chance finds it, with the box the full search gives."""
    from PIL import Image

    astronaut = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png").convert("RGB"))
    canvas = np.full((900, 1000, 3), 100, np.uint8)
    small = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)  # the face: ~45 px of 900
    canvas[600:760, 700:860] = small
    detector = FaceDetector(device="cpu")
    full = FaceDetector(device="cpu", smallest_face=20).detect(canvas)  # the second chance's whole pyramid
    assert len(full) == 1, [f.probability for f in full]
    side = full[0].detection[2] - full[0].detection[0]
    assert side < 0.1 * 900  # below the fast search's smallest face
    (crop,) = detector.crop(canvas)
    assert not crop.fallback and detector.last_search == "full"
    np.testing.assert_allclose(crop.detection, full[0].detection, atol=1e-3)
    # the face lies where it was pasted
    cx, cy = crop.box[0] + crop.box[2] / 2, crop.box[1] + crop.box[2] / 2
    assert 700 < cx < 860 and 600 < cy < 760


def test_every_face_search_skips_faces_below_the_smallest_face_and_keeps_the_others_boxes() -> None:
    """Two faces pasted on one canvas, ~16 and ~70 px: the whole pyramid (``smallest_face=20``)
    finds both; the default every-face search (32 px) finds the large one with the same box and
    probability, and not the small one; the most-confident-face policy is not affected."""
    from PIL import Image

    astronaut = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png").convert("RGB"))
    canvas = np.full((700, 1000, 3), 100, np.uint8)
    canvas[100:500, 80:480] = cv2.resize(astronaut, (400, 400), interpolation=cv2.INTER_AREA)
    canvas[400:500, 700:800] = cv2.resize(astronaut, (100, 100), interpolation=cv2.INTER_AREA)
    whole = FaceDetector(device="cpu", smallest_face=20).detect(canvas)
    default = FaceDetector(device="cpu").detect(canvas)
    sides = sorted(f.detection[2] - f.detection[0] for f in whole)
    assert len(whole) == 2 and sides[0] < 24 and sides[1] > 60, sides
    assert len(default) == 1 and default[0].detection[2] - default[0].detection[0] > 60
    (big,) = [f for f in whole if f.detection[2] - f.detection[0] > 60]
    np.testing.assert_array_equal(default[0].detection, big.detection)
    assert default[0].probability == big.probability
    with pytest.raises(InputError, match="smallest face"):
        FaceDetector(smallest_face=8)
