"""The Python API (``facerecon.Reconstructor``): the example of docs/api.md runs as written, and a
folder gives the same faces as the photos one by one, in order, with predict's skip policy."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh

from testutils import synthetic_photo

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def rec() -> object:
    from facerecon import Reconstructor

    return Reconstructor(batch_size=3)


def test_the_example_of_the_api_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    (block,) = _python_blocks(ROOT / "docs" / "api.md")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/api.md", "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["first.png", "second.png"]
    for stem in ("first", "second"):
        mesh = trimesh.load(tmp_path / "meshes" / f"{stem}.obj", process=False, force="mesh")
        assert mesh.vertices.shape == (7001, 3) and mesh.faces.shape[1] == 3
        assert (tmp_path / "meshes" / f"{stem}.json").is_file()


def test_a_folder_gives_the_faces_of_each_photo_in_order(rec: object, tmp_path: Path) -> None:
    from importlib import resources

    portrait = Path(str(resources.files("facerecon") / "assets" / "astronaut.png"))
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["a.png", "b_disk.png", "c_broken.png", "d.png"]
    os.link(portrait, folder / names[0])
    synthetic_photo(folder / names[1])  # no face: the average crop
    (folder / names[2]).write_bytes(b"not an image")
    os.link(portrait, folder / names[3])
    outcomes = list(rec.folder(folder))
    assert [o.path.name for o in outcomes] == names
    a, disk, broken, d = outcomes
    assert broken.error is not None and "c_broken.png" in broken.error and broken.faces == []
    assert disk.no_face and disk.faces[0].crop.fallback
    assert not a.no_face and a.error is None and len(a.faces) == 1
    one = rec.image(portrait)[0]
    # the same photo in a batch of three and alone: the same face (batching changes no result)
    np.testing.assert_allclose(a.faces[0].vertices_px, one.vertices_px, atol=1e-3)
    np.testing.assert_allclose(d.faces[0].vertices_px, one.vertices_px, atol=1e-3)
    assert a.faces[0].box == one.box
    # the portrait's face lies inside its box
    x0, y0, side = one.box
    inside = (one.vertices_px[:, 0] > x0) & (one.vertices_px[:, 0] < x0 + side)
    assert inside.mean() > 0.95


def test_require_face_skips_photos_without_a_face(rec: object, tmp_path: Path) -> None:
    photo = synthetic_photo(tmp_path / "disk.png")
    (outcome,) = rec.folder([photo], require_face=True)
    assert outcome.faces == [] and "no face found" in outcome.error


def test_an_array_is_a_photo(rec: object) -> None:
    from importlib import resources

    from facerecon.imageio import load_image

    portrait = Path(str(resources.files("facerecon") / "assets" / "astronaut.png"))
    from_array = rec.image(load_image(portrait))[0]
    from_file = rec.image(portrait)[0]
    np.testing.assert_array_equal(from_array.vertices_px, from_file.vertices_px)


def test_a_folder_without_photos_is_one_clear_error(rec: object, tmp_path: Path) -> None:
    from facerecon.errors import InputError

    with pytest.raises(InputError, match="no images found"):
        rec.folder(tmp_path)
