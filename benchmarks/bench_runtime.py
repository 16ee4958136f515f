"""The ONNX runtime against the PyTorch path, measured in the same run.

Prints, with the CPU model and the load average (timings taken while other jobs run are not
comparable):

* the network, warm, at batch 1 and 10 (random crops, the shipped model): PyTorch (inference
  mode) against ONNX Runtime (``facerecon.runtime.session.MeshRuntime``), ms per batch and per
  face, and their ratio; the issue's goal is <= 8 ms per face at batch 1;
* MTCNN, warm, with facerecon's crop policy (the most confident face, and all faces) on
  JianzhuGuo.jpg and t1.jpg of ../shared/data/photos (the bundled astronaut when absent):
  PyTorch's networks against ONNX Runtime's, same cascade;
* MTCNN's ONNX networks as shipped (PReLUs after convolutions in ONNX Runtime's blocked channel
  layout) against an export with element-wise PReLUs: each network on the candidate batches of a
  one-face and a group photo, and the crop policy on both photos;
* fresh processes reconstructing one photo: ``facerecon predict photo -o face.obj`` on the ONNX
  runtime (the default; checked never to import torch) against ``--runtime torch``, wall time;
  the goal for the ONNX runtime is <= 1.5 s.

Both sides run on ``--threads`` threads (2: the project's machines); ONNX Runtime's workers do not
spin. Measurements alternate between the two sides, ``--rounds`` times, and the medians are printed.

    python benchmarks/bench_runtime.py [--threads 2] [--repeats 10] [--rounds 2] [--processes 3]
        [--skip network,detection,layout,process]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
sys.path.insert(0, str(ROOT))

from timing import median_ms  # noqa: E402  (benchmarks/, the script's folder)

from facerecon.machine import cpu_model  # noqa: E402  (after the checkout is on the path)


def _alternate(a, b, repeats: int, rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Medians of ``a`` and ``b`` measured in alternating rounds."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(median_ms(a, repeats, warm=3))
        tb.append(median_ms(b, repeats, warm=3))
    return statistics.median(ta), statistics.median(tb)


def bench_network(threads: int, repeats: int, rounds: int) -> None:
    import numpy as np
    import torch

    from facerecon.engine.predict import default_checkpoint, load_model
    from facerecon.runtime.session import MeshRuntime, default_onnx_model

    model = load_model(default_checkpoint())
    runtime = MeshRuntime(default_onnx_model(), threads=threads)
    rng = np.random.default_rng(0)
    five0 = np.array([[-0.33, -0.28], [0.33, -0.28], [0.0, 0.05], [-0.27, 0.38], [0.27, 0.38]], np.float32)
    print(f"{'network':<28} {'PyTorch ms':>11} {'ONNX RT ms':>11} {'per face':>16} {'torch/ORT':>9}")
    for batch in (1, 10):
        crops = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        five = np.repeat(five0[None], batch, 0)
        image = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        lm = torch.from_numpy(five)

        def run_torch() -> None:
            with torch.inference_mode():
                model.network(image, landmarks5=lm)

        t_torch, t_ort = _alternate(run_torch, lambda: runtime.run(crops, five), repeats, rounds)
        per = f"{t_torch / batch:.1f} / {t_ort / batch:.1f}"
        print(f"{f'batch {batch}':<28} {t_torch:>11.1f} {t_ort:>11.1f} {per:>16} {t_torch / t_ort:>8.2f}x")
    bench_sessions(runtime, threads, repeats, rounds)


def bench_sessions(runtime, threads: int, repeats: int, rounds: int) -> None:  # type: ignore[no-untyped-def]
    """MeshRuntime's way of running the network (batch axis fixed to 1; one face on ``threads``
    intra-op threads spinning within the run, several faces spread over ``threads`` workers
    running a one-thread session at once) against one session with ``threads`` intra-op threads
    and the dynamic batch axis, alternating: one face, and 6 faces (a group photo); and one face
    against a one-thread session whose workers never spin."""
    import numpy as np

    from facerecon.runtime.session import make_session

    rng = np.random.default_rng(1)
    dynamic = make_session(runtime.path, threads)
    names = runtime.output_names
    print(f"sessions: MeshRuntime (batch fixed to 1; one face on {threads} spinning threads, several over {threads} workers) against one {threads}-thread session, dynamic batch")
    for batch in (1, 6):
        feeds = {"crops": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)}
        if runtime.takes_landmarks5:
            feeds["landmarks5"] = np.repeat(np.array([[[82, 90], [142, 90], [112, 125], [88, 158], [136, 158]]], np.float32), batch, 0)
        ours, theirs = _alternate(lambda: runtime.run(**feeds), lambda: dynamic.run(names, feeds), repeats, max(rounds, 6))
        print(f"  {batch} face(s): {ours:.2f} ms against {theirs:.2f} ms ({theirs / ours:.2f}x)")
        if batch == 1:
            single = make_session(runtime.path, 1, batch=1)
            ours, theirs = _alternate(lambda: runtime.run(**feeds), lambda: single.run(names, feeds), repeats, max(rounds, 6))
            print(f"  1 face against a one-thread session: {ours:.2f} ms against {theirs:.2f} ms ({theirs / ours:.2f}x; spinning: {runtime.spin})")


def bench_detection(threads: int, repeats: int, rounds: int) -> None:
    from facerecon.detect import FaceDetector
    from facerecon.imageio import load_image
    from facerecon.runtime.session import OnnxFaceDetector

    photos = [PHOTOS / n for n in ("JianzhuGuo.jpg", "t1.jpg") if (PHOTOS / n).is_file()]
    photos = photos or [ROOT / "facerecon" / "assets" / "astronaut.png"]
    torch_det, onnx_det = FaceDetector(), OnnxFaceDetector()
    print(f"\n{'MTCNN (crop policy)':<28} {'PyTorch ms':>11} {'ONNX RT ms':>11} {'faces':>16} {'torch/ORT':>9}")
    for photo in photos:
        image = load_image(photo)
        for all_faces in (False, True):
            n = len(onnx_det.crop(image, all_faces=all_faces))
            t_torch, t_ort = _alternate(
                lambda: torch_det.crop(image, all_faces=all_faces), lambda: onnx_det.crop(image, all_faces=all_faces), repeats, rounds
            )
            label = f"{photo.name} {'all' if all_faces else 'best'}"
            print(f"{label:<28} {t_torch:>11.1f} {t_ort:>11.1f} {n:>16} {t_torch / t_ort:>8.2f}x")


def bench_mtcnn_layout(threads: int, repeats: int, rounds: int) -> None:
    """MTCNN's networks as shipped (PReLUs in ONNX Runtime's blocked layout) against the same
    networks with element-wise PReLUs (``export_mtcnn(..., blocked=False)``): each network on
    candidate batches of a one-face photo and of a group photo, and the crop policy on photos."""
    import numpy as np

    from facerecon.imageio import load_image
    from facerecon.runtime.export import export_mtcnn
    from facerecon.runtime.session import OnnxFaceDetector, OnnxMTCNN

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        export_mtcnn(tmp, blocked=False)
        element, blocked = OnnxMTCNN(tmp, threads=threads), OnnxMTCNN(threads=threads)
        print(f"\n{'MTCNN networks':<28} {'element-wise ms':>15} {'blocked ms':>11} {'ratio':>7}")
        from facerecon.mtcnn_cascade import pack_levels, pyramid_scales

        for label, (h, w) in (("P-Net, 413x551 photo", (551, 413)), ("P-Net, 1024x709 photo", (709, 1024))):
            scales = pyramid_scales(h, w, 32.0)
            mosaic = pack_levels([(int(h * k + 1), int(w * k + 1)) for k in scales])
            canvas = rng.uniform(-1, 1, (1, *mosaic.shape, 3)).astype(np.float32)
            a, b = _alternate(lambda: element.run_pnet(canvas, mosaic.outside), lambda: blocked.run_pnet(canvas, mosaic.outside), repeats, rounds)
            print(f"{label:<28} {a:>15.2f} {b:>11.2f} {a / b:>6.2f}x")
        for name, size, counts in (("R-Net", 24, (35, 364)), ("O-Net", 48, (7, 37))):
            run = "run_rnet" if size == 24 else "run_onet"
            for n in counts:
                crops = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
                a, b = _alternate(lambda: getattr(element, run)(crops), lambda: getattr(blocked, run)(crops), repeats, rounds)
                print(f"{f'{name}, {n} candidates':<28} {a:>15.2f} {b:>11.2f} {a / b:>6.2f}x")
        photos = [PHOTOS / n for n in ("JianzhuGuo.jpg", "t1.jpg") if (PHOTOS / n).is_file()]
        detectors = OnnxFaceDetector(mtcnn_folder=tmp), OnnxFaceDetector()
        for photo in photos or [ROOT / "facerecon" / "assets" / "astronaut.png"]:
            image = load_image(photo)
            for all_faces in (False, True):
                a, b = _alternate(lambda: detectors[0].crop(image, all_faces=all_faces), lambda: detectors[1].crop(image, all_faces=all_faces), repeats, rounds)
                label = f"{photo.name} {'all' if all_faces else 'best'}"
                print(f"{label:<28} {a:>15.2f} {b:>11.2f} {a / b:>6.2f}x")


#: ``facerecon predict`` in the same process, checking at exit that torch was never imported.
RUNTIME_SCRIPT = (
    "import os, sys\n"
    "from facerecon.cli import main\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    if 'torch' in sys.modules:\n"
    "        os._exit(3)\n"
)


def bench_processes(threads: int, processes: int) -> None:
    photo = PHOTOS / "JianzhuGuo.jpg"
    photo = photo if photo.is_file() else ROOT / "facerecon" / "assets" / "astronaut.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "predict --runtime onnx (no torch)": [sys.executable, "-c", RUNTIME_SCRIPT, "--quiet", "predict", str(photo), "-o", f"{tmp}/face.obj", "--runtime", "onnx"],
            "predict --runtime torch": [sys.executable, "-m", "facerecon", "--quiet", "predict", str(photo), "-o", f"{tmp}/face.obj", "--runtime", "torch"],
        }
        walls: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(processes):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                walls[name].append(time.perf_counter() - t0)
    print(f"\nfresh process, one photo ({photo.name}), wall s (median of {processes})")
    med = {k: statistics.median(v) for k, v in walls.items()}
    for name, value in med.items():
        print(f"  {name:<34} {value:6.2f} s")
    ratio = med["predict --runtime torch"] / med["predict --runtime onnx (no torch)"]
    print(f"  ratio torch / onnx                 {ratio:6.2f}x   (goal: onnx <= 1.5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: network, detection, layout, process")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    import torch

    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {args.threads} threads, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if "network" not in skip:
        bench_network(args.threads, args.repeats, args.rounds)
    if "detection" not in skip:
        bench_detection(args.threads, args.repeats, args.rounds)
    if "layout" not in skip:
        bench_mtcnn_layout(args.threads, args.repeats, max(args.rounds, 4))
    if "process" not in skip:
        bench_processes(args.threads, args.processes)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
