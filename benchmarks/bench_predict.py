"""Prediction speed on this machine: facerecon against 3DDFA_V2 and MediaPipe in the same run,
then facerecon's stages.

First (``benchmarks/peers.py``), warm, the three tools interleaved in rounds on one-face photos
(JianzhuGuo.jpg, aflw-test.jpg, emma_watson_01.jpg of ../shared/data/photos) and on the many-face
t1.jpg (every face): facerecon on its default runtime (the shipped ONNX model, MTCNN in ONNX
Runtime), 3DDFA_V2 and MediaPipe Face Mesh through the timing workers of ../shared/peers (built
by its ``setup_peers.sh`` into ``PEERS_DIR``, default /tmp/peers; a peer not built is left out).
It prints a markdown table ready for docs/benchmarks.md, with the CPU model and the load
average, and the ratios measured in this run.

Then, for one photo, the PyTorch runtime's stages after a warm-up (decode, detection, network,
export of the .obj + .json); the network's FLOPs and achieved GFLOP/s beside a plain
``torch.mm`` of about the same FLOPs in the same run; the wall time of whole
``facerecon predict photo -o face.obj`` processes beside ``python -c "import torch"``; video
frames/s on a pan-and-zoom clip made from the photo; and folder throughput at batch 1 and 8.

The load average is printed at the start and the end: timings taken while other jobs run are
not comparable (rerun on an idle machine; machines of this kind also differ by up to 2x, so
quote the CPU model printed on the first line).

    python benchmarks/bench_predict.py [--checkpoint best.pt] [--photo PATH] [--repeats 10]
        [--threads 2] [--rounds 2] [--processes 3] [--video-frames 60] [--folder-images 8]
        [--skip peers,stages,process,video,folder]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import median_ms

from facerecon.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: the peers table's photos: (name, every face)
PEER_PHOTOS = [("JianzhuGuo.jpg", False), ("aflw-test.jpg", False), ("emma_watson_01.jpg", False), ("t1.jpg", True)]


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "?"


def _checkpoint(args: argparse.Namespace, tmp: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from facerecon.engine.predict import default_checkpoint

    shipped = default_checkpoint()
    if shipped is not None:
        return shipped
    import torch

    from facerecon.config import load_config
    from facerecon.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from facerecon.model.network import build_network

    cfg = load_config(str(ROOT / "facerecon" / "configs" / "aflw-mobilenet.toml"))
    path = tmp / "random.pt"
    net = build_network(cfg.model)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": net.state_dict()}, path)
    return path


def _row(name: str, ms: float) -> str:
    return f"  {name:<34}{ms:>6.2f}"


def bench_peers_table(args: argparse.Namespace, tmp: Path) -> None:
    """facerecon (default runtime) against 3DDFA_V2 and MediaPipe, one run (benchmarks/peers.py)."""
    from peers import PEERS_DIR, bench_peers

    photos = [(SHARED / "photos" / name, every) for name, every in PEER_PHOTOS if (SHARED / "photos" / name).is_file()]
    if not photos:
        print("\npeers: ../shared/data/photos is absent: left out")
        return
    print(f"\nfacerecon (default runtime: ONNX) against the peers in {PEERS_DIR}, warm medians of {args.repeats} "
          f"after 5 calls, {args.rounds} rounds, the tools interleaved; load average {_load()}")
    rows = bench_peers(photos, args.rounds, 5, args.repeats, tmp)
    print(f"\n{cpu_model()}, {os.cpu_count()} cores, 2 threads each; load average at the end {_load()}\n")
    print("\n".join(rows))


def bench_stages(args: argparse.Namespace, model, photo: Path, tmp: Path) -> None:
    import numpy as np

    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, write_record, write_result
    from facerecon.imageio import load_photo
    from facerecon.mesh.export import export_mesh

    image = load_photo(photo)
    detector = FaceDetector()
    predictor = Predictor(model, detector, batch_size=1)
    print(f"\nsingle photo: {photo.name} ({image.shape[1]}x{image.shape[0]}), median of {args.repeats} after a warm-up")
    decode = median_ms(lambda: load_photo(photo), args.repeats)
    detection = median_ms(lambda: detector.crop(image), args.repeats)
    crops = detector.crop(image)
    print(f"  (the face was found by the {detector.last_search!r} search; p = {crops[0].probability:.4f})")
    prepared = predictor.prepare(photo, image, crops)
    pixels = np.stack([p.pixels for p in prepared])
    network = median_ms(lambda: predictor.network.outputs(pixels, [p.crop for p in prepared]), args.repeats)
    (result,) = predictor.reconstruct(prepared)
    export = median_ms(lambda: write_result(result, tmp / "face.obj"), args.repeats)
    import json

    from facerecon.mesh.export import mesh_bytes

    def encode() -> None:
        mesh_bytes(".obj", result.vertices_px, result.faces, result.colors)
        json.dumps(result.record(), separators=(",", ":"))

    encode_ms = median_ms(encode, args.repeats)

    def export_durable() -> None:  # the same files flushed to the disk before the rename
        export_mesh(tmp / "durable.obj", result.vertices_px, result.faces, result.colors, durable=True)
        write_record(tmp / "durable.json", result.record(), durable=True)

    durable_ms = median_ms(export_durable, args.repeats)
    try:  # what the export cost before: trimesh's writer and indented JSON
        import trimesh

        def encode_before() -> None:
            mesh = trimesh.Trimesh(vertices=result.vertices_px, faces=result.faces, process=False, validate=False)
            mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=result.colors)
            mesh.export(file_type="obj")
            json.dumps(result.record(), indent=2)

        before_ms: float | None = median_ms(encode_before, max(3, args.repeats // 2))
    except ImportError:
        before_ms = None
    def post_processing() -> float:  # reconstruct's own work: its time less the network's, call by call
        before = predictor.timings.network
        t0 = time.perf_counter()
        predictor.reconstruct(prepared)
        return time.perf_counter() - t0 - (predictor.timings.network - before)

    post_processing()  # warm-up
    post = 1000.0 * statistics.median(post_processing() for _ in range(max(3, args.repeats // 2)))
    total = detection + network + max(post, 0.0) + export
    print(f"  {'stage (PyTorch runtime)':<34}{'ms':>6}")
    print(_row("decode (JPEG/PNG)", decode))
    print(_row("detection (MTCNN, tuned)", detection))
    print(_row("network", network))
    print(_row("to photo px + colours + pose", max(post, 0.0)))
    print(_row("export (.obj + .json)", export))
    print(_row("  of which formatting (CPU)", encode_ms))
    print(_row("  of which writing + rename (2)", max(export - encode_ms, 0.0)))
    print(_row("  the same with fsync (durable)", durable_ms))
    if before_ms is not None:
        print(_row("  formatting with trimesh (before)", before_ms))
    print(_row("total (without decode)", total))
    _bench_facenet_mtcnn(args, image)
    _bench_flops(args, model, predictor, prepared, pixels, network)


def _bench_facenet_mtcnn(args: argparse.Namespace, image) -> None:
    """facenet-pytorch's MTCNN on the same photo, where it is installed."""
    import torch

    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        return
    ref = MTCNN(keep_all=True, select_largest=False, post_process=False).eval()
    with torch.inference_mode():
        old = median_ms(lambda: ref.detect(image[None]), args.repeats)
    print(f"  for comparison, facenet-pytorch's MTCNN as run before (20 px faces): {old:.2f} ms")


def _bench_flops(args: argparse.Namespace, model, predictor, prepared, pixels, network: float) -> None:
    """The network's FLOPs and achieved throughput, beside a plain matrix product of the same size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        if predictor.takes_landmarks5:
            from facerecon.engine.predict import landmarks5_crop_units

            model.network(batch, landmarks5=torch.from_numpy(landmarks5_crop_units([p.crop for p in prepared])))
        else:
            model.network(batch)
    flops = counter.get_total_flops()
    n = max(64, round((flops / 2.0) ** (1.0 / 3.0)))
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = median_ms(lambda: torch.mm(a, b), args.repeats)
    print(f"\n  network: {flops / 1e9:.3f} GFLOP per face (torch.utils.flop_counter: convolutions, matrix products)"
          f" -> {flops / (network / 1000) / 1e9:.1f} GFLOP/s achieved")
    print(f"  torch.mm {n}x{n} @ {n}x{n} ({2 * n**3 / 1e9:.3f} GFLOP): {mm:.2f} ms -> {2 * n**3 / (mm / 1000) / 1e9:.1f} GFLOP/s")


def bench_process(args: argparse.Namespace, photo: Path, tmp: Path) -> None:
    exe = [sys.executable, "-m", "facerecon"]
    env = dict(os.environ)

    stages: list[dict[str, float]] = []

    def wall(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, cwd=tmp, env=env, text=True)
        elapsed = time.perf_counter() - t0
        found = re.search(r"detection ([\d.]+) ms, network ([\d.]+) ms, export ([\d.]+) ms", done.stdout + done.stderr)
        if found:  # what `facerecon -v predict` prints for its one photo: first calls included
            stages.append(dict(zip(("detection", "network", "export"), map(float, found.groups()))))
        return elapsed

    floor = [wall([sys.executable, "-c", "import torch"]) for _ in range(args.processes + 1)][1:]
    helps = [wall(exe + ["--help"]) for _ in range(2)][1:]
    cmd = exe + ["-v", "predict", str(photo), "-o", str(tmp / "proc.obj")]
    walls = [wall(cmd) for _ in range(args.processes + 1)][1:]  # the first run warms the file cache
    stages = stages[1:]
    print(f"\nwhole processes (median of {args.processes}, after one warm-up run):")
    print(f"  python -c 'import torch'                         {statistics.median(floor):6.2f} s   (the floor torch sets)")
    print(f"  facerecon --help                                 {statistics.median(helps):6.2f} s")
    print(f"  facerecon predict {photo.name} -o face.obj  {statistics.median(walls):6.2f} s   (goal <= 4.0 s)")
    if stages:
        med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        print(f"  as `facerecon -v predict` prints them (one photo, fresh process, first calls included): detection "
              f"{med['detection']:.1f} ms (goal <= 15), network {med['network']:.1f} ms (goal <= 40), export {med['export']:.1f} ms (goal <= 5)")


def bench_video(args: argparse.Namespace, model, photo: Path, tmp: Path) -> None:
    import cv2
    import numpy as np

    from facerecon.detect import FaceDetector
    from facerecon.engine.video import VideoPredictor, open_frames
    from facerecon.imageio import load_photo

    image = load_photo(photo)
    detector = FaceDetector()
    (face,) = detector.crop(image)
    fx, fy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[2] / 2
    h, w = image.shape[:2]
    out_w, out_h = 640, 480
    clip = tmp / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (out_w, out_h))
    for t in range(args.video_frames):
        a = t / max(args.video_frames - 1, 1)
        rw = min(w, h * out_w / out_h) * (0.95 - 0.25 * a)
        rh = rw * out_h / out_w
        x0 = float(np.clip(fx - rw * (0.65 - 0.3 * a), 0, w - rw))
        y0 = float(np.clip(fy - rh / 2, 0, h - rh))
        m = np.array([[out_w / rw, 0, -x0 * out_w / rw], [0, out_h / rh, -y0 * out_h / rh]])
        writer.write(cv2.cvtColor(cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR))
    writer.release()
    from facerecon.api import Reconstructor

    default = Reconstructor()  # what `facerecon predict clip.mp4 -o out/` runs: the default runtime
    print(f"\nvideo: {args.video_frames} frames of {out_w}x{out_h} (pan and zoom over {photo.name}), .obj + frames.jsonl:")
    for name, runner in (("default runtime", default.video_runner()), ("PyTorch runtime", VideoPredictor(model, detector=detector))):
        s = runner.run(open_frames(clip), tmp / "video")
        n = max(s.frames, 1)
        print(f"  {name}: {s.fps:.1f} frames/s end to end (goal >= 30); {s.detections} detection(s), {s.tracked} frames tracked")
        print(f"    per frame: decode {1000 * s.decode / n:.1f} ms, face (track or detect) {1000 * s.detect / n:.1f} ms, "
              f"network {1000 * s.network / n:.1f} ms, export {1000 * s.export / n:.1f} ms")


def bench_folder(args: argparse.Namespace, model, tmp: Path) -> None:
    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, write_result
    from facerecon.imageio import load_photo

    folder = SHARED / "photos"
    photos = sorted(p for p in folder.glob("*.jpg") if p.stat().st_size < 5_000_000) if folder.is_dir() else []
    if not photos:
        photos = [ROOT / "facerecon" / "assets" / "astronaut.png"]
    photos = (photos * args.folder_images)[: args.folder_images]
    print(f"\nfolder of {len(photos)} photos (decode + detection + network + export .ply):")
    for batch in (1, 8):
        predictor = Predictor(model, FaceDetector(), batch_size=batch)
        t0 = time.perf_counter()
        pending = []
        for path in photos:
            image = load_photo(path)
            pending += predictor.prepare(path, image, predictor.crops_of(image))
            del image
            if len(pending) >= batch:
                for j, res in enumerate(predictor.reconstruct(pending)):
                    write_result(res, tmp / f"{res.source.stem}_{j}.ply")
                pending = []
        for j, res in enumerate(predictor.reconstruct(pending)):
            write_result(res, tmp / f"last_{j}.ply")
        elapsed = time.perf_counter() - t0
        t = predictor.timings
        print(f"  batch {batch}: {len(photos) / elapsed:.2f} images/s (network {1000 * t.network / len(photos):.0f} ms/image, "
              f"detection {1000 * t.detect / len(photos):.0f} ms/image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped model (else a random MobileNetV2 network)")
    parser.add_argument("--photo", default=str(SHARED / "photos" / "JianzhuGuo.jpg"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the peers table")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--video-frames", type=int, default=60)
    parser.add_argument("--folder-images", type=int, default=8)
    parser.add_argument("--skip", default="", help="comma-separated: peers, stages, process, video, folder")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    # as `facerecon predict` does: on a busy machine OpenMP threads sleep instead of spinning
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except (OSError, AttributeError):
        busy = False
    if "OMP_WAIT_POLICY" not in os.environ and busy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from facerecon.allocator import retain_freed_memory

    retained = retain_freed_memory()  # as `facerecon predict` does, before torch loads
    import torch

    torch.set_num_threads(args.threads)
    from facerecon.engine.predict import load_model

    photo = Path(args.photo)
    if not photo.is_file():
        photo = ROOT / "facerecon" / "assets" / "astronaut.png"
    # instances with the same CPU model name differ in vector width (AVX2 / AVX-512): ~2x for the kernels
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"machine: {cpu_model()} ({capability}), {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average at start (1, 5, 15 min): {_load()}  (an idle 2-core machine is below ~0.3); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}; "
          f"freed memory {'kept in the heap' if retained else 'returned to the OS (glibc defaults or not glibc)'}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "peers" not in skip:
            bench_peers_table(args, tmp)
        model = load_model(_checkpoint(args, tmp))
        cfg = model.config.model
        print(f"model: {model.path.name}: {cfg.backbone}, {getattr(model.network, 'num_vertices', '?')} vertices, input {cfg.image_size or 224} px")
        if "stages" not in skip:
            bench_stages(args, model, photo, tmp)
        if "process" not in skip:
            bench_process(args, photo, tmp)
        if "video" not in skip:
            bench_video(args, model, photo, tmp)
        if "folder" not in skip:
            bench_folder(args, model, tmp)
    print(f"\nload average at the end: {_load()}")


if __name__ == "__main__":
    main()
