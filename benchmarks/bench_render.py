"""Rasterising a face mesh on the CPU: facerecon's renderer against the libraries it could have used.

    .venv/bin/python benchmarks/bench_render.py            # template (7,001 v) and BFM mean (53,215 v), 450 and 120 px
    .venv/bin/python benchmarks/bench_render.py --quick    # the template only

Candidates (each skipped with a note when not installed or not working here):

- ``moderngl``: :func:`facerecon.render.render` (OpenGL through Mesa's EGL: triangle ids and float32
  barycentrics in one pass; depth and attributes interpolated in numpy).
- ``numpy``: a vectorised z-buffer in float64 (every pixel centre of every triangle's bounding box,
  edge functions, the nearest kept by one sort): the strongest simple baseline, and the reference
  the others' precision is measured against.
- ``embree``: trimesh's ray casting with Embree (``embreex``): one ray per pixel, a new BVH per mesh.
- ``pyrender``: OpenGL through PyOpenGL on EGL, flat vertex colours (8-bit) and its float depth.
- ``open3d``: Open3D's legacy ``Visualizer`` offscreen through EGL, 8-bit colour and float depth.

Every frame renders a new mesh (the vertices move a little), as ``predict`` does for each photo:
upload, acceleration structures and read-back are all inside the time. "first" is the first call
in this process (context, shaders, buffers), "warm" the median of the next ``--reps`` frames, and
"ratio" the candidate's warm time over moderngl's. Precision: the largest depth error (px) and
attribute error (the PNCC code in [0, 1]) against the float64 numpy z-buffer, over pixels whose
3x3 neighbourhood the reference covers with one triangle (so edge tie-breaking is not counted;
"n/a" where no triangle is that large); "coverage" the share of pixels whose covered / empty state
agrees with the reference (pyrender culls back faces and antialiases edges).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # pyrender: headless through EGL
if not os.environ.get("XDG_RUNTIME_DIR"):  # silences Open3D's EGL start-up complaint
    import tempfile

    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="xdg_")

import numpy as np

from facerecon.mesh.templates import load_template
from facerecon.render import pncc_codes, render

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfm-mean"

Frame = tuple[np.ndarray, np.ndarray, np.ndarray]  # depth (H, W), mask (H, W), attribute (H, W, 3)


def place(points: np.ndarray, size: int, y_up: bool) -> np.ndarray:
    """Points scaled into a ``size`` px image: the face 80 % of its height, z away from the camera in px."""
    p = np.asarray(points, dtype=np.float64).copy()
    if y_up:  # BFM: y up, z towards the viewer
        p[:, 1] *= -1
        p[:, 2] *= -1
    lo, hi = p.min(axis=0), p.max(axis=0)
    scale = 0.8 * size / (hi[1] - lo[1])
    centre = (lo + hi) / 2
    out = (p - centre) * scale
    out[:, :2] += size / 2
    return out


def face_meshes(quick: bool) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    lvl = load_template("hemisphere").levels[-1]
    meshes = [("template 7,001 v", lvl.vertices.astype(np.float64), lvl.faces, False)]
    if not quick and SHARED.is_dir():
        from scipy.io import loadmat

        mean = (np.load(SHARED / "u_shp.npy") + np.load(SHARED / "u_exp.npy")).reshape(-1, 3)
        tri = loadmat(SHARED / "tri.mat")["tri"].T.astype(np.int64) - 1
        meshes.append(("BFM mean 53,215 v", mean.astype(np.float64), tri, True))
    elif not quick:
        print(f"(BFM mean skipped: {SHARED} not found)")
    return meshes


# ---------------------------------------------------------------------------------------------
# candidates: each returns (depth, mask, attribute)


def run_moderngl(v: np.ndarray, f: np.ndarray, attr: np.ndarray, h: int, w: int) -> Frame:
    r = render(v, f, (h, w), {"a": attr})
    return r.depth, r.mask, r.attributes["a"]


def run_numpy(v: np.ndarray, f: np.ndarray, attr: np.ndarray, h: int, w: int) -> Frame:
    """A float64 z-buffer: candidate pixel centres per triangle, edge functions, nearest by one sort."""
    t = v[f]  # (F, 3, 3)
    lo, hi = t[:, :, :2].min(axis=1), t[:, :, :2].max(axis=1)
    c0 = np.clip(np.ceil(lo[:, 0] - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.floor(hi[:, 0] - 0.5), -1, w - 1).astype(np.int64)
    r0 = np.clip(np.ceil(lo[:, 1] - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.floor(hi[:, 1] - 0.5), -1, h - 1).astype(np.int64)
    nx, ny = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    counts = nx * ny
    tid = np.repeat(np.arange(len(f)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    col = c0[tid] + local % nx[tid]
    row = r0[tid] + local // nx[tid]
    px, py = col + 0.5, row + 0.5
    a, b, c = t[tid, 0], t[tid, 1], t[tid, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = ((b[:, 0] - px) * (c[:, 1] - py) - (b[:, 1] - py) * (c[:, 0] - px)) / np.where(area == 0, 1, area)
    w1 = ((c[:, 0] - px) * (a[:, 1] - py) - (c[:, 1] - py) * (a[:, 0] - px)) / np.where(area == 0, 1, area)
    w2 = 1.0 - w0 - w1
    ok = (area != 0) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    tid, pix, bary = tid[ok], (row * w + col)[ok], np.stack([w0, w1, w2], axis=1)[ok]
    z = (bary * t[tid, :, 2]).sum(axis=1)
    order = np.lexsort((z, pix))
    first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
    depth = np.full(h * w, np.inf)
    depth[pix[first]] = z[first]
    out = np.zeros((h * w, attr.shape[1]))
    out[pix[first]] = np.einsum("pk,pkc->pc", bary[first], attr[f[tid[first]]])
    return depth.reshape(h, w), np.isfinite(depth).reshape(h, w), out.reshape(h, w, -1)


def make_embree() -> Optional[Callable[..., Frame]]:
    try:
        import embreex  # noqa: F401  (only whether it imports)
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError:
        return None

    def run(v: np.ndarray, f: np.ndarray, attr: np.ndarray, h: int, w: int) -> Frame:
        mesh = trimesh.Trimesh(v, f, process=False)
        jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        origins = np.stack([jj.ravel(), ii.ravel(), np.full(h * w, v[:, 2].min() - 1.0)], axis=1)
        dirs = np.tile([0.0, 0.0, 1.0], (h * w, 1))
        tri, ray, loc = RayMeshIntersector(mesh).intersects_id(origins, dirs, multiple_hits=False, return_locations=True)
        depth = np.full(h * w, np.inf)
        depth[ray] = loc[:, 2]
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
        out = np.zeros((h * w, attr.shape[1]))
        out[ray] = np.einsum("pk,pkc->pc", bary, attr[f[tri]])
        return depth.reshape(h, w), np.isfinite(depth).reshape(h, w), out.reshape(h, w, -1)

    return run


def make_pyrender() -> Optional[Callable[..., Frame]]:
    try:
        import pyrender
        import trimesh
    except ImportError:
        return None
    renderers: dict[tuple[int, int], object] = {}

    def run(v: np.ndarray, f: np.ndarray, attr: np.ndarray, h: int, w: int) -> Frame:
        if (h, w) not in renderers:
            renderers[(h, w)] = pyrender.OffscreenRenderer(w, h)
        z0 = v[:, 2].min() - 1.0
        p = np.stack([v[:, 0] - w / 2, h / 2 - v[:, 1], -(v[:, 2] - z0)], axis=1)  # OpenGL camera frame
        tm = trimesh.Trimesh(p, f, vertex_colors=np.round(attr * 255).astype(np.uint8), process=False)
        scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[1.0, 1.0, 1.0])
        scene.add(pyrender.Mesh.from_trimesh(tm, smooth=True))
        zfar = float(v[:, 2].max() - z0 + 1.0)
        scene.add(pyrender.OrthographicCamera(xmag=w / 2, ymag=h / 2, znear=0.5, zfar=zfar))
        color, depth = renderers[(h, w)].render(scene, flags=pyrender.RenderFlags.FLAT)
        mask = depth > 0
        # pyrender linearises depth as for a perspective camera even for an orthographic one: undo it
        n, fa = 0.5, zfar
        ndc = (fa + n - 2.0 * n * fa / np.where(mask, depth, 1.0)) / (fa - n)
        linear = n + (ndc + 1.0) / 2.0 * (fa - n)
        return np.where(mask, linear + z0, np.inf), mask, color[..., :3] / 255.0

    return run


def make_open3d() -> Optional[Callable[..., Frame]]:
    try:
        import open3d as o3d
    except ImportError:
        return None
    windows: dict[tuple[int, int], tuple[object, object]] = {}
    distance = 2000.0  # the camera stands this far (px) before the face; vertices pre-scaled to project exactly

    def window(h: int, w: int, v: np.ndarray, f: np.ndarray) -> tuple[object, object]:
        vis = o3d.visualization.Visualizer()
        if not vis.create_window(width=w, height=h, visible=False):
            raise RuntimeError("no offscreen window")
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
        vis.add_geometry(mesh)
        opt = vis.get_render_option()
        opt.light_on, opt.mesh_show_back_face = False, True
        params = vis.get_view_control().convert_to_pinhole_camera_parameters()
        params.intrinsic.set_intrinsics(w, h, distance, distance, w / 2 - 0.5, h / 2 - 0.5)
        params.extrinsic = np.eye(4)
        vis.get_view_control().convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        return vis, mesh

    def run(v: np.ndarray, f: np.ndarray, attr: np.ndarray, h: int, w: int) -> Frame:
        z0 = v[:, 2].min()
        zc = distance + (v[:, 2] - z0)
        p = np.stack([(v[:, 0] - w / 2) * zc / distance, (v[:, 1] - h / 2) * zc / distance, zc], axis=1)
        if (h, w) not in windows:
            windows[(h, w)] = window(h, w, p, f)
        vis, mesh = windows[(h, w)]
        mesh.vertices = o3d.utility.Vector3dVector(p)
        mesh.triangles = o3d.utility.Vector3iVector(f.astype(np.int32))
        mesh.vertex_colors = o3d.utility.Vector3dVector(attr)
        vis.update_geometry(mesh)
        vis.poll_events()
        vis.update_renderer()
        depth = np.asarray(vis.capture_depth_float_buffer(do_render=True))
        color = np.asarray(vis.capture_screen_float_buffer(do_render=False))
        mask = depth > 0
        return np.where(mask, depth - distance + z0, np.inf), mask, color

    return run


# ---------------------------------------------------------------------------------------------
# measurement


def interior(reference_mask: np.ndarray, reference_tri: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood the reference covers with one triangle."""
    t = np.where(reference_mask, reference_tri, -1)
    pad = np.pad(t, 1, constant_values=-2)
    same = np.ones_like(reference_mask)
    for di in range(3):
        for dj in range(3):
            same &= pad[di:di + t.shape[0], dj:dj + t.shape[1]] == t
    return same & reference_mask


def measure(run: Callable[..., Frame], v: np.ndarray, f: np.ndarray, attr: np.ndarray, size: int, reps: int) -> tuple[float, float, Frame]:
    t0 = time.perf_counter()
    run(v, f, attr, size, size)
    first = time.perf_counter() - t0
    times, out = [], None
    for k in range(reps):
        moved = v + np.array([0.01 * (k + 1), 0.0, 0.0])
        t0 = time.perf_counter()
        out = run(moved, f, attr, size, size)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), out


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the template mesh only")
    ap.add_argument("--reps", type=int, default=10, help="warm frames per candidate (median)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[450, 120])
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    candidates: list[tuple[str, Optional[Callable[..., Frame]]]] = [
        ("moderngl", run_moderngl), ("numpy", run_numpy), ("embree", make_embree()),
        ("pyrender", make_pyrender()), ("open3d", make_open3d()),
    ]
    for name, run in candidates:
        if run is None:
            print(f"({name} skipped: not installed)")
    print(f"{'mesh':18} {'size':>5} {'candidate':9} {'first ms':>9} {'warm ms':>8} {'ratio':>6} {'depth err px':>12} {'attr err':>9} {'coverage':>8}")
    for label, points, faces, y_up in face_meshes(args.quick):
        for size in args.sizes:
            v = place(points, size, y_up)
            attr = pncc_codes(points).astype(np.float64)
            last = v + np.array([0.01 * args.reps, 0.0, 0.0])  # the vertices of each candidate's last frame
            ref = run_numpy(last, faces, attr, size, size)
            inner = interior(ref[1], render(last, faces, (size, size)).triangle)  # ids for the interior test only
            base = None
            for name, run in candidates:
                if run is None:
                    continue
                try:
                    first, warm, out = measure(run, v, faces, attr, size, args.reps)
                except Exception as exc:  # a candidate that cannot run here is reported, not fatal
                    print(f"{label:18} {size:>5} {name:9} failed: {type(exc).__name__}: {exc}"[:160])
                    continue
                base = warm if name == "moderngl" else base
                ok = inner & out[1]
                derr = float(np.abs(out[0][ok] - ref[0][ok]).max()) if ok.any() else float("nan")
                aerr = float(np.abs(out[2][ok] - ref[2][ok]).max()) if ok.any() else float("nan")
                cover = float((out[1] == ref[1]).mean())
                ratio = warm / base if base else float("nan")
                errs = f"{derr:12.2e} {aerr:9.2e}" if ok.any() else f"{'n/a':>12} {'n/a':>9}"  # no triangle spans 3x3 px
                print(f"{label:18} {size:>5} {name:9} {first * 1e3:9.1f} {warm * 1e3:8.2f} {ratio:6.1f} {errs} {cover:8.4f}")


if __name__ == "__main__":
    main()
