"""facerecon against 3DDFA_V2 and MediaPipe Face Mesh, warm, in one run (``bench_predict.py``).

facerecon runs in this process on its default runtime (``Reconstructor()``: the shipped ONNX
model and MTCNN in ONNX Runtime, 2 threads); the peers run in their own virtualenvs through the
timing workers of ``../shared/peers`` (``worker_3ddfa.py``, ``worker_mediapipe.py``; built by its
``setup_peers.sh`` into ``PEERS_DIR``, default ``/tmp/peers``). A peer that is not built is left out
with a line saying so. One call is what each tool does for one decoded photo, nothing written:

* facerecon: detection (MTCNN with the crop policy) / network (all faces of the photo in one batch)
  / the rest (crops, photo px, colours, landmarks, pose), the most confident face on a one-face
  photo, every face on a many-face one;
* 3DDFA_V2 (ONNX Runtime, 2 threads): FaceBoxes detection / regression + 38,365-vertex dense
  reconstruction of every face it finds;
* MediaPipe Face Mesh (legacy graph, 468 points): one number (``max_num_faces`` 1, or 10 on a
  many-face photo).

Each tool takes its turn on each photo (5 untimed calls, then the median of 10), the order
reversed in every other round; the ratios are of medians measured in this run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPTS = ROOT.parent / "shared" / "peers"
PEERS_DIR = Path(os.environ.get("PEERS_DIR") or "/tmp/peers")
#: (tool, python of its virtualenv, worker script, working folder)
WORKERS = {
    "3DDFA_V2": (PEERS_DIR / "venv-3ddfa" / "bin" / "python", "worker_3ddfa.py", PEERS_DIR / "3DDFA_V2"),
    "MediaPipe": (PEERS_DIR / "venv-mp" / "bin" / "python", "worker_mediapipe.py", PEERS_DIR),
}


class PeerWorker:
    """A peer's persistent timing worker (JSON lines on its stdin and stdout; ``worker_common.py``)."""

    def __init__(self, name: str, log: Path) -> None:
        python, script, cwd = WORKERS[name]
        self.name = name
        self.log = open(log, "w")  # closed by close()
        self.proc = subprocess.Popen([str(python), str(PEER_SCRIPTS / script)], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        hello = json.loads(self.proc.stdout.readline() or '{"ready": false, "error": "no reply"}')  # type: ignore[union-attr]
        if not hello.get("ready"):
            self.close()
            raise RuntimeError(f"{name} worker did not start: {str(hello.get('error'))[-300:]}")

    def ask(self, photo: Path, mode: str, warm: int, reps: int) -> dict[str, Any]:
        """Stage medians (ms), the total's median and the faces of ``reps`` calls after ``warm``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"photo": str(photo), "mode": mode, "warm": warm, "reps": reps}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"{self.name} on {photo.name}: {reply['error'][-300:]}")
        stages = {k: statistics.median(v) for k, v in reply["stages"].items()}
        return {"stages": stages, "total": statistics.median(reply["total"]), "faces": reply["faces"]}

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write('{"quit": true}\n')
                self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def start_peers(log_dir: Path) -> dict[str, PeerWorker]:
    """The peers that are built, started; one line for each that is not."""
    workers = {}
    for name, (python, _, cwd) in WORKERS.items():
        if not python.is_file() or not cwd.is_dir() or not PEER_SCRIPTS.is_dir():
            print(f"  {name}: not built in {PEERS_DIR} (bash ../shared/peers/setup_peers.sh GITDIR): left out")
            continue
        try:
            workers[name] = PeerWorker(name, log_dir / f"worker-{name}.log")
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            print(f"  {name}: left out ({exc})")
    return workers


def facerecon_call(rec: Any, image: Any) -> tuple[dict[str, float], float, int]:
    """One photo through ``Reconstructor``'s predictor: (stage ms, total ms, faces)."""
    predictor = rec.predictor
    t0 = time.perf_counter()
    crops = predictor.crops_of(image)
    t1 = time.perf_counter()
    net0 = predictor.timings.network
    results = predictor.reconstruct(predictor.prepare(Path("photo"), image, crops))
    t2 = time.perf_counter()
    net = predictor.timings.network - net0
    stages = {"detection": 1000 * (t1 - t0), "network": 1000 * net, "rest": 1000 * (t2 - t1 - net)}
    return stages, 1000 * (t2 - t0), len(results)


def time_facerecon(rec: Any, image: Any, warm: int, reps: int) -> dict[str, Any]:
    for _ in range(warm):
        facerecon_call(rec, image)
    calls = [facerecon_call(rec, image) for _ in range(reps)]
    stages = {k: statistics.median(c[0][k] for c in calls) for k in calls[0][0]}
    return {"stages": stages, "total": statistics.median(c[1] for c in calls), "faces": calls[-1][2]}


def bench_peers(photos: list[tuple[Path, bool]], rounds: int, warm: int, reps: int, log_dir: Path) -> list[str]:
    """The table's rows (markdown): each photo, each tool, medians of this run; ``photos`` are
    (path, every face)."""
    from facerecon.api import Reconstructor
    from facerecon.imageio import load_photo

    recs = {False: Reconstructor(batch_size=1), True: Reconstructor(all_faces=True, batch_size=32)}
    workers = start_peers(log_dir)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for rnd in range(rounds):
            for photo, all_faces in photos:
                image = load_photo(photo)
                tools = ["facerecon", *workers]
                for tool in tools if rnd % 2 == 0 else tools[::-1]:
                    if tool == "facerecon":
                        r = time_facerecon(recs[all_faces], image, warm, reps)
                    else:
                        mode = "all" if all_faces and tool == "MediaPipe" else "default"
                        r = workers[tool].ask(photo, mode, warm, reps)
                    results.setdefault((photo.name, tool), []).append(r)
    finally:
        for worker in workers.values():
            worker.close()
    return table(photos, results, list(workers))


def _median(runs: list[dict[str, Any]], key: str, stage: str | None = None) -> float:
    return statistics.median(r["stages"][stage] if stage else r[key] for r in runs)


def table(photos: list[tuple[Path, bool]], results: dict[tuple[str, str], list[dict[str, Any]]], peers: list[str]) -> list[str]:
    head = "| photo | facerecon det / net / total ms | faces |"
    rule = "|---|---|---|"
    if "3DDFA_V2" in peers:
        head += " 3DDFA_V2 det / reg+dense / total ms | faces |"
        rule += "---|---|"
    if "MediaPipe" in peers:
        head += " MediaPipe total ms | faces |"
        rule += "---|---|"
    if "3DDFA_V2" in peers:
        head += " facerecon / 3DDFA_V2 |"
        rule += "---|"
    rows = [head, rule]
    for photo, all_faces in photos:
        fr = results[(photo.name, "facerecon")]
        total = _median(fr, "total")
        row = (f"| {photo.name}{' (all faces)' if all_faces else ''} | {_median(fr, '', 'detection'):.1f} / "
               f"{_median(fr, '', 'network'):.1f} / **{total:.1f}** | {fr[-1]['faces']} |")
        if "3DDFA_V2" in peers:
            td = results[(photo.name, "3DDFA_V2")]
            reg = _median(td, "", "regression") + _median(td, "", "dense")
            row += f" {_median(td, '', 'detection'):.1f} / {reg:.1f} / **{_median(td, 'total'):.1f}** | {td[-1]['faces']} |"
        if "MediaPipe" in peers:
            mp = results[(photo.name, "MediaPipe")]
            row += f" {_median(mp, 'total'):.1f} | {mp[-1]['faces']} |"
        if "3DDFA_V2" in peers:
            row += f" {total / _median(results[(photo.name, '3DDFA_V2')], 'total'):.2f}x |"
        rows.append(row)
    return rows
