"""Rasterising a triangle mesh with per-vertex attributes into an image: depth, coverage, which
triangle covers each pixel, and any per-vertex values interpolated over the surface.

OpenGL does the rasterising (moderngl on Mesa's EGL, headless; chosen by measurement against
pyrender, trimesh/Embree ray casting, Open3D's legacy visualiser and a numpy z-buffer: see
``benchmarks/bench_render.py`` and ``docs/render.md``). One pass writes, for each covered pixel,
its triangle, two barycentric weights and the depth, and the attributes OpenGL interpolated (float32,
perspective-correct; four channels per colour attachment, seven attachments a pass). Any other
per-vertex values can be interpolated afterwards from the triangles and weights
(:meth:`RenderResult.interpolate`).

Conventions:

- Pixel ``(i, j)`` (row ``i``, column ``j``) is sampled at its centre, image px ``(j + 0.5, i + 0.5)``
  (facerecon's ``image px``: the top-left corner of the image is (0, 0), x right, y down). A pixel
  centre exactly on an edge shared by two triangles belongs to exactly one of them (OpenGL's
  top-left rule).
- Orthographic camera (the default): vertices are ``(x_px, y_px, z)`` in the photo's pixel frame,
  ``z`` away from the camera (``facerecon.frames``): the smallest ``z`` is nearest and wins.
- Perspective (pinhole) camera: vertices are ``(X, Y, Z)`` in the camera frame (X right, Y down,
  Z > 0 forward), projected to ``(fx X / Z + cx, fy Y / Z + cy)`` image px; depth is ``Z``.
- Both sides of every triangle are drawn (no culling): the nearer surface wins at each pixel.

One OpenGL context per process, created at the first call and reused; calls from several threads
are serialised by a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from .errors import DependencyError, InputError
from .opengl import before_opengl


def _shaders(slots: int) -> tuple[str, str, str]:
    """The vertex, geometry and fragment shaders writing geometry plus ``slots`` vec4s of attributes.

    The geometry shader gives each triangle's corners the barycentric weights (1, 0), (0, 1), (0, 0)
    and passes the triangle's index on. Attachment 0 holds two barycentric weights, the depth
    (perspective-correct) and the triangle's index + 1 (exact in float32 below 2^24 triangles);
    attachment ``1 + i`` holds attribute vec4 ``i``.
    """
    rng = range(slots)
    vertex = (
        "#version 330\nin vec4 in_clip;\nin float in_depth;\nout float g_depth;\n"
        + "".join(f"in vec4 in_a{i};\nout vec4 g_a{i};\n" for i in rng)
        + "void main() {\n    gl_Position = in_clip;\n    g_depth = in_depth;\n"
        + "".join(f"    g_a{i} = in_a{i};\n" for i in rng) + "}\n"
    )
    geometry = (
        "#version 330\nlayout(triangles) in;\nlayout(triangle_strip, max_vertices = 3) out;\n"
        "in float g_depth[];\nout vec3 v_bary_depth;\n"
        + "".join(f"in vec4 g_a{i}[];\nout vec4 v_a{i};\n" for i in rng)
        + "void main() {\n    for (int k = 0; k < 3; ++k) {\n        gl_Position = gl_in[k].gl_Position;\n"
        "        v_bary_depth = vec3(k == 0 ? 1.0 : 0.0, k == 1 ? 1.0 : 0.0, g_depth[k]);\n"
        + "".join(f"        v_a{i} = g_a{i}[k];\n" for i in rng)
        + "        gl_PrimitiveID = gl_PrimitiveIDIn;\n        EmitVertex();\n    }\n    EndPrimitive();\n}\n"
    )
    fragment = (
        "#version 330\nin vec3 v_bary_depth;\nlayout(location = 0) out vec4 out_pixel;\n"
        + "".join(f"in vec4 v_a{i};\nlayout(location = {i + 1}) out vec4 out_a{i};\n" for i in rng)
        + "void main() {\n    out_pixel = vec4(v_bary_depth, float(gl_PrimitiveID + 1));\n"
        + "".join(f"    out_a{i} = v_a{i};\n" for i in rng) + "}\n"
    )
    return vertex, geometry, fragment


#: Framebuffers kept for reuse, one per image size (a video or a folder of same-sized photos
#: reuses one; a few sizes are kept so that maps and textures of one photo do not evict each other).
_MAX_FRAMEBUFFERS = 4

#: Attribute vec4s written in one pass (OpenGL 3.3 guarantees 8 colour attachments; one is geometry).
_MAX_SLOTS = 7

#: Triangle indices travel as float32 values, exact below 2^24.
_MAX_TRIANGLES = 1 << 24


@dataclass(frozen=True)
class Camera:
    """How vertices map to image px: ``orthographic`` (vertices already in image px) or ``perspective``.

    Attributes:
        kind: ``"orthographic"`` or ``"perspective"``.
        fx, fy: focal lengths in px (perspective only).
        cx, cy: the principal point in image px (perspective only).
    """

    kind: str = "orthographic"
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0


ORTHOGRAPHIC = Camera()


def pinhole(fx: float, fy: float, cx: float, cy: float) -> Camera:
    """A perspective camera with focal lengths ``fx, fy`` (px) and principal point ``(cx, cy)`` (image px)."""
    if not (fx > 0 and fy > 0):
        raise InputError(f"a pinhole camera needs positive focal lengths, got fx={fx}, fy={fy}")
    return Camera("perspective", float(fx), float(fy), float(cx), float(cy))


@dataclass
class RenderResult:
    """What one :func:`render` call produced, all ``(H, W, ...)`` arrays in image rows and columns.

    Attributes:
        depth: ``(H, W)`` float32: ``z`` (orthographic) or ``Z`` (perspective) of the nearest surface;
            ``+inf`` where no triangle covers the pixel.
        mask: ``(H, W)`` bool, True where a triangle covers the pixel.
        triangle: ``(H, W)`` int32 index of the covering triangle, -1 where none.
        weights: ``(H, W, 2)`` float32 barycentric weights of the covering triangle's first two
            corners (the third is ``1 - w0 - w1``; see :attr:`barycentric`); 0 where none.
        faces: ``(F, 3)`` int64 the rendered triangles.
        attributes: name -> ``(H, W, C)`` float32 interpolated values (0 where no triangle).
    """

    depth: np.ndarray
    mask: np.ndarray
    triangle: np.ndarray
    weights: np.ndarray = field(repr=False)
    faces: np.ndarray = field(repr=False)
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def barycentric(self) -> np.ndarray:
        """``(H, W, 3)`` float32 corner weights of the covering triangle (0 where none)."""
        w = self.weights
        third = np.where(self.mask, 1.0 - w[..., 0] - w[..., 1], 0.0).astype(np.float32)
        return np.concatenate([w, third[..., None]], axis=-1)

    def interpolate(self, values: np.ndarray, background: float = 0.0) -> np.ndarray:
        """Per-vertex ``values`` ``(N, C)`` or ``(N,)`` at every pixel: ``(H, W, C)`` or ``(H, W)`` float32."""
        vals = np.asarray(values)
        flat = vals.reshape(vals.shape[0], -1).astype(np.float32, copy=False)
        h, w = self.mask.shape
        out = np.full((h * w, flat.shape[1]), background, dtype=np.float32)
        idx = np.flatnonzero(self.mask)
        corners = self.faces[self.triangle.reshape(-1)[idx]]  # (P, 3)
        wts = self.weights.reshape(-1, 2)[idx]
        first, second, third = flat[corners[:, 0]], flat[corners[:, 1]], flat[corners[:, 2]]
        # w0 a + w1 b + (1 - w0 - w1) c = c + w0 (a - c) + w1 (b - c)
        first -= third
        second -= third
        first *= wts[:, 0:1]
        second *= wts[:, 1:2]
        third += first
        third += second
        out[idx] = third
        return out.reshape((h, w) + vals.shape[1:])


def render(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: tuple[int, int],
    attributes: Optional[Mapping[str, np.ndarray]] = None,
    camera: Camera = ORTHOGRAPHIC,
) -> RenderResult:
    """Rasterise a triangle mesh into an ``(H, W)`` image (conventions in the module docstring).

    Args:
        vertices: ``(N, 3)`` float: image px and depth (orthographic) or camera frame (perspective).
        faces: ``(F, 3)`` int vertex indices.
        size: ``(H, W)`` the image's rows and columns.
        attributes: name -> ``(N, C)`` or ``(N,)`` per-vertex values to interpolate.
        camera: :data:`ORTHOGRAPHIC` or a :func:`pinhole` camera.

    Returns:
        A :class:`RenderResult`.

    Raises:
        InputError: malformed arrays, a bad size, or (perspective) a vertex not in front of the camera.
        DependencyError: moderngl or an EGL-capable OpenGL driver is missing.
    """
    v, f, (h, w) = _check(vertices, faces, size, attributes)
    clip = _clip_coordinates(v, (h, w), camera)
    names = list(attributes or {})
    columns = [_columns(attributes[n], v.shape[0]) for n in names]  # type: ignore[index]
    packed = np.concatenate(columns, axis=1) if columns else np.zeros((v.shape[0], 0), np.float32)
    pixels, channels = _draw(clip, v[:, 2], packed, f, (h, w))  # pixels: w0, w1, depth, triangle + 1
    triangle = pixels[..., 3].astype(np.int32) - 1
    mask = triangle >= 0
    depth = np.where(mask, pixels[..., 2], np.float32(np.inf))
    result = RenderResult(depth=depth, mask=mask, triangle=triangle, weights=pixels[..., :2], faces=f)
    start = 0
    for name, col in zip(names, columns):
        shape = (h, w) + np.shape(attributes[name])[1:]  # type: ignore[index]
        result.attributes[name] = channels[..., start:start + col.shape[1]].reshape(shape)
        start += col.shape[1]
    return result


def _columns(values: np.ndarray, n: int) -> np.ndarray:
    """Per-vertex values as ``(N, C)`` float32 (``C`` = the product of the trailing axes)."""
    vals = np.asarray(values, dtype=np.float32)
    return vals.reshape(n, int(np.prod(vals.shape[1:], dtype=np.int64)))


def _check(
    vertices: np.ndarray, faces: np.ndarray, size: tuple[int, int], attributes: Optional[Mapping[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise InputError(f"render expects finite (N, 3) vertices, got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"render expects (F, 3) integer faces, got {f.shape} {f.dtype}")
    if f.shape[0] >= _MAX_TRIANGLES:
        raise InputError(f"render: at most {_MAX_TRIANGLES - 1} triangles, got {f.shape[0]}")
    if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
        raise InputError(f"render: face indices must lie in [0, {v.shape[0]}), got [{f.min()}, {f.max()}]")
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"render: size must be (rows, columns), got {size!r}") from None
    if not (0 < h <= 16384 and 0 < w <= 16384):
        raise InputError(f"render: image size must be 1..16384 px a side, got {h} x {w}")
    for name, values in (attributes or {}).items():
        if np.shape(values)[:1] != (v.shape[0],):
            raise InputError(f"render: attribute '{name}' has shape {np.shape(values)}; expected ({v.shape[0]}, C)")
    return v, f.astype(np.int64, copy=False), (h, w)


def _clip_coordinates(v: np.ndarray, size: tuple[int, int], camera: Camera) -> np.ndarray:
    """OpenGL clip coordinates ``(N, 4)`` float32; image row 0 is the framebuffer's first row.

    ``y_ndc = 2 y / H - 1`` puts image row 0 at the bottom of OpenGL's window, which is the first
    row ``glReadPixels`` returns: no flip is needed. Depth is mapped onto [-1, 1] nearest first.
    """
    h, w = size
    out = np.empty((v.shape[0], 4), dtype=np.float64)
    if camera.kind == "orthographic":
        lo, hi = (v[:, 2].min(), v[:, 2].max()) if len(v) else (0.0, 1.0)
        mid, half = (lo + hi) / 2.0, max((hi - lo) / 2.0 * 1.001, 1e-6)
        out[:, 0] = 2.0 * v[:, 0] / w - 1.0
        out[:, 1] = 2.0 * v[:, 1] / h - 1.0
        out[:, 2] = (v[:, 2] - mid) / half
        out[:, 3] = 1.0
    elif camera.kind == "perspective":
        z = v[:, 2]
        if len(v) and z.min() <= 0:
            raise InputError(f"perspective render: every vertex needs Z > 0 (in front of the camera), got Z = {z.min():.4g}")
        near, far = (z.min() * 0.999, z.max() * 1.001) if len(v) else (1.0, 2.0)
        far = max(far, near * 1.001)
        out[:, 0] = 2.0 * (camera.fx * v[:, 0] + camera.cx * z) / w - z
        out[:, 1] = 2.0 * (camera.fy * v[:, 1] + camera.cy * z) / h - z
        out[:, 2] = (z * (far + near) - 2.0 * far * near) / (far - near)
        out[:, 3] = z
    else:
        raise InputError(f"render: unknown camera kind '{camera.kind}' (orthographic, perspective)")
    return out.astype(np.float32)


class _Rasterizer:
    """The process's OpenGL context, shader programs and framebuffers (created once, used under a lock)."""

    def __init__(self) -> None:
        try:
            import moderngl
        except ImportError:
            raise DependencyError(
                "the renderer needs moderngl: pip install moderngl (and Mesa's EGL: Debian libegl1 libgl1-mesa-dri)"
            ) from None
        before_opengl()
        try:
            # moderngl's stub types each keyword setting as a dict; backend is a string
            self.ctx = moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]
        except Exception as exc:  # glcontext raises plain Exceptions for a missing libEGL / driver
            raise DependencyError(
                f"the renderer could not create an OpenGL context through EGL ({exc}); "
                "install Mesa's EGL (Debian: libegl1 libgl1-mesa-dri)"
            ) from None
        self.programs: dict[int, object] = {}
        self.framebuffers: dict[tuple[int, int, int], moderngl.Framebuffer] = {}
        self.lock = threading.Lock()

    def _program(self, slots: int):  # a moderngl.Program
        if slots not in self.programs:
            vertex, geometry, fragment = _shaders(slots)
            self.programs[slots] = self.ctx.program(
                vertex_shader=vertex, geometry_shader=geometry, fragment_shader=fragment
            )
        return self.programs[slots]

    def _framebuffer(self, h: int, w: int, slots: int):  # a moderngl.Framebuffer
        key = (h, w, slots)
        fbo = self.framebuffers.pop(key, None)
        if fbo is None:
            fbo = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer((w, h), 4, dtype="f4") for _ in range(1 + slots)],
                depth_attachment=self.ctx.depth_renderbuffer((w, h)),
            )
            while len(self.framebuffers) >= _MAX_FRAMEBUFFERS:
                self.framebuffers.pop(next(iter(self.framebuffers))).release()
        self.framebuffers[key] = fbo  # most recently used last
        return fbo

    def draw(
        self, clip: np.ndarray, depth: np.ndarray, values: np.ndarray, faces: np.ndarray, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rasterise -> (``(H, W, 4)`` weights w0 w1, depth, triangle + 1; ``(H, W, C)`` interpolated ``values`` ``(N, C)``)."""
        h, w = size
        channels = values.shape[1]
        slots_total = -(-channels // 4)
        out_values = np.zeros((h, w, 4 * slots_total), dtype=np.float32)
        pixels = np.empty((h, w, 4), dtype=np.float32)
        with self.lock, self.ctx:
            for first in range(0, max(slots_total, 1), _MAX_SLOTS):  # one pass unless > 28 channels
                slots = min(_MAX_SLOTS, slots_total - first)
                cols = values[:, 4 * first:4 * (first + slots)]
                data = np.zeros((clip.shape[0], 5 + 4 * slots), dtype=np.float32)
                data[:, :4] = clip
                data[:, 4] = depth
                data[:, 5:5 + cols.shape[1]] = cols
                fbo = self._pass(data, faces, h, w, slots)
                fbo.read_into(pixels, components=4, attachment=0, dtype="f4")
                for i in range(slots):
                    slot = np.empty((h, w, 4), dtype=np.float32)
                    fbo.read_into(slot, components=4, attachment=1 + i, dtype="f4")
                    out_values[..., 4 * (first + i):4 * (first + i + 1)] = slot
        return pixels, out_values[..., :channels]

    def _pass(self, data: np.ndarray, faces: np.ndarray, h: int, w: int, slots: int):
        """Draw the indexed triangles into the framebuffer of ``(h, w, slots)`` and return it."""
        fbo = self._framebuffer(h, w, slots)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        if faces.shape[0]:
            vbo = self.ctx.buffer(data)
            ibo = self.ctx.buffer(faces.astype(np.uint32))
            names = ["in_clip", "in_depth"] + [f"in_a{i}" for i in range(slots)]
            layout = "4f 1f" + " 4f" * slots
            vao = self.ctx.vertex_array(self._program(slots), [(vbo, layout, *names)], index_buffer=ibo, index_element_size=4)
            vao.render(mode=self.ctx.TRIANGLES)
            vao.release()
            ibo.release()
            vbo.release()
        return fbo


_RASTERIZER: Optional[_Rasterizer] = None
_CREATE_LOCK = threading.Lock()


def _rasterizer() -> _Rasterizer:
    global _RASTERIZER
    if _RASTERIZER is None:
        with _CREATE_LOCK:
            if _RASTERIZER is None:
                _RASTERIZER = _Rasterizer()
    return _RASTERIZER


def _draw(
    clip: np.ndarray, depth: np.ndarray, values: np.ndarray, faces: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`_Rasterizer.draw` on the process's context; a context that another library lost
    (Open3D's offscreen window terminates the process's EGL display when it closes, and every
    context on it dies) is made again, once."""
    global _RASTERIZER
    rasterizer = _rasterizer()
    try:
        return rasterizer.draw(clip, depth, values, faces, size)
    except Exception as exc:  # moderngl.Error ("cannot create renderbuffer", ...) on a dead context
        if not type(exc).__module__.startswith(("moderngl", "_moderngl")):
            raise
        with _CREATE_LOCK:
            if _RASTERIZER is rasterizer:
                _RASTERIZER = None  # the next call makes a new context
    return _rasterizer().draw(clip, depth, values, faces, size)


def pncc_codes(reference_vertices: np.ndarray) -> np.ndarray:
    """The projected normalised coordinate code of each vertex: its position on a reference (mean) face
    scaled per axis onto [0, 1] (x, y, z each from the reference's minimum to its maximum).

    Args:
        reference_vertices: ``(N, 3)`` the reference face in any frame (one point per mesh vertex).

    Returns:
        ``(N, 3)`` float32 in [0, 1]; an axis of zero extent gives 0.5.
    """
    ref = np.asarray(reference_vertices, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != 3 or not np.isfinite(ref).all():
        raise InputError(f"pncc_codes expects finite (N, 3) reference vertices, got shape {ref.shape}")
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    span = hi - lo
    codes = np.where(span > 0, (ref - lo) / np.where(span > 0, span, 1.0), 0.5)
    return codes.astype(np.float32)


def project(vertices: np.ndarray, camera: Camera = ORTHOGRAPHIC) -> np.ndarray:
    """The image px ``(N, 2)`` float64 of vertices ``(N, 3)``: the dense 2D points of a mesh.

    Orthographic: ``(x, y)`` as they are; perspective: ``(fx X / Z + cx, fy Y / Z + cy)`` (NaN for
    ``Z <= 0``).
    """
    v = np.asarray(vertices, dtype=np.float64)
    if camera.kind != "perspective":
        return v[:, :2].copy()
    z = np.where(v[:, 2] > 0, v[:, 2], np.nan)
    return np.stack([camera.fx * v[:, 0] / z + camera.cx, camera.fy * v[:, 1] / z + camera.cy], axis=1)


def vertex_visibility(
    result: RenderResult, vertices: np.ndarray, tolerance: float, camera: Camera = ORTHOGRAPHIC,
    own: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Which points the camera sees: not behind another surface in ``result`` (a render of the scene).

    A point is hidden when the four pixel centres around it are all covered by surfaces nearer than
    its own depth by more than ``tolerance`` (in depth units: px for an orthographic render of a
    mesh in image px), unless the triangle covering its pixel is one of the point's ``own`` (its own surface seen at a grazing
    angle, where the depth at the pixel centre can differ from the point's by more than any slack).
    Points outside the image count as not visible.

    Args:
        result: a :func:`render` of the mesh (and any occluders).
        vertices: ``(N, 3)`` points in the render's frame.
        tolerance: the depth slack for the point's own surface.
        camera: the camera of ``result``.
        own: ``(N, K)`` int triangle indices of ``result`` on which each point lies (padded with
            values below -1), e.g. :func:`incident_triangles` for the mesh's vertices; or None.

    Returns:
        ``(N,)`` bool.
    """
    v = np.asarray(vertices, dtype=np.float64)
    h, w = result.mask.shape
    xy = project(v, camera)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h) & np.isfinite(xy).all(axis=1)
    xy = np.nan_to_num(xy)
    col = np.clip(np.floor(xy[:, 0]), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(xy[:, 1]), 0, h - 1).astype(np.int64)
    # the farthest of the four pixel centres around the point (+inf where nothing is drawn): hidden
    # only when covered nearer all around, so a steep surface is not hidden by its own slope
    c0 = np.clip(np.floor(xy[:, 0] - 0.5), 0, w - 1).astype(np.int64)
    r0 = np.clip(np.floor(xy[:, 1] - 0.5), 0, h - 1).astype(np.int64)
    c1, r1 = np.minimum(c0 + 1, w - 1), np.minimum(r0 + 1, h - 1)
    d = result.depth
    around = np.maximum(np.maximum(d[r0, c0], d[r0, c1]), np.maximum(d[r1, c0], d[r1, c1])).astype(np.float64)
    seen = v[:, 2] <= around + tolerance
    if own is not None:
        seen |= (np.asarray(own).reshape(len(v), -1) == result.triangle[row, col][:, None]).any(axis=1)
    return inside & seen


def incident_triangles(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """``(N, K)`` int64: the triangles around each vertex (K = the largest valence), padded with -2."""
    f = np.asarray(faces, dtype=np.int64)
    flat = f.reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_vertices)
    k = int(counts.max()) if counts.size else 0
    out = np.full((num_vertices, max(k, 1)), -2, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    slot = np.arange(flat.size) - np.repeat(starts, counts)
    out[flat[order], slot] = order // 3
    return out
