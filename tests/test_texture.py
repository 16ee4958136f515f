"""Textured meshes and UV textures of synthetic faces: the files load in trimesh and Open3D with the
photo's colours at the vertices, a known texture comes back through the fixed layout, and what a
turned face hides is marked (checked against the analytic surface normals of the shapes)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("moderngl")

from facerecon.errors import InputError
from facerecon.mesh.templates import load_template
from facerecon.mesh.texture import (
    OCCLUDED_COLOR,
    save_textured_mesh,
    save_uv_texture,
    texture_from_photo,
    uv_layout,
    uv_texture,
)
from facerecon.render import render

H, W = 300, 400
CENTRE = np.array([200.25, 150.25, 0.0])  # no vertex on a pixel boundary


@pytest.fixture(scope="module")
def hemisphere():
    t = load_template("hemisphere")
    return t, t.levels[-1].vertices.astype(np.float64), t.levels[-1].faces


@pytest.fixture(scope="module")
def noise_photo() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _frontal(template_vertices: np.ndarray) -> np.ndarray:
    """The hemisphere as a face in the photo: 200 x 220 px, dome towards the camera."""
    return template_vertices * [100.0, 110.0, 90.0] + CENTRE


def _colour_check(vertices: np.ndarray, uv: np.ndarray, image: np.ndarray, photo: np.ndarray, flipped_image: bool) -> int:
    """Largest colour difference between the texel under each non-band uv and the photo pixel under its vertex.

    ``uv`` has its origin at the bottom-left (v up); ``flipped_image``: the loader stored the image
    bottom row first (Open3D) instead of top row first (trimesh, the PNG itself).
    """
    img = np.asarray(image)[..., :3]
    th, tw = img.shape[:2]
    band = uv[:, 1] * th < 8  # the occluded band below the photo crop
    assert (~band).sum() > 1000
    col = np.clip(np.floor(uv[:, 0] * tw), 0, tw - 1).astype(int)
    row_up = np.clip(np.floor(uv[:, 1] * th), 0, th - 1).astype(int)
    row = row_up if flipped_image else th - 1 - row_up
    got = img[row, col].astype(int)
    want = photo[np.floor(vertices[:, 1]).astype(int), np.floor(vertices[:, 0]).astype(int)].astype(int)
    assert (img[row[band], col[band]] == OCCLUDED_COLOR).all()
    return int(np.abs(got - want)[~band].max())


def test_textured_obj_loads_in_trimesh_and_open3d(tmp_path, hemisphere, noise_photo) -> None:
    trimesh = pytest.importorskip("trimesh")
    o3d = pytest.importorskip("open3d")
    _, tv, faces = hemisphere
    written = save_textured_mesh(tmp_path / "face.obj", texture_from_photo(noise_photo, _frontal(tv), faces))
    assert [p.name for p in written] == ["face.obj", "face.mtl", "face.texture.png"]
    loaded = trimesh.load(tmp_path / "face.obj", process=False)
    uv = np.asarray(loaded.visual.uv)
    assert uv.min() >= 0 and uv.max() <= 1
    assert _colour_check(loaded.vertices, uv, loaded.visual.material.image, noise_photo, False) <= 2
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path))
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "face.obj"), True)
    assert mesh.has_textures() and len(mesh.triangles) == len(faces)
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.triangles).reshape(-1)]
    assert _colour_check(corners, np.asarray(mesh.triangle_uvs), mesh.textures[0], noise_photo, True) <= 2


def test_textured_glb_loads_in_trimesh_and_open3d(tmp_path, hemisphere, noise_photo) -> None:
    trimesh = pytest.importorskip("trimesh")
    o3d = pytest.importorskip("open3d")
    _, tv, faces = hemisphere
    assert save_textured_mesh(tmp_path / "face.glb", texture_from_photo(noise_photo, _frontal(tv), faces)) == [tmp_path / "face.glb"]
    scene = trimesh.load(tmp_path / "face.glb")
    (geom,) = scene.geometry.values()
    uv = np.asarray(geom.visual.uv)
    assert uv.min() >= 0 and uv.max() <= 1 and len(geom.faces) == len(faces)
    image = geom.visual.material.baseColorTexture
    assert _colour_check(geom.vertices, uv, image, noise_photo, False) <= 2
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path))
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "face.glb"), True)
    assert mesh.has_textures()
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.triangles).reshape(-1)]
    assert _colour_check(corners, np.asarray(mesh.triangle_uvs), mesh.textures[0], noise_photo, True) <= 2


def test_texture_needs_obj_or_glb(tmp_path, hemisphere, noise_photo) -> None:
    _, tv, faces = hemisphere
    textured = texture_from_photo(noise_photo, _frontal(tv), faces)
    with pytest.raises(InputError, match=r"\.obj or \.glb, not '\.stl'"):
        save_textured_mesh(tmp_path / "face.stl", textured)


def test_textured_obj_is_all_or_nothing(tmp_path, hemisphere, noise_photo) -> None:
    """When the .obj cannot be written (a folder is in its place), its image and .mtl are removed."""
    _, tv, faces = hemisphere
    (tmp_path / "face.obj").mkdir()
    with pytest.raises((InputError, OSError)):
        save_textured_mesh(tmp_path / "face.obj", texture_from_photo(noise_photo, _frontal(tv), faces))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.obj"]


def _ellipsoid_turned(yaw_deg: float):
    """The ellipsoid template (a closed, nearly convex shape) 500x its size, turned about the vertical
    axis and centred in the photo; with the z of its face normals (trimesh; < 0: towards the camera)."""
    trimesh = pytest.importorskip("trimesh")
    t = load_template("ellipsoid")
    tv = t.levels[-1].vertices.astype(np.float64)
    faces = t.levels[-1].faces
    v = Rotation.from_euler("y", yaw_deg, degrees=True).apply((tv - [0.0, 0.0, 0.8]) * 500.0) + CENTRE
    return tv, faces, v, trimesh.Trimesh(v, faces, process=False).face_normals[:, 2]


def test_turned_face_marks_the_hidden_side(noise_photo) -> None:
    """On a convex shape a face is seen exactly when it faces the camera; the template's ellipsoid is
    convex up to a few percent, so faces within 0.2 of edge-on (the silhouette) may go either way."""
    _, faces, v, face_z = _ellipsoid_turned(60.0)
    textured = texture_from_photo(noise_photo, v, faces)
    assert not textured.visible[face_z > 0.2].any()
    assert textured.visible[face_z < -0.1].all()
    assert 0.4 < textured.visible.mean() < 0.6


def _known_texture(uv: np.ndarray) -> np.ndarray:
    """A smooth colour pattern over the layout: red = u, green = v, blue a slow wave."""
    u, v = uv[..., 0], uv[..., 1]
    rgb = np.stack([255 * u, 255 * v, 127.5 + 100 * np.sin(2 * np.pi * (u + v))], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_uv_texture_of_a_rendered_face_matches_its_texture(tmp_path, hemisphere, noise_photo) -> None:
    template, tv, faces = hemisphere
    layout = uv_layout(tv, template.boundary)
    v = _frontal(tv)
    shot = render(v, faces, (H, W), {"uv": layout})
    photo = np.where(shot.mask[..., None], _known_texture(shot.attributes["uv"]), noise_photo)
    size = 128
    tex = uv_texture(photo, v, faces, layout, size=size)
    centres = (np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1) + 0.5) / size
    inner = np.linalg.norm(centres - 0.5, axis=-1) < 0.4  # up to 72 degrees from the pole
    assert tex.covered[inner].all() and tex.mask[inner].mean() > 0.99
    diff = np.abs(tex.image.astype(int) - _known_texture(centres).astype(int))[inner & tex.mask]
    assert np.percentile(diff, 99) <= 3 and diff.mean() < 1.0
    assert not tex.covered[np.linalg.norm(centres - 0.5, axis=-1) > 0.51].any()
    (written,) = save_uv_texture(tmp_path / "uv.png", tex)
    from PIL import Image

    rgba = np.asarray(Image.open(written))
    assert rgba.shape == (size, size, 4) and ((rgba[..., 3] == 255) == tex.mask).all()


def test_uv_texture_masks_texels_a_turned_face_hides(noise_photo) -> None:
    """Texels on faces turned away (beyond the silhouette band of the nearly convex ellipsoid) are
    masked; texels on faces towards the camera are seen."""
    from facerecon.mesh.texture import layout_raster

    tv, faces, v, face_z = _ellipsoid_turned(60.0)
    layout = uv_layout(tv)
    tex = uv_texture(noise_photo, v, faces, layout, size=96)
    texels = layout_raster(layout, faces, 96)
    texel_z = face_z[texels.triangle[texels.mask]]
    seen = tex.mask[texels.mask]
    assert (texel_z > 0.4).sum() > 1000 and not seen[texel_z > 0.4].any()
    assert seen[texel_z < -0.1].mean() > 0.995
    assert (tex.image[~tex.mask] == 0).all()


def test_uv_layout_of_the_hemisphere_by_hand(hemisphere) -> None:
    """Azimuthal equidistant about the pole: a point theta from the pole at radius 0.5 theta / 90 deg."""
    template, tv, _ = hemisphere
    layout = uv_layout(tv, template.boundary)
    theta = np.arccos(np.clip(-tv[:, 2] / np.linalg.norm(tv, axis=1), -1, 1))
    np.testing.assert_allclose(np.linalg.norm(layout - 0.5, axis=1), 0.5 * theta / (np.pi / 2), atol=1e-6)
    right, below = tv[:, 0] > 0.1, tv[:, 1] > 0.1
    assert (layout[right, 0] > 0.5).all() and (layout[below, 1] > 0.5).all()
    assert layout.min() >= 0 and layout.max() <= 1
