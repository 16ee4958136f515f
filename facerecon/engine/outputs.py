"""``predict``'s optional outputs of a photo's faces: a textured mesh, a UV texture, depth / PNCC /
normal maps and the dense 2D points in the JSON record (``--texture``, ``--uv-texture``, ``--maps``,
``--dense-points``). The files themselves come from :mod:`facerecon.mesh.texture` and
:mod:`facerecon.mesh.maps`; this module decides what each photo and face gets and where it goes.

Where files go, for the mesh ``<stem>.<ext>`` of face 0 of a photo (faces after the first are
``<stem>_<k>``, as for meshes):

- ``--texture``: the mesh itself is textured (``.obj`` + ``<stem>.mtl`` + ``<stem>.texture.png``, or
  ``.glb`` with the image inside); other mesh formats are refused before anything runs.
- ``--uv-texture PATH``: one photo: the PNG ``PATH``; several: a folder, ``<photo stem>[_k].png``.
- ``--maps``: ``<stem>.depth.png``, ``<stem>.pncc.png``, ``<stem>.normals.png`` per photo, every face
  of the photo in one map; the depth map's scale and offset go into each face's record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from facerecon.errors import InputError

__all__ = ["ExtraOutputs", "FaceExtras", "PhotoExtras", "photo_extras", "uv_target"]


@dataclass(frozen=True)
class ExtraOutputs:
    """What to write beside each face's mesh and record.

    Attributes:
        texture: texture the mesh with its photo (``.obj`` / ``.glb`` only).
        uv_texture: the UV texture's file (one photo) or folder (several), or None.
        maps: map kinds from :data:`facerecon.mesh.maps.MAP_KINDS`.
        dense_points: put every vertex's image px into the JSON record (``dense_points_px``).
        uv_size: texels a side of the UV texture.
    """

    texture: bool = False
    uv_texture: Optional[Path] = None
    maps: tuple[str, ...] = ()
    dense_points: bool = False
    uv_size: int = 256

    @property
    def needs_photo(self) -> bool:
        """Whether writing needs the decoded photo."""
        return self.texture or self.uv_texture is not None

    @property
    def any(self) -> bool:
        return self.texture or self.uv_texture is not None or bool(self.maps) or self.dense_points

    def check(self, mesh_suffix: str) -> None:
        """Refuse, before any model loads, what cannot be written (one line, :class:`InputError`)."""
        from facerecon.mesh.texture import TEXTURE_FORMATS

        if self.texture and mesh_suffix.lower() not in TEXTURE_FORMATS:
            raise InputError(
                f"--texture writes {' or '.join(TEXTURE_FORMATS)} meshes, not {mesh_suffix}: "
                "choose --format obj or glb (or an -o ending in .obj / .glb)"
            )
        if self.uv_texture is not None and self.uv_texture.suffix.lower() not in ("", ".png"):
            raise InputError(f"--uv-texture {self.uv_texture}: a UV texture is a .png (or a folder for several photos)")


@dataclass
class FaceExtras:
    """One face's share: its textured mesh (or None), record fields and files already written."""

    textured: Any = None  # facerecon.mesh.texture.TexturedMesh
    record: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@dataclass
class PhotoExtras:
    """A photo's extra files written so far and each face's :class:`FaceExtras`, in face order."""

    faces: list[FaceExtras]
    files: list[Path]


def uv_target(uv_texture: Optional[Path], single: bool, source: Path, face_index: int) -> Optional[Path]:
    """Where face ``face_index`` of ``source`` puts its UV texture: the file ``uv_texture`` (one
    photo; ``<stem>_<k>.png`` after the first face) or ``uv_texture/<photo stem>[_<k>].png``."""
    if uv_texture is None:
        return None
    tag = "" if face_index == 0 else f"_{face_index}"
    if single:
        return uv_texture if not face_index else uv_texture.with_name(f"{uv_texture.stem}{tag}.png")
    return uv_texture / f"{source.stem}{tag}.png"


class _Topology:
    """The network's template (for the UV layout) and reference face (for PNCC), read once."""

    def __init__(self, network: Any) -> None:
        from facerecon.mesh.templates import load_template
        from facerecon.mesh.texture import uv_layout

        template = load_template(network.template)
        finest = template.levels[-1]
        self.layout = uv_layout(finest.vertices, template.boundary)
        reference = network.reference_face()  # model v2: the mean face of its prior
        if reference is None:
            reference = finest.vertices.astype(np.float64)  # model v1: the template it deforms
        self.reference = np.asarray(reference, dtype=np.float64)


_TOPOLOGY: dict[int, _Topology] = {}


def _topology(network: Any) -> _Topology:
    config = getattr(network, "config", None)
    if config is not None and config.model.kind == "facevision":  # a mesh of its own per face: no fixed layout
        raise InputError("--uv-texture and the pncc map need a template family's fixed topology; a FaceVision-GAN "
                         "mesh has its own per face (its depth map and --texture work)")
    key = id(network)
    if key not in _TOPOLOGY:
        _TOPOLOGY.clear()  # one model per process
        _TOPOLOGY[key] = _Topology(network)
    return _TOPOLOGY[key]


def _photo(image: Optional[np.ndarray]) -> np.ndarray:
    """The photo a texture is cut from (callers pass it whenever they ask for textures)."""
    if image is None:
        raise InputError("textures need the photo")
    return image


def photo_extras(
    model: Any, results: Sequence[Any], image: Optional[np.ndarray], mesh_paths: Sequence[Path],
    uv_paths: Sequence[Optional[Path]], extras: ExtraOutputs,
) -> PhotoExtras:
    """Write a photo's maps and UV textures, and texture its meshes (written later with the mesh).

    Args:
        model: the network runner that made ``results`` (:class:`~facerecon.engine.results.NetworkRunner`).
        results: the photo's :class:`~facerecon.engine.results.FaceResult` s, face 0 first.
        image: the photo ``(H, W, 3)`` uint8 (needed for textures).
        mesh_paths: each face's mesh path; face 0's stem names the maps.
        uv_paths: each face's UV texture path (None without ``--uv-texture``).
        extras: what to write.
    """
    from facerecon.mesh.texture import save_uv_texture, texture_from_photo, texture_path, uv_texture
    from facerecon.render import project

    faces = [FaceExtras() for _ in results]
    files: list[Path] = []
    if extras.maps and results:
        files += _write_maps(model, results, mesh_paths[0], faces, extras)
    for result, face, uv_path in zip(results, faces, uv_paths):
        if extras.texture:
            face.textured = texture_from_photo(_photo(image), result.vertices_px, result.faces)
        if uv_path is not None:
            tex = uv_texture(_photo(image), result.vertices_px, result.faces, _topology(model).layout, size=extras.uv_size)
            face.files += save_uv_texture(uv_path, tex, durable=False)
            face.record["uv_texture"] = uv_path.name
        if extras.dense_points:
            face.record["dense_points_px"] = np.round(project(result.vertices_px), 2).tolist()
        files += face.files
    for face, mesh_path in zip(faces, mesh_paths):
        if face.textured is not None and mesh_path.suffix.lower() == ".obj":
            face.record["texture"] = texture_path(mesh_path).name
    return PhotoExtras(faces=faces, files=files)


def _write_maps(model: Any, results: Sequence[Any], stem_mesh: Path, faces: list[FaceExtras], extras: ExtraOutputs) -> list[Path]:
    """Every face of the photo into one map of each kind; the names (and the depth encoding) go
    into every face's record."""
    from facerecon.mesh.maps import map_path, render_maps, save_map

    width, height = results[0].image_size
    reference = _topology(model).reference if "pncc" in extras.maps else None
    maps, encoding = render_maps(
        [r.vertices_px for r in results], results[0].faces, (height, width), extras.maps, pncc_reference=reference
    )
    stem = stem_mesh.with_suffix("")
    written = [save_map(map_path(stem, kind), picture, durable=False) for kind, picture in maps.items()]
    fields: dict[str, Any] = {"maps": {kind: path.name for kind, path in zip(maps, written)}}
    if encoding is not None:
        fields["depth_scale_px"] = encoding.scale
        fields["depth_offset_px"] = encoding.offset
    for face in faces:
        face.record.update(fields)
    return written
