"""Depth, PNCC and normal maps of known meshes against hand-worked values at sample pixels, and the
files they are written to (read back with OpenCV)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("moderngl")

from facerecon.errors import InputError
from facerecon.mesh.maps import DepthEncoding, encode_depth, map_path, parse_map_kinds, render_maps, save_map

# A tilted rectangle x in [10, 50], y in [20, 40] with z = 100 + (x - 10) / 2 in a 60 x 80 photo;
# wound counter-clockwise on the screen, so its normal (1, 0, -2) / sqrt 5 faces the camera.
QUAD = np.array([[10.0, 20.0, 100.0], [10.0, 40.0, 100.0], [50.0, 40.0, 120.0], [50.0, 20.0, 120.0]])
QUAD_F = np.array([[0, 1, 2], [0, 2, 3]])


def test_depth_map_by_hand() -> None:
    maps, enc = render_maps([QUAD], QUAD_F, (60, 80), ["depth"])
    d = maps["depth"]
    assert d.dtype == np.uint16 and d.shape == (60, 80)
    assert (d[:20] == 0).all() and (d[:, :10] == 0).all() and (d[40:] == 0).all() and (d[:, 50:] == 0).all()
    assert (d[20:40, 10:50] > 0).all()
    # pixel (25, 20): centre x = 20.5, z = 105.25; nearer is brighter: the left column is the maximum
    assert enc.decode(d)[25, 20] == pytest.approx(105.25, abs=2 * enc.scale)
    assert d[30, 10] == 65535 and d[30, 49] == 1
    assert enc.decode(d)[30, 49] == pytest.approx(100 + (49.5 - 10) / 2, abs=enc.scale)
    assert np.isnan(enc.decode(d)[0, 0])


def test_pncc_and_normal_maps_by_hand() -> None:
    # the reference face is the rectangle itself: codes ((x - 10) / 40, (y - 20) / 20, (z - 100) / 20)
    maps, _ = render_maps([QUAD], QUAD_F, (60, 80), ["pncc", "normals"], pncc_reference=QUAD)
    assert list(maps) == ["pncc", "normals"]
    x, y = 20.5, 25.5
    code = [(x - 10) / 40, (y - 20) / 20, ((100 + (x - 10) / 2) - 100) / 20]
    np.testing.assert_allclose(maps["pncc"][25, 20], np.rint(np.array(code) * 255), atol=1)
    assert (maps["pncc"][0, 0] == 0).all()
    # normal (1, 0, -2) / sqrt 5 in the image frame -> (x right, y up, z to the camera): (1, 0, 2) / sqrt 5
    n = np.array([1.0, 0.0, 2.0]) / np.sqrt(5)
    np.testing.assert_allclose(maps["normals"][30, 30], (n + 1) / 2 * 255, atol=1)


def test_two_faces_share_one_map_and_the_nearer_wins() -> None:
    behind = QUAD + [10.0, 0.0, 50.0]  # overlaps x in [20, 50], 50 px farther
    maps, enc = render_maps([QUAD, behind], QUAD_F, (60, 80), ["depth"])
    z = enc.decode(maps["depth"])
    assert z[30, 30] == pytest.approx(100 + (30.5 - 10) / 2, abs=2 * enc.scale)  # the near one
    assert z[30, 55] == pytest.approx(150 + (55.5 - 20) / 2, abs=2 * enc.scale)  # only the far one


def test_maps_are_written_as_png_and_read_back(tmp_path) -> None:
    cv2 = pytest.importorskip("cv2")
    maps, _ = render_maps([QUAD], QUAD_F, (60, 80), ["depth", "pncc"], pncc_reference=QUAD)
    depth_path = save_map(map_path(tmp_path / "photo", "depth"), maps["depth"])
    assert depth_path.name == "photo.depth.png"
    back = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and (back == maps["depth"]).all()
    rgb = cv2.imread(str(save_map(map_path(tmp_path / "photo", "pncc"), maps["pncc"])), cv2.IMREAD_UNCHANGED)
    assert (rgb[..., ::-1] == maps["pncc"]).all()


def test_encode_depth_uses_the_whole_range() -> None:
    depth = np.array([[np.inf, 3.0], [5.0, 4.0]])
    values, enc = encode_depth(depth)
    assert values.tolist() == [[0, 65535], [1, 32768]]
    assert isinstance(enc, DepthEncoding)
    np.testing.assert_allclose(enc.decode(values)[1], [5.0, 4.0], atol=enc.scale)
    assert encode_depth(np.full((2, 2), np.inf))[1] is None


@pytest.mark.parametrize("text", ["depth,colour", "", "pncc, nope"])
def test_unknown_map_names_are_one_input_error(text: str) -> None:
    with pytest.raises(InputError, match="choose from depth, pncc, normals"):
        parse_map_kinds(text)


def test_pncc_needs_a_reference() -> None:
    with pytest.raises(InputError, match="reference face"):
        render_maps([QUAD], QUAD_F, (60, 80), ["pncc"])
