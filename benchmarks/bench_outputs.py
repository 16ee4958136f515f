"""The extra time per photo of each optional output of ``predict``: textured meshes, the UV texture,
the depth / PNCC / normal maps and the dense 2D points (computing and writing the files).

    .venv/bin/python benchmarks/bench_outputs.py                        # the astronaut, a template face
    .venv/bin/python benchmarks/bench_outputs.py --photo P --mesh M.obj # a mesh predict wrote for photo P

Without ``--mesh`` the hemisphere template (7,001 vertices, the topology every facerecon model
outputs) is placed over the astronaut's face (~200 px wide) with its dome towards the camera.
"first" is the first call in the process (the OpenGL context and shaders are created there, once
per process); "warm" is the median of ``--reps`` further calls. Files go to a temporary folder,
written as predict writes them (atomically, without fsync).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from facerecon.imageio import load_image
from facerecon.mesh.maps import map_path, render_maps, save_map
from facerecon.mesh.templates import load_template
from facerecon.mesh.texture import save_textured_mesh, save_uv_texture, texture_from_photo, uv_layout, uv_texture
from facerecon.render import project

ASSET = Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png"


def template_face() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = load_template("hemisphere")
    tv = t.levels[-1].vertices.astype(np.float64)
    return tv, t.levels[-1].faces, uv_layout(tv, t.boundary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=ASSET)
    ap.add_argument("--mesh", type=Path, default=None, help="a mesh predict wrote for --photo (template topology)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    photo = load_image(args.photo)
    tv, faces, layout = template_face()
    if args.mesh is not None:
        import trimesh

        vertices = np.asarray(trimesh.load(args.mesh, process=False).vertices, dtype=np.float64)
    else:
        vertices = tv * [95.0, 115.0, 90.0] + [250.0, 160.0, 0.0]  # the astronaut's face, image px
    out = Path(tempfile.mkdtemp(prefix="bench_outputs_"))
    h, w = photo.shape[:2]

    def textured(suffix: str) -> Callable[[], object]:
        return lambda: save_textured_mesh(out / f"face{suffix}", texture_from_photo(photo, vertices, faces), durable=False)

    def one_map(kind: str) -> Callable[[], object]:
        def run() -> object:
            maps, _ = render_maps([vertices], faces, (h, w), [kind], pncc_reference=tv)
            return save_map(map_path(out / "face", kind), maps[kind], durable=False)

        return run

    cases: list[tuple[str, Callable[[], object]]] = [
        ("--texture (.obj + .mtl + .png)", textured(".obj")),
        ("--texture (.glb)", textured(".glb")),
        ("--uv-texture (256 px)", lambda: save_uv_texture(out / "uv.png", uv_texture(photo, vertices, faces, layout), durable=False)),
        ("--maps depth", one_map("depth")),
        ("--maps pncc", one_map("pncc")),
        ("--maps normals", one_map("normals")),
        ("--maps depth,pncc,normals", lambda: [save_map(map_path(out / "face", k), m, durable=False) for k, m in
                                               render_maps([vertices], faces, (h, w), ["depth", "pncc", "normals"], pncc_reference=tv)[0].items()]),
        ("dense 2D points (to lists)", lambda: np.round(project(vertices), 2).tolist()),
    ]
    print(f"photo {args.photo.name} {w}x{h}, mesh {len(vertices)} vertices / {len(faces)} faces")
    print(f"{'output':34} {'first ms':>9} {'warm ms':>8}")
    for name, run in cases:
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        print(f"{name:34} {first * 1e3:9.1f} {np.median(times) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
