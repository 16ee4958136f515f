"""Write meshes and point clouds to the usual 3D formats, and read them back as numpy arrays.

Meshes are written by vectorised writers of our own (numpy formats the whole array at once;
``.glb`` goes through trimesh), so the vertex order and count are exactly the caller's (vertex
``i`` of a predicted mesh stays vertex ``i`` of the template), and every file is written
atomically (:func:`facerecon.io_utils.atomic_path`): an interrupted or failed export leaves no
file, not a half-written one. Text formats keep 8 significant digits of the largest coordinate
(:func:`decimals_for`: 4 decimals for image px up to 9999, finer than float32).

Formats (chosen by the file extension, case-insensitive):

========  ===================  ===================================================================
suffix    per-vertex colours   notes
========  ===================  ===================================================================
``.obj``  yes (``v x y z r g b``)  text; 8 significant digits; colours r/255 with 6 decimals
``.ply``  yes                  binary little-endian; coordinates as float64, faces as int32
``.glb``  yes (``COLOR_0``)    binary glTF 2.0; coordinates as float32 (the format's type)
``.off``  no                   text; 8 significant digits
``.stl``  no                   binary triangle soup: shared vertices are not stored, so a reader
                               gets three vertices per face (:func:`load_geometry` merges them)
========  ===================  ===================================================================

Colours given for ``.off`` or ``.stl`` are dropped (the formats cannot hold them). Point clouds are
``.ply`` (binary, optional colours and normals) or ``.npy`` (``(N, 3)`` xyz or ``(N, 6)`` xyz +
normals, the Pixel2Mesh convention).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from facerecon.errors import InputError
from facerecon.io_utils import atomic_path, atomic_write_bytes

__all__ = [
    "MESH_FORMATS",
    "POINT_FORMATS",
    "SUPPORTED",
    "Geometry",
    "export_mesh",
    "export_points",
    "load_geometry",
    "mesh_bytes",
    "format_fixed",
    "decimals_for",
]

#: Mesh formats :func:`export_mesh` writes and :func:`load_geometry` reads.
MESH_FORMATS = (".obj", ".ply", ".glb", ".off", ".stl")
#: Point-cloud formats :func:`export_points` writes and :func:`load_geometry` reads.
POINT_FORMATS = (".ply", ".npy")
#: Alias of :data:`MESH_FORMATS`.
SUPPORTED = MESH_FORMATS

_COLOUR_FORMATS = (".obj", ".ply", ".glb")


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
    """

    path: Path
    vertices: np.ndarray
    faces: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None

    @property
    def is_mesh(self) -> bool:
        """True for a triangle mesh, False for a point cloud."""
        return self.faces is not None

    @property
    def num_vertices(self) -> int:
        """Number of vertices (or points)."""
        return int(self.vertices.shape[0])


# --------------------------------------------------------------------------------------- checks
def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{path}: unknown {what} format {path.suffix or '(no extension)'!r}; use one of {', '.join(allowed)}"
        )
    return suffix


def _points_array(path: Path, array: object, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{path}: {name} must be a non-empty (N, 3) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(f"{path}: {name} must be finite numbers")
    return arr.astype(np.float64, copy=False)


def _faces_array(path: Path, faces: object, num_vertices: int) -> np.ndarray:
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{path}: faces must be a non-empty (F, 3) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: faces must be integers, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_vertices:
        raise InputError(f"{path}: face indices must lie in [0, {num_vertices}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)


def _colors_uint8(path: Path, colors: object, count: int) -> np.ndarray:
    """``(N, 3|4)`` uint8, or float in [0, 1] -> ``(N, 3)`` uint8 (alpha dropped)."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[0] != count or arr.shape[1] not in (3, 4):
        raise InputError(f"{path}: colors must be ({count}, 3) to match the vertices, got shape {arr.shape}")
    arr = arr[:, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise InputError(f"{path}: colors must be uint8 or floats in [0, 1], got {arr.dtype}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InputError(f"{path}: float colors must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return np.round(arr * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------- text
def decimals_for(values: np.ndarray, significant: int = 8) -> int:
    """Decimals that keep ``significant`` digits of the largest magnitude (0 to 9).

    Image px (up to a few thousand) get 4-5 decimals, crop units (~1) 7-8: below float32's
    resolution either way, so a file read back as float32 is exact.
    """
    top = float(np.max(np.abs(values))) if values.size else 0.0
    if not top > 0.0:
        return 6
    return int(np.clip(significant - 1 - math.floor(math.log10(top)), 0, 9))


#: ASCII of 0000..9999, four digits each: numbers are written four digits per table lookup,
#: each four-byte group read as one uint32 (``np.take`` on a flat table: numpy's fancy indexing
#: of a 2-D table is ~10x slower).
_DIGITS4 = ((np.arange(10000)[:, None] // np.array([1000, 100, 10, 1])) % 10 + ord("0")).astype(np.uint8)
_DIGITS4_WORDS = _DIGITS4.view(np.uint32).ravel()
_SPACE, _MINUS, _ZERO = ord(" "), ord("-"), ord("0")


def _sign_masks(int_digits: int, sign_slot: int) -> np.ndarray:
    """XOR masks that turn a field's leading zeros into spaces and put a minus sign before its
    first digit shown: row ``hidden + int_digits * negative`` for ``hidden`` leading zeros
    (0 to ``int_digits - 1``), over the field's first ``1 + sign_slot + int_digits`` bytes.
    A hidden digit is always "0" ("0" ^ 0x10 = " "); the byte before the first digit shown is a
    hidden "0" or the sign slot's space."""
    prefix = 1 + sign_slot + int_digits
    masks = np.zeros((2 * int_digits, prefix), np.uint8)
    for hidden in range(int_digits):
        first = 1 + sign_slot + hidden  # the first digit shown
        masks[hidden, 1 + sign_slot : first] = _ZERO ^ _SPACE
        masks[int_digits + hidden] = masks[hidden]
        if sign_slot:
            masks[int_digits + hidden, first - 1] = (_ZERO if hidden else _SPACE) ^ _MINUS
    return masks


_HEADS: dict[tuple[int, int], np.ndarray] = {}


def _field_heads(int_digits: int, sign_slot: int) -> np.ndarray:
    """``" " + [sign slot] + integer part`` of every field whose integer part has at most
    ``int_digits`` (<= 4) digits: row ``i + 10**int_digits * negative`` (cached; the negative
    rows only with a sign slot)."""
    key = (int_digits, sign_slot)
    if key not in _HEADS:
        count = 10**int_digits
        halves = 2 if sign_slot else 1
        first = 1 + sign_slot  # the integer part's first byte
        heads = np.full((halves, count, first + int_digits), _SPACE, np.uint8)
        heads[:, :, first:] = _DIGITS4[:count, 4 - int_digits :]
        for j in range(1, int_digits):  # numbers below 10**j: their first int_digits - j digits hidden
            heads[:, : 10**j, first : first + int_digits - j] = _SPACE
        if sign_slot:  # the minus sign just before the first digit shown
            for j in range(1, int_digits + 1):
                heads[1, 10 ** (j - 1) if j > 1 else 0 : 10**j, first + int_digits - j - 1] = _MINUS
        _HEADS[key] = heads.reshape(halves * count, first + int_digits)
    return _HEADS[key]


def _divmod(mag: np.ndarray, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.divmod(mag, divisor)`` for int64 ``0 <= mag < 2**53``, through a float64 division
    (numpy's int64 division is not vectorised: ~10x slower). The float quotient is correctly
    rounded, so truncating it is the true quotient or one above it (never below: the true
    quotient's integer part is exactly representable); one above shows as a negative
    remainder and is taken back."""
    whole = (mag / float(divisor)).astype(np.int64)
    rest = mag - whole * divisor
    over = rest >> 63  # -1 where the remainder is negative, else 0
    whole += over
    rest -= over * divisor
    return whole, rest


def format_fixed(values: np.ndarray, decimals: int, sign: bool = True) -> np.ndarray:
    """Numbers as fixed-width ASCII fields, all at once (no per-number Python).

    Each number becomes ``" " + right-aligned [-]digits[.decimals]`` (a leading space as the
    separator), the same width for every field, so rows of fields concatenate into lines. The
    value is rounded to ``decimals`` digits (half away from zero at exact ties, as ``np.rint``
    on the scaled value: to even), so reading the text back gives the rounded value exactly.

    Args:
        values: ``(N, K)`` finite floats (or ints); ``|value| * 10**decimals < 2**53``.
        decimals: digits after the point (0: integers, no point).
        sign: reserve room for a minus sign when a value is negative (indices: no need).

    Returns:
        ``(N, K * W)`` uint8 ASCII codes.
    """
    values = np.asarray(values)
    n, k = values.shape
    if not decimals and values.dtype.kind in "iu":  # integers (vertex indices): as they are
        q = values.astype(np.int64).ravel()
    else:
        scaled = values.astype(np.float64) * 10.0**decimals if decimals else values.astype(np.float64)
        q = np.rint(scaled).astype(np.int64).ravel()
    mag = np.abs(q)
    top = int(mag.max()) if mag.size else 0
    num_digits = max(len(str(top)), decimals + 1)
    int_digits = num_digits - decimals
    neg = q < 0
    sign_slot = 1 if sign and bool(neg.any()) else 0
    prefix = 1 + sign_slot + int_digits
    width = prefix + (1 + decimals if decimals else 0)
    if int_digits <= 4:  # the usual case (px, crop units, vertex indices): the integer part by table
        whole, digits_left = _divmod(mag, 10**decimals) if decimals else (mag, None)
        rows = whole + 10**int_digits * neg if sign_slot else whole
        if not decimals:
            return np.take(_field_heads(int_digits, sign_slot), rows, axis=0).reshape(n, k * width)
        out = np.empty((n * k, width), np.uint8)
        out[:, :prefix] = np.take(_field_heads(int_digits, sign_slot), rows, axis=0)
        num_digits, mag = decimals, digits_left
    if num_digits:
        # digits (all, or the decimals), most significant first, zero-padded: four per lookup
        groups = -(-num_digits // 4)
        words = np.empty((n * k, groups), np.uint32)
        rest = mag
        for g in range(groups - 1, 0, -1):
            rest, low = _divmod(rest, 10000)
            words[:, g] = np.take(_DIGITS4_WORDS, low)
        words[:, 0] = np.take(_DIGITS4_WORDS, rest)
        chars = words.view(np.uint8)[:, 4 * groups - num_digits :]
    if int_digits > 4:
        out = np.full((n * k, width), _SPACE, np.uint8)
        out[:, 1 + sign_slot : prefix] = chars[:, :int_digits]
        # leading zeros of the integer part (the units digit always stays) and the minus sign
        hidden = np.zeros(n * k, np.intp)
        for j in range(1, int_digits):
            hidden += mag < 10 ** (decimals + j)
        hidden += int_digits * neg if sign_slot else 0
        out[:, :prefix] ^= np.take(_sign_masks(int_digits, sign_slot), hidden, axis=0)
    if decimals:
        out[:, prefix] = ord(".")
        out[:, prefix + 1 :] = chars[:, -decimals:]
    return out.reshape(n, k * width)


def _lines(prefix: bytes, *blocks: np.ndarray) -> bytes:
    """``prefix`` + the blocks' bytes + newline for each row, as one bytes object."""
    n = blocks[0].shape[0]
    parts = [np.frombuffer(prefix, np.uint8)[None].repeat(n, 0)] if prefix else []
    parts += list(blocks)
    parts.append(np.full((n, 1), ord("\n"), np.uint8))
    return np.concatenate(parts, axis=1).tobytes()


#: " r/255" with 6 decimals for each byte value: the colour fields of an .obj line.
_COLOUR_TEXT = format_fixed((np.arange(256, dtype=np.float64) / 255.0)[:, None], 6, sign=False)

_FACE_TEXT_CACHE: dict[tuple[str, int, int], tuple[np.ndarray, bytes]] = {}


def _face_text(prefix: bytes, faces: np.ndarray, base: int) -> bytes:
    """The face lines (cached for the last topology of each kind: predict writes the same
    template topology every time)."""
    key = (prefix.decode(), base, faces.shape[0])
    cached = _FACE_TEXT_CACHE.get(key)
    if cached is not None and np.array_equal(cached[0], faces):
        return cached[1]
    text = _lines(prefix, format_fixed(faces + base, 0, sign=False))
    _FACE_TEXT_CACHE[key] = (faces.copy(), text)
    return text


def _obj_bytes(v: np.ndarray, f: np.ndarray, c: Optional[np.ndarray]) -> bytes:
    coords = format_fixed(v, decimals_for(v))
    colour = None if c is None else _COLOUR_TEXT[c].reshape(len(v), -1)
    head = f"# written by facerecon: {len(v)} vertices, {len(f)} faces\n".encode("ascii")
    vertex_lines = _lines(b"v", coords, colour) if colour is not None else _lines(b"v", coords)
    return head + vertex_lines + _face_text(b"f", f, 1)


def _off_bytes(v: np.ndarray, f: np.ndarray) -> bytes:
    head = f"OFF\n{len(v)} {len(f)} 0\n".encode("ascii")
    return head + _lines(b"", format_fixed(v, decimals_for(v))) + _face_text(b"3", f, 0)


def _ply_bytes(v: np.ndarray, f: np.ndarray, c: Optional[np.ndarray]) -> bytes:
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if c is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(v), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = v[:, 0], v[:, 1], v[:, 2]
    if c is not None:
        vertex["red"], vertex["green"], vertex["blue"] = c[:, 0], c[:, 1], c[:, 2]
    face = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"] = 3
    face["i"] = f
    ply_type = {"<f8": "double", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by facerecon", f"element vertex {len(v)}"]
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vertex.tobytes() + face.tobytes()


def _stl_bytes(v: np.ndarray, f: np.ndarray) -> bytes:
    tri = v[f]  # (F, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
    record = np.zeros(len(f), dtype=[("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
    record["normal"] = normal
    record["vertices"] = tri
    header = b"binary STL written by facerecon".ljust(80, b" ")
    return header + np.uint32(len(f)).tobytes() + record.tobytes()


def mesh_bytes(suffix: str, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray] = None) -> bytes:
    """The file content :func:`export_mesh` writes for ``suffix`` (arrays already checked)."""
    if suffix == ".obj":
        return _obj_bytes(vertices, faces, colors)
    if suffix == ".ply":
        return _ply_bytes(vertices, faces, colors)
    if suffix == ".off":
        return _off_bytes(vertices, faces)
    if suffix == ".stl":
        return _stl_bytes(vertices, faces)
    if suffix == ".glb":
        import trimesh

        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
        if colors is not None:
            mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colors)
        return bytes(mesh.export(file_type="glb"))
    raise InputError(f"unknown mesh format {suffix!r}")


# --------------------------------------------------------------------------------------- writing
def export_mesh(
    path: str | os.PathLike[str],
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: Optional[np.ndarray] = None,
    durable: bool = True,
) -> None:
    """Write a triangle mesh; the format follows the extension (see the module docstring).

    Args:
        path: output file, one of :data:`MESH_FORMATS`; its folder is created. Written atomically.
        vertices: ``(V, 3)`` float coordinates in any unit (they are written as given; ``predict``
            writes image px).
        faces: ``(F, 3)`` int vertex indices, counter-clockwise seen from outside.
        colors: ``(V, 3)`` (or ``(V, 4)``, alpha ignored) per-vertex RGB, uint8 or float in
            [0, 1]; None for none. Dropped for ``.off`` and ``.stl``.
        durable: flush the file to the disk before it replaces ``path``
            (:mod:`facerecon.io_utils`; ``facerecon predict`` writes its meshes without).

    Raises:
        InputError: unknown extension (the message lists the supported ones), malformed arrays,
            or a folder that cannot be created or written.
    """
    path = Path(path)
    suffix = _suffix(path, MESH_FORMATS, "mesh")
    v = _points_array(path, vertices, "vertices")
    f = _faces_array(path, faces, len(v))
    c = None if colors is None else _colors_uint8(path, colors, len(v))
    atomic_write_bytes(path, mesh_bytes(suffix, v, f, c if suffix in _COLOUR_FORMATS else None), durable=durable)


def export_points(
    path: str | os.PathLike[str],
    points: np.ndarray,
    colors: Optional[np.ndarray] = None,
    normals: Optional[np.ndarray] = None,
) -> None:
    """Write a point cloud as ``.ply`` (binary) or ``.npy``.

    Args:
        path: output file (``.ply`` or ``.npy``); its folder is created. Written atomically.
        points: ``(N, 3)`` float coordinates, any unit.
        colors: ``(N, 3)`` RGB, uint8 or float in [0, 1]; ``.ply`` only.
        normals: ``(N, 3)`` float normals; stored as float32 in ``.ply``, and as columns 3-5 of
            an ``(N, 6)`` array in ``.npy``.

    Raises:
        InputError: unknown extension, malformed arrays, colours requested for ``.npy``, or a
            folder that cannot be created or written.
    """
    path = Path(path)
    suffix = _suffix(path, POINT_FORMATS, "point-cloud")
    p = _points_array(path, points, "points")
    n = None if normals is None else _points_array(path, normals, "normals")
    if n is not None and len(n) != len(p):
        raise InputError(f"{path}: normals must be ({len(p)}, 3) to match the points, got {n.shape}")
    c = None if colors is None else _colors_uint8(path, colors, len(p))
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            if c is not None:
                raise InputError(f"{path}: .npy point files hold xyz or xyz + normals; write .ply for colours")
            np.save(tmp, p if n is None else np.concatenate([p, n], axis=1))
        else:
            _write_point_ply(tmp, p, c, n)


def _write_point_ply(path: Path, points: np.ndarray, colors: Optional[np.ndarray], normals: Optional[np.ndarray]) -> None:
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        data[axis] = points[:, i]
        if normals is not None:
            data["n" + axis] = normals[:, i]
    if colors is not None:
        for i, channel in enumerate(("red", "green", "blue")):
            data[channel] = colors[:, i]
    ply_type = {"<f8": "double", "<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by facerecon", f"element vertex {len(points)}"]
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header.append("end_header")
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(data.tobytes())


# --------------------------------------------------------------------------------------- reading
def load_geometry(path: str | os.PathLike[str]) -> Geometry:
    """Read a mesh or a point cloud as numpy arrays.

    Meshes: ``.obj``, ``.ply`` (with faces), ``.glb``, ``.off``, ``.stl`` (read with
    ``process=False``, so vertex order is the file's; ``.stl`` triangle soups get their
    duplicate vertices merged). Point clouds: ``.ply`` without faces, an ``.obj`` with vertices
    only, ``.npy`` ``(N, 3)`` xyz or ``(N, 6)`` xyz + normals.

    Returns:
        A :class:`Geometry` (``faces`` None for a point cloud).

    Raises:
        InputError: a missing, unreadable, malformed or empty file, or an unknown extension;
            the message names the file.
    """
    path = Path(path)
    suffix = _suffix(path, tuple(dict.fromkeys(MESH_FORMATS + POINT_FORMATS)), "mesh or point-cloud")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if suffix == ".npy":
        return _load_npy(path)
    return _load_trimesh(path, suffix)


def _load_npy(path: Path) -> Geometry:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise InputError(f"{path}: expected an (N, 3) or (N, 6) point array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{path}: the point cloud is empty")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(f"{path}: the points must be finite numbers")
    arr = arr.astype(np.float64)
    normals = arr[:, 3:6].copy() if arr.shape[1] == 6 else None
    return Geometry(path=path, vertices=np.ascontiguousarray(arr[:, :3]), normals=normals)


def _load_trimesh(path: Path, suffix: str) -> Geometry:
    import trimesh

    try:
        loaded = trimesh.load(str(path), file_type=suffix[1:], process=False)
        if isinstance(loaded, trimesh.Scene):  # .glb/.obj with several parts: flatten, transforms applied
            parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
            loaded = trimesh.util.concatenate(parts) if parts else trimesh.Trimesh()
    except Exception as exc:  # noqa: BLE001  (trimesh's readers raise many types on bad files)
        raise InputError(f"{path}: cannot read ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    if isinstance(loaded, trimesh.PointCloud):
        return _point_geometry(path, loaded)
    if not isinstance(loaded, trimesh.Trimesh):
        raise InputError(f"{path}: cannot read (no mesh or point cloud in the file)")
    if suffix == ".stl":
        loaded.merge_vertices()
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:
        raise InputError(f"{path}: the file holds no vertices (empty or not a {suffix} file)")
    if not np.isfinite(vertices).all():
        raise InputError(f"{path}: the vertices contain NaN or infinite coordinates")
    colors = None
    if loaded.visual is not None and loaded.visual.kind == "vertex":
        colors = np.ascontiguousarray(np.asarray(loaded.visual.vertex_colors)[:, :3], dtype=np.uint8)
    if len(faces) == 0:  # e.g. an .obj with only 'v' lines
        return Geometry(path=path, vertices=vertices, colors=colors)
    return Geometry(path=path, vertices=vertices, faces=faces, colors=colors)


def _point_geometry(path: Path, cloud: "object") -> Geometry:
    vertices = np.asarray(cloud.vertices, dtype=np.float64)  # type: ignore[attr-defined]
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
