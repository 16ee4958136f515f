"""The mesh file formats: one :class:`MeshFormat` class per format, registered in one place.

A format is its suffix, whether it stores per-vertex colours, a one-line summary and how its
bytes are made (:meth:`MeshFormat.encode`); :func:`register_mesh_format` makes it the writer and
reader of its suffix. :func:`facerecon.mesh.export.export_mesh`,
:func:`facerecon.mesh.export.load_geometry` and the CLI's help and checks read the registry
(:func:`mesh_suffixes`), so a new format is one class here (docs/formats.md, "Adding a mesh
format"). After pytorch3d's ``register_meshes_format``. What a reader returns is a
:class:`Geometry` (numpy arrays); most formats are read by trimesh (:func:`load_with_trimesh`).

Importing this module is cheap (numpy and trimesh are imported by the encoders that use them),
and it lives outside ``facerecon.mesh`` (whose package imports numpy): the CLI lists the suffixes
in its help without loading numpy. Text formats keep 8 significant
digits of the largest coordinate (:func:`decimals_for`: 5 decimals for image px of a few hundred,
finer than float32), the text Python's ``%.Nf`` writes, made by :func:`text_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence, TypeVar

from facerecon.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "POINT_FORMATS",
    "Geometry",
    "MeshFormat",
    "decimals_for",
    "load_with_trimesh",
    "mesh_bytes",
    "mesh_format",
    "mesh_suffixes",
    "register_mesh_format",
]

#: Point-cloud formats :func:`facerecon.mesh.export.export_points` writes and
#: :func:`facerecon.mesh.export.load_geometry` reads.
POINT_FORMATS = (".ply", ".npy")


@dataclass(frozen=True)
class Geometry:
    """A mesh or a point cloud read from a file.

    Attributes:
        path: the file it came from.
        vertices: ``(N, 3)`` float64 coordinates, in the file's units.
        faces: ``(F, 3)`` int64 vertex indices (counter-clockwise as stored), or None for a point
            cloud.
        colors: ``(N, 3)`` uint8 RGB per vertex/point, or None when the file has none.
        normals: ``(N, 3)`` float64 per-point normals as stored (point clouds only), or None.
        uv: ``(N, 2)`` float64 texture coordinates per vertex in [0, 1], origin at the texture's
            bottom-left (OBJ's and glTF-through-trimesh's convention), for a textured mesh; else None.
        texture: ``(h, w, 3)`` uint8 RGB the texture image ``uv`` points into, or None.
    """

    path: Path
    vertices: np.ndarray
    faces: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    uv: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None

    @property
    def is_mesh(self) -> bool:
        """True for a triangle mesh, False for a point cloud."""
        return self.faces is not None

    @property
    def num_vertices(self) -> int:
        """Number of vertices (or points)."""
        return int(self.vertices.shape[0])


# --------------------------------------------------------------------------------------- registry
class MeshFormat:
    """One mesh file format: subclass it, set the class attributes, write :meth:`encode`, and
    decorate the class with :func:`register_mesh_format`.

    Reading goes through trimesh by the suffix (``process=False``: the file's vertex order);
    override :meth:`read` for a format trimesh does not know.
    """

    #: The file extension, lower case with its dot (``".obj"``).
    suffix: ClassVar[str]
    #: One line for the documentation and the CLI's help.
    summary: ClassVar[str] = ""
    #: Whether the format stores per-vertex colours (otherwise colours given are dropped).
    colours: ClassVar[bool] = False
    #: Whether the file stores three vertices per face (readers merge the shared ones).
    triangle_soup: ClassVar[bool] = False

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        """The file's bytes.

        Args:
            vertices: ``(V, 3)`` float64, finite.
            faces: ``(F, 3)`` int64 indices into ``vertices``.
            colors: ``(V, 3)`` uint8 RGB, or None (always None unless :attr:`colours`).
        """
        raise NotImplementedError

    def read(self, path: Path) -> Geometry:
        """The mesh (or an ``.obj``'s bare vertices, as a point cloud) in ``path``."""
        return load_with_trimesh(path, self.suffix, merge=self.triangle_soup)


_MESH_FORMATS: dict[str, MeshFormat] = {}
_Format = TypeVar("_Format", bound=type[MeshFormat])


def register_mesh_format(cls: _Format) -> _Format:
    """Class decorator: make ``cls`` the writer and reader of ``cls.suffix``.

    Raises:
        InputError: another format already owns the suffix, or it is not ``.lowercase``.
    """
    suffix = cls.suffix
    if not suffix.startswith(".") or suffix != suffix.lower():
        raise InputError(f"mesh format {cls.__name__}: suffix {suffix!r} must be lower case and start with '.'")
    if suffix in _MESH_FORMATS:
        raise InputError(f"mesh format {suffix} is already registered ({type(_MESH_FORMATS[suffix]).__name__})")
    _MESH_FORMATS[suffix] = cls()
    return cls


def mesh_suffixes() -> tuple[str, ...]:
    """The suffixes :func:`export_mesh` writes and :func:`load_geometry` reads, in registration order."""
    return tuple(_MESH_FORMATS)


def mesh_format(suffix: str) -> MeshFormat:
    """The registered format of ``suffix`` (any case, with or without its dot).

    Raises:
        InputError: no format has this suffix (the message lists the registered ones).
    """
    key = "." + suffix.lower().lstrip(".")
    if key not in _MESH_FORMATS:
        raise InputError(f"unknown mesh format {suffix!r}; use one of {', '.join(_MESH_FORMATS)}")
    return _MESH_FORMATS[key]


# --------------------------------------------------------------------------------------- the formats
def decimals_for(values: np.ndarray, significant: int = 8) -> int:
    """Decimals that keep ``significant`` digits of the largest magnitude (0 to 9).

    Image px (up to a few thousand) get 4-5 decimals, crop units (~1) 7-8: below float32's
    resolution either way, so a file read back as float32 is exact.
    """
    top = float(abs(values).max()) if values.size else 0.0
    if not top > 0.0:
        return 6
    return min(max(significant - 1 - math.floor(math.log10(top)), 0), 9)


def text_rows(prefix: str, rows: np.ndarray, decimals: Sequence[int]) -> bytes:
    """Each row of ``rows`` as one ASCII line: ``prefix``, then each number after a space (none
    before the first when ``prefix`` is empty), column
    ``j`` as Python's ``"%.{decimals[j]}f"`` writes it (``"%d"`` for an integer array).

    Vectorised: every line is laid out in a fixed-width byte table (sign, integer digits,
    point, decimals), the unused leading places are left 0 and dropped at the end, so a mesh of
    7,001 vertices takes ~1 ms instead of ~7 with ``%`` formatting. A float is rounded from
    ``|x| * 10**d`` in float64 (exact up to a tie in its last 1e-16: within half a unit of the
    last decimal either way); rows with a NaN or an infinity are formatted by ``%``.
    """
    import numpy as np

    n, k = rows.shape
    if n == 0:
        return b""
    integer = np.issubdtype(rows.dtype, np.integer)
    if not integer and not np.isfinite(rows).all():
        template = (prefix + "".join(f" %.{d}f" for d in decimals)).lstrip(" ") + "\n"
        return ((template * n) % tuple(rows.ravel().tolist())).encode("ascii")
    parts = [np.frombuffer(prefix.encode("ascii"), np.uint8)[None].repeat(n, axis=0)]
    for j in range(k):
        x = rows[:, j]
        d = 0 if integer else int(decimals[j])
        if integer:
            whole, negative = np.abs(x.astype(np.int64)), x < 0
        else:
            scaled = np.rint(np.abs(x.astype(np.float64)) * 10.0**d).astype(np.int64)
            whole, frac = np.divmod(scaled, 10**d)
            negative = np.signbit(x)
        places = len(str(int(whole.max())))
        field = np.zeros((n, 2 + places + (d + 1 if d else 0)), np.uint8)
        field[:, 0] = ord(" ") if j or prefix else 0  # no space before the first number of a bare line
        field[:, 1] = np.where(negative, ord("-"), 0)
        for p in range(places):  # p = 0: the highest place
            power = 10 ** (places - 1 - p)
            digit = (whole // power) % 10 + ord("0")
            field[:, 2 + p] = digit if power == 1 else np.where(whole >= power, digit, 0)
        if d:
            field[:, 2 + places] = ord(".")
            for p in range(d):
                field[:, 3 + places + p] = (frac // 10 ** (d - 1 - p)) % 10 + ord("0")
        parts.append(field)
    parts.append(np.full((n, 1), ord("\n"), np.uint8))
    table = np.concatenate(parts, axis=1).ravel()
    return table[table != 0].tobytes()


@register_mesh_format
class ObjFormat(MeshFormat):
    suffix = ".obj"
    summary = "Wavefront text; 8 significant digits; colours as 'v x y z r g b' (r/255, 6 decimals)"
    colours = True

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        import numpy as np

        d = decimals_for(vertices)
        head = f"# written by facerecon: {len(vertices)} vertices, {len(faces)} faces\n".encode("ascii")
        if colors is None:
            lines = text_rows("v", vertices, (d, d, d))
        else:
            lines = text_rows("v", np.hstack([vertices, colors / 255.0]), (d, d, d, 6, 6, 6))
        return head + lines + text_rows("f", faces + 1, (0, 0, 0))


@register_mesh_format
class PlyFormat(MeshFormat):
    suffix = ".ply"
    summary = "binary little-endian; coordinates as float64, faces as int32, optional RGB"
    colours = True

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        import numpy as np

        fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
        if colors is not None:
            fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        vertex = np.empty(len(vertices), dtype=fields)
        vertex["x"], vertex["y"], vertex["z"] = vertices.T
        if colors is not None:
            vertex["red"], vertex["green"], vertex["blue"] = colors.T
        face = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face["n"] = 3
        face["i"] = faces
        ply_type = {"<f8": "double", "u1": "uchar"}
        header = ["ply", "format binary_little_endian 1.0", "comment written by facerecon", f"element vertex {len(vertices)}"]
        header += [f"property {ply_type[t]} {name}" for name, t in fields]
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
        return ("\n".join(header) + "\n").encode("ascii") + vertex.tobytes() + face.tobytes()


@register_mesh_format
class GlbFormat(MeshFormat):
    suffix = ".glb"
    summary = "binary glTF 2.0 (through trimesh); coordinates as float32 (the format's type), colours as COLOR_0"
    colours = True

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        import trimesh

        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
        if colors is not None:
            mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colors)
        data = mesh.export(file_type="glb")
        assert isinstance(data, bytes)  # glb is binary
        return data


@register_mesh_format
class OffFormat(MeshFormat):
    suffix = ".off"
    summary = "Object File Format, text; 8 significant digits; no colours"

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        d = decimals_for(vertices)
        head = f"OFF\n{len(vertices)} {len(faces)} 0\n"
        return head.encode("ascii") + text_rows("", vertices, (d, d, d)) + text_rows("3", faces, (0, 0, 0))


@register_mesh_format
class StlFormat(MeshFormat):
    suffix = ".stl"
    summary = "binary triangle soup (float32): shared vertices are not stored, readers merge them; no colours"
    triangle_soup = True

    def encode(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
        import numpy as np

        tri = vertices[faces]  # (F, 3, 3)
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
        record = np.zeros(len(faces), dtype=[("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
        record["normal"] = normal
        record["vertices"] = tri
        header = b"binary STL written by facerecon".ljust(80, b" ")
        return header + np.uint32(len(faces)).tobytes() + record.tobytes()


def mesh_bytes(suffix: str, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray] = None) -> bytes:
    """The file content :func:`export_mesh` writes for ``suffix`` (arrays already checked;
    colours dropped where the format cannot hold them)."""
    fmt = mesh_format(suffix)
    return fmt.encode(vertices, faces, colors if fmt.colours else None)


# --------------------------------------------------------------------------------------- reading
def load_with_trimesh(path: Path, suffix: str, merge: bool = False) -> Geometry:
    """A mesh file read by trimesh (``process=False``: the file's vertex order); ``merge`` joins
    the duplicate vertices of a triangle soup. The default reader of :class:`MeshFormat`."""
    import numpy as np
    import trimesh

    try:
        loaded = trimesh.load(str(path), file_type=suffix[1:], process=False)
        if isinstance(loaded, trimesh.Scene):  # .glb/.obj with several parts: flatten, transforms applied
            parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
            loaded = trimesh.util.concatenate(parts) if parts else trimesh.Trimesh()
    except Exception as exc:  # broad on purpose: trimesh's readers raise many types on bad files
        raise InputError(f"{path}: cannot read ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    if isinstance(loaded, trimesh.PointCloud):
        return _point_geometry(path, loaded)
    if not isinstance(loaded, trimesh.Trimesh):
        raise InputError(f"{path}: cannot read (no mesh or point cloud in the file)")
    if merge:  # a triangle soup: shared vertices stored once per face
        loaded.merge_vertices()
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:
        raise InputError(f"{path}: the file holds no vertices (empty or not a {suffix} file)")
    if not np.isfinite(vertices).all():
        raise InputError(f"{path}: the vertices contain NaN or infinite coordinates")
    colors = None
    visual = loaded.visual
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        colors = np.ascontiguousarray(np.asarray(visual.vertex_colors)[:, :3], dtype=np.uint8)
    if len(faces) == 0:  # e.g. an .obj with only 'v' lines
        return Geometry(path=path, vertices=vertices, colors=colors)
    uv, texture = _texture_of(visual, len(vertices))
    return Geometry(path=path, vertices=vertices, faces=faces, colors=colors, uv=uv, texture=texture)


def _texture_of(visual: Any, n_vertices: int) -> tuple[Any, Any]:
    """``(uv, texture)`` of a trimesh visual with per-vertex texture coordinates and an image
    (an OBJ's ``vt`` + ``.mtl`` + image, a glTF's embedded one), else ``(None, None)``."""
    import numpy as np
    import trimesh

    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None:
        return None, None
    image = getattr(visual.material, "image", None)
    if image is None:  # a PBR material (glTF) keeps it as its base colour texture
        image = getattr(visual.material, "baseColorTexture", None)
    uv = np.asarray(visual.uv, dtype=np.float64)
    if image is None or uv.shape != (n_vertices, 2) or not np.isfinite(uv).all():
        return None, None
    return uv, np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)


def _point_geometry(path: Path, cloud: Any) -> Geometry:
    import numpy as np

    vertices = np.asarray(cloud.vertices, dtype=np.float64)
    if len(vertices) == 0:
        raise InputError(f"{path}: the point cloud is empty")
    if not np.isfinite(vertices).all():
        raise InputError(f"{path}: the points contain NaN or infinite coordinates")
    colors = None
    raw = getattr(cloud, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
    names = raw.dtype.names if raw is not None and raw.dtype.names else ()
    if {"red", "green", "blue"} <= set(names):
        colors = np.stack([raw[c] for c in ("red", "green", "blue")], axis=1).reshape(-1, 3).astype(np.uint8)
    normals = None
    if {"nx", "ny", "nz"} <= set(names):
        normals = np.stack([raw[c] for c in ("nx", "ny", "nz")], axis=1).reshape(-1, 3).astype(np.float64)
    return Geometry(path=path, vertices=vertices, colors=colors, normals=normals)
