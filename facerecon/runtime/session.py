"""ONNX Runtime sessions for the exported network and MTCNN: inference without torch.

Imports numpy, onnxruntime and facerecon's torch-free modules only (``tests/test_runtime.py``
checks that ``torch`` is never imported). Sessions run on 2 intra-op threads whose workers do not
spin (``session.intra_op.allow_spinning = 0``): spinning workers starve every other thread of a
2-core machine (docs/runtime.md). The mesh network's session is the exception (one thread, see
:class:`MeshRuntime`).

* :class:`MeshRuntime`: an exported network (``facerecon export``) on a batch of crops, all faces of
  a photo at once (spread face by face over 2 workers running one session).
* :class:`OnnxMTCNN`: MTCNN's three networks with the cascade's interface
  (:mod:`facerecon.mtcnn_cascade`); :class:`OnnxFaceDetector` is ``FaceDetector``'s crop policy on them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.detect import FaceDetector
from facerecon.errors import DependencyError, InputError

__all__ = [
    "META_KEY", "MTCNN_FILES", "make_session", "MeshRuntime", "OnnxMTCNN", "OnnxFaceDetector",
    "default_onnx_model", "resolve_onnx_model", "asset_path", "optimised_model_path",
]

#: The ONNX metadata key holding an exported network's description (``facerecon.runtime.export``).
META_KEY = "facerecon"
#: MTCNN's exported networks, by stage, as shipped in ``facerecon/assets``.
MTCNN_FILES = {"pnet": "mtcnn_pnet.onnx", "rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}
#: Intra-op threads of every session (the project's machines have 2 cores).
DEFAULT_THREADS = 2


def asset_path(name: str) -> Path | None:
    """A file shipped in ``facerecon/assets``, or None when this installation lacks it."""
    path = Path(__file__).resolve().parent.parent / "assets" / name
    return path if path.is_file() else None


def default_onnx_model() -> Path | None:
    """The shipped default model as ONNX (``facerecon/assets/default_model.onnx``), when present."""
    return asset_path("default_model.onnx")


def resolve_onnx_model(model: str | os.PathLike[str] | None) -> Path:
    """The given ``.onnx`` file, else the shipped default (or a clear error)."""
    if model is not None:
        return Path(model)
    found = default_onnx_model()
    if found is None:
        raise InputError("this installation ships no ONNX model; write one with 'facerecon export model.onnx --checkpoint RUN/best.pt'")
    return found


def optimised_model_path(model: str | os.PathLike[str], batch: int | None = None) -> Path | None:
    """Where ONNX Runtime's optimised copy of ``model`` is kept for this machine, or None when
    caching is off (``FACERECON_ONNX_CACHE=0``); ``batch``: the copy optimised for that batch
    size (:func:`make_session`), a file of its own.

    Fully optimised graphs (ONNX Runtime's blocked ``NCHWc`` convolution layouts) depend on the
    CPU's vector width, so the key holds the CPU's identity and ONNX Runtime's version, with the
    model file's path, size and modification time. Loading the copy takes ~0.1 s instead of the
    0.4-1 s that optimising the graph takes, which is most of a fresh process's start-up."""
    if os.environ.get("FACERECON_ONNX_CACHE", "1") == "0":
        return None
    import hashlib

    import onnxruntime as ort

    from facerecon.machine import cpu_identity, user_cache_dir

    path = Path(model).resolve()
    stat = path.stat()
    key = "\n".join([str(path), str(stat.st_size), str(stat.st_mtime_ns), ort.__version__, cpu_identity()])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    suffix = "" if batch is None else f"-batch{int(batch)}"
    return user_cache_dir() / "onnx" / f"{path.stem}-{digest}{suffix}.onnx"


def _options(threads: int, batch: int | None = None, spin: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if batch is not None:  # the exports name their batch axis "batch" (facerecon.runtime.export)
        options.add_free_dimension_override_by_name("batch", int(batch))
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # spin: workers spin between the parallel loops of a run and stop when it ends (a sleeping
    # worker woken for each of the network's ~550 small operations costs more than it saves)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings (unused initialisers, hardware-specific copies) are not the user's concern
    return options


def make_session(
    model: str | os.PathLike[str] | bytes, threads: int = DEFAULT_THREADS, cache: bool = True, batch: int | None = None, spin: bool = False
) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads, which do
    not spin (with ``spin``: spin within a run only, stopping when it ends). With ``cache``, a model file's optimised graph is kept for this machine
    (:func:`optimised_model_path`, written atomically) and loaded as is the next time. With
    ``batch``, the batch axis is fixed to that size, so ONNX Runtime folds the shape arithmetic
    that depends on it (the session then takes that batch size only).

    Raises:
        DependencyError: onnxruntime is not installed.
        InputError: the file is missing or not an ONNX model.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("the ONNX runtime needs onnxruntime: pip install onnxruntime") from None
    if isinstance(model, bytes):
        return _session(model, _options(threads, batch, spin), "model")
    if not Path(model).is_file():
        raise InputError(f"{model}: no such ONNX model (write one with 'facerecon export')")
    cached = optimised_model_path(model, batch) if cache else None
    if cached is not None and cached.is_file():
        options = _options(threads, batch, spin)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with contextlib.suppress(InputError):  # a damaged copy: optimise again and replace it
            return _session(os.fspath(cached), options, cached)
    options = _options(threads, batch, spin)
    tmp: Path | None = None
    if cached is not None:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            options.optimized_model_filepath = os.fspath(tmp)
    session = _session(os.fspath(model), options, model)
    if tmp is not None and cached is not None:
        try:
            os.replace(tmp, cached)  # atomic: a reader sees the whole copy or none
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return session


def _session(model: str | bytes, options: Any, name: Any) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"{name}: not a usable ONNX model ({' '.join(str(exc).split())[:200]})") from None


class MeshRuntime:
    """An exported facerecon network in ONNX Runtime.

    Attributes:
        path: the ``.onnx`` file.
        info: the export's description (kind, backbone, template, facerecon version, ...).
        crop_size: side of the crops the network takes, px.
        stage_faces: (F_k, 3) int64 triangles of each stage; the last is the mesh's.
        landmark_reference: (68, 3) frontal landmarks for the head pose, or None.
        template: the template's name; ``input_size``, ``takes_landmarks5``, ``device``: the rest
            of a network runner's interface (:class:`facerecon.engine.results.NetworkRunner`).

    The network runs with the batch axis fixed to 1. One face runs in a session on ``threads``
    intra-op threads that spin between the network's ~550 small operations and stop when the run
    ends: 1.4x as fast as one thread (workers that sleep between operations gain nothing). A
    batch of several faces (all the faces of a photo) is spread face by face over ``threads``
    worker threads that run a one-thread session at once (ONNX Runtime's sessions take concurrent
    runs): two faces at a time on the two cores beat ONNX Runtime's own 2-thread batch by
    1.16-1.40x (6 faces). On a busy machine (1-minute load >= cores, when the runtime is made)
    nothing spins and one face runs on the one-thread session too (``benchmarks/bench_runtime.py``,
    "sessions", docs/runtime.md).
    """

    device = "cpu"

    def __init__(self, path: str | os.PathLike[str], threads: int = DEFAULT_THREADS) -> None:
        self.path = Path(path)
        from facerecon.machine import machine_busy

        self.threads = max(1, int(threads))
        #: Whether one face runs on all ``threads`` with spinning workers (an idle machine).
        self.spin = self.threads > 1 and not machine_busy()
        self.session = make_session(self.path, self.threads if self.spin else 1, batch=1, spin=self.spin)
        self._batch_session: Any = None if self.spin else self.session  # one thread, made on the first batch
        self._pool: Any = None
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if meta is None:
            raise InputError(f"{self.path}: not a facerecon network export (write one with 'facerecon export')")
        self.info: dict[str, Any] = json.loads(meta)
        arrays = np.load(io.BytesIO(base64.b64decode(self.info.pop("arrays"))))
        self.crop_size = int(self.info["crop_size"])
        self.input_names = list(self.info["inputs"])
        self.output_names = list(self.info["outputs"])
        self.stage_faces = [arrays[f"faces{k}"].astype(np.int64) for k in range(sum(n.startswith("stage") for n in self.output_names))]
        self.landmark_reference = arrays["landmark_reference"] if "landmark_reference" in arrays.files else None
        self._reference_face = arrays["reference_face"] if "reference_face" in arrays.files else None
        self.template = self.info.get("template")

    @property
    def input_size(self) -> int:
        return self.crop_size

    def reference_face(self) -> np.ndarray | None:
        """(V, 3) model v2's mean face, crop units (PNCC's colours); None: the template's."""
        return self._reference_face

    def outputs(self, pixels: np.ndarray, crops: Any) -> dict[str, Any]:
        """The network on ``(B, S, S, 3)`` uint8 crops (:class:`facerecon.crop.FaceCrop` s for the
        five points), as :meth:`facerecon.engine.results.NetworkRunner.outputs` gives them."""
        from facerecon.crop import landmarks5_crop_units

        out = self.run(pixels, landmarks5_crop_units(crops) if self.takes_landmarks5 else None)
        return {
            "vertices": out["vertices"],
            "landmarks": out.get("landmarks"),
            "colors": out.get("colors"),
            "stages": [out[f"stage{k}"] for k in range(len(self.stage_faces))],
            "stage_faces": self.stage_faces,
        }

    @property
    def takes_landmarks5(self) -> bool:
        """Whether the network takes MTCNN's five points (model v2)."""
        return "landmarks5" in self.input_names

    def run(self, crops: np.ndarray, landmarks5: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The network on a batch.

        Args:
            crops: (B, S, S, 3) uint8 RGB crops (S = ``crop_size``).
            landmarks5: (B, 5, 2) float MTCNN five points in crop units (NaN rows: none), for
                networks that take them; None gives NaN rows.

        Returns:
            ``vertices`` (B, V, 3) crop units, ``landmarks`` (B, 68, 3), ``colors`` (B, V, 3) in
            [0, 1] where the model has them, ``stage0``... (B, V_k, 3): float32 arrays by name.
        """
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (self.crop_size, self.crop_size, 3):
            raise InputError(f"crops must be (B, {self.crop_size}, {self.crop_size}, 3) uint8, got shape {crops.shape}")
        feeds = {"crops": crops}
        if self.takes_landmarks5:
            if landmarks5 is None:
                landmarks5 = np.full((len(crops), 5, 2), np.nan, np.float32)
            feeds["landmarks5"] = np.ascontiguousarray(landmarks5, dtype=np.float32).reshape(len(crops), 5, 2)
        names = self.output_names
        faces = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(len(crops))]
        if len(faces) <= 1 or self.threads == 1:
            runs = [self.session.run(names, face) for face in faces]
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="facerecon-network")
            if self._batch_session is None:
                self._batch_session = make_session(self.path, 1, batch=1)
            session = self._batch_session
            runs = [f.result() for f in [self._pool.submit(session.run, names, face) for face in faces]]
        if not runs:  # no crops: empty arrays of the outputs' shapes
            shapes = {o.name: o.shape for o in self.session.get_outputs()}
            return {n: np.zeros((0, *shapes[n][1:]), np.float32) for n in names}
        return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}


class OnnxMTCNN:
    """MTCNN's three exported networks with the cascade's interface (NHWC float32 in, numpy out).

    Args:
        folder: where ``mtcnn_pnet.onnx``, ``mtcnn_rnet.onnx``, ``mtcnn_onet.onnx`` are
            (default: the shipped ones in ``facerecon/assets``).
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, threads: int = DEFAULT_THREADS) -> None:
        paths = {k: (Path(folder) / name if folder is not None else asset_path(name)) for k, name in MTCNN_FILES.items()}
        found = {k: p for k, p in paths.items() if p is not None and p.is_file()}
        missing = [MTCNN_FILES[k] for k in paths if k not in found]
        if missing:
            raise DependencyError(f"MTCNN's ONNX networks are missing ({', '.join(missing)}); write them with 'facerecon export --mtcnn FOLDER'")
        self.pnet, self.rnet, self.onet = (make_session(found[k], threads) for k in ("pnet", "rnet", "onet"))

    def run_pnet(self, canvas: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, H, W, 3), (1, 1, H - 2, W - 2) bool -> regression (4, h, w), probability (h, w)."""
        reg, prob = self.pnet.run(None, {"canvas": np.ascontiguousarray(canvas, np.float32), "outside": np.ascontiguousarray(outside, bool)})
        return reg[0], prob[0, 1]

    def run_rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 24, 24, 3) -> regression (N, 4), probability (N,)."""
        reg, prob = self.rnet.run(None, {"crops": np.ascontiguousarray(crops, np.float32)})
        return reg, prob[:, 1]

    def run_onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 48, 48, 3) -> regression (N, 4), points (N, 10), probability (N,)."""
        reg, pts, prob = self.onet.run(None, {"crops": np.ascontiguousarray(crops, np.float32)})
        return reg, pts, prob[:, 1]

    def warm(self, mosaic: Any) -> None:
        """One call of each network (P-Net at the mosaic's size when given)."""
        shape = (12, 12) if mosaic is None else mosaic.shape
        self.run_pnet(np.zeros((1, *shape, 3), np.float32), np.zeros((1, 1, shape[0] - 2, shape[1] - 2), bool))
        self.run_rnet(np.zeros((1, 24, 24, 3), np.float32))
        self.run_onet(np.zeros((1, 48, 48, 3), np.float32))


class OnnxFaceDetector(FaceDetector):
    """:class:`facerecon.detect.FaceDetector` (the same crop policy and searches) on
    :class:`OnnxMTCNN`. ``mtcnn_folder``: where the exported networks are (default: shipped)."""

    def __init__(self, mtcnn_folder: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(device="cpu", **kwargs)
        self.mtcnn_folder = mtcnn_folder

    def _load_nets(self) -> OnnxMTCNN:
        return OnnxMTCNN(self.mtcnn_folder)
