"""Checkpoint files: the one place that writes and reads them (train, eval, predict, export).

A checkpoint is a plain dict of tensors and Python values, loadable with
``torch.load(path, weights_only=True)``; :func:`training_checkpoint` lists its keys.

* :func:`save_checkpoint` serialises in memory first, then writes a temporary file beside the
  target, fsyncs and renames it into place: a full disk or a kill leaves the previous file
  untouched, and a full disk is reported as one line naming the file.
* :func:`load_checkpoint` refuses, with one line naming the file, what is not a facerecon
  checkpoint: an empty or truncated file, a pickle that needs code to load (never executed),
  a missing ``config`` or ``model``, non-finite weights, and model sizes no network could have
  (``model.graph.hidden = 1e6``; earlier flat spellings translated first) before anything is allocated.
* :func:`clean_stale_temps` removes the temporary files a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from facerecon.errors import FaceReconError, InputError

CHECKPOINT_FORMAT = "facerecon-checkpoint"
CHECKPOINT_VERSION = 1

#: Upper bounds of the model sizes a checkpoint may ask for (far above any real network; a
#: hand-edited value above them would allocate gigabytes before failing).
MODEL_LIMITS = {
    "graph.hidden": 8192,
    "prior.head_hidden": 65_536,
    "graph.layers_per_block": 512,
    "graph.refined_levels": 64,
    "blocks": 64,
    "num_landmarks": 100_000,
    "image_size": 8192,
    "prior.components": 10_000,
}
#: The same for the per-block lists (every entry).
MODEL_LIST_LIMITS = {
    "graph.hidden_per_block": 8192,
    "graph.layers_per_block_list": 512,
    "spiral.widths": 8192,
    "spiral.hops": 64,
}

#: The temporary files a writer killed mid-save leaves in a run folder (``atomic_path`` names
#: them ``.STEM.RANDOM.tmp.SUFFIX``): the checkpoints, the metrics log and the configuration.
RUN_TEMPORARIES = (".last.*.tmp.pt", ".best.*.tmp.pt", ".metrics.*.tmp.jsonl", ".config.*.tmp.json")


class CheckpointWriteError(FaceReconError):
    """A checkpoint could not be written (full disk, permissions); the previous file is intact."""

    exit_code = 1


def training_checkpoint(
    config: dict, model: Any, optimizer: Any, scheduler: Any, scaler: Any, state: dict, reference: torch.Tensor | None
) -> dict:
    """The dict a training run saves (``last.pt``, ``best.pt``): format and versions, the run's
    configuration, its position (epoch, step in the epoch, global step), the best validation
    Chamfer and the last metrics, the running means of the progress line, the states of the
    model, optimizer, schedule and gradient scaler, the RNG states (exact resume) and the frontal
    landmark reference (head pose in ``predict``)."""
    from facerecon import __version__

    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "facerecon_version": __version__,
        "config": config,
        "epoch": state["epoch"],
        "step_in_epoch": state["step_in_epoch"],
        "global_step": state["global_step"],
        "best": state["best"],
        "metrics": dict(state["metrics"]),
        "running": dict(state.get("running") or {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng,
        "landmark_reference": reference,
    }


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict) -> None:
    """Write ``checkpoint`` to ``path`` atomically (never a half-written checkpoint).

    Raises:
        CheckpointWriteError: the file could not be written (e.g. no space left on the device);
            whatever ``path`` held before is unchanged and the temporary file is removed.
    """
    from facerecon.io_utils import atomic_path

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # serialisation errors are bugs, not I/O: let them surface
    size = buffer.tell()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                _write_all(fh, buffer)
    except InputError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(path.parent)
            reason = f"no space left on the device ({size / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)"
        kept = " the previous one is kept" if path.exists() else " nothing was written"
        raise CheckpointWriteError(f"{path}: cannot write the checkpoint: {reason};{kept}") from None


def share_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` the same checkpoint as ``src`` (``best.pt`` of the epoch ``last.pt`` was
    written for): a hard link renamed into place, which needs no disk space, so a disk that held
    ``last.pt`` also holds ``best.pt``; a copy, written atomically, where links are impossible.

    Raises:
        CheckpointWriteError: as :func:`save_checkpoint` (``dst`` is then unchanged).
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.stem}.{os.getpid()}.link.tmp.pt"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    save_checkpoint(dst, torch.load(src, map_location="cpu", weights_only=True))


def _write_all(fh: Any, buffer: io.BytesIO) -> None:
    view = buffer.getbuffer()
    try:
        fh.write(view)
    finally:
        view.release()


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict:
    """Load a facerecon checkpoint with ``weights_only=True`` and check it (see the module docstring).

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a checkpoint file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: the checkpoint is empty (0 bytes; an interrupted copy or download?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings: the error below says it all
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror or first_line(exc)})") from None
    except Exception as exc:  # pickle errors, truncated zip, wrong file type
        raise InputError(f"{path}: {_load_failure(exc, _head(path), path)}") from None
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: Any, path: str | os.PathLike[str]) -> None:
    """Refuse a loaded dict that is not a usable facerecon checkpoint (InputError naming ``path``)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a facerecon checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    try:
        version = int(ckpt.get("version", 0))
    except (TypeError, ValueError):
        raise InputError(f"{path}: its format version {ckpt.get('version')!r} is not a number") from None
    if version > CHECKPOINT_VERSION:
        raise InputError(f"{path}: checkpoint format {version} is newer than this facerecon understands")
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise InputError(f"{path}: the checkpoint has no 'config' (the network it holds cannot be built)")
    _check_model_sizes(config.get("model", {}), path)
    state = ckpt.get("model")
    if not isinstance(state, dict) or not state:
        raise InputError(f"{path}: the checkpoint has no 'model' weights")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue  # a module's extra state (plain values): nothing to check
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{path}: weight {name} holds {bad} non-finite value(s) (NaN or inf)")


def _check_model_sizes(model_cfg: Any, path: str | os.PathLike[str]) -> None:
    """Refuse sizes in ``config.model`` that are not whole numbers within :data:`MODEL_LIMITS`
    (a hand-edited config must not make the loader allocate absurd networks)."""
    if not isinstance(model_cfg, dict):
        raise InputError(f"{path}: its 'config.model' is not a table")
    model_cfg = _current_spelling(model_cfg, path)
    checks = [(key, _dotted(model_cfg, key), limit) for key, limit in MODEL_LIMITS.items()]
    for key, limit in MODEL_LIST_LIMITS.items():
        values = _dotted(model_cfg, key)
        if isinstance(values, (list, tuple)):
            checks += [(f"{key}[{i}]", v, limit) for i, v in enumerate(values)]
        elif values is not None:
            raise InputError(f"{path}: its config has model.{key} = {values!r}; expected a list of whole numbers")
    for key, value, limit in checks:
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value) or not 0 < value <= limit:
            raise InputError(f"{path}: its config has model.{key} = {value!r}; expected a whole number from 1 to {limit}")


def _current_spelling(model_cfg: dict, path: str | os.PathLike[str]) -> dict:
    """A checkpoint's ``config.model`` table in the current nested spelling (earlier flat ones translated)."""
    from facerecon.config import ConfigError, upgrade_dict

    try:
        return upgrade_dict({"model": model_cfg})["model"]
    except ConfigError as exc:
        raise InputError(f"{path}: {exc}") from None


def _dotted(table: dict, key: str) -> Any:
    """``table["a"]["b"]`` for ``key = "a.b"``; None where a level is missing or not a table."""
    value: Any = table
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def export_inference_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict:
    """A training checkpoint without what only training needs (optimizer, schedule, scaler, RNG):
    about a third of the size, still loadable by ``eval`` / ``predict`` and with
    ``torch.load(weights_only=True)``. Written atomically. Returns the written dict."""
    slim = _inference_part(load_checkpoint(src))
    save_checkpoint(Path(dst), slim)
    return slim


def _inference_part(ckpt: dict, drop: tuple[str, ...] = ()) -> dict:
    """What an inference-only checkpoint keeps of ``ckpt``: no optimizer, schedule, scaler or RNG
    state; its weights copied, less those whose names start with one of ``drop``."""
    keep = ("format", "version", "facerecon_version", "config", "epoch", "global_step", "best", "metrics", "landmark_reference")
    slim = {k: ckpt[k] for k in keep if k in ckpt}
    slim["step_in_epoch"] = 0
    slim["model"] = {k: v.detach().clone().contiguous() for k, v in ckpt["model"].items() if not (drop and k.startswith(drop))}
    return slim


def prune_refinement(src: str | os.PathLike[str], dst: str | os.PathLike[str], levels: int) -> dict:
    """A model v2 graph network (``model.kind = "prior_graph"``) with graph blocks on its first
    ``levels`` template levels only (``model.graph.refined_levels``): the finer blocks' weights are
    dropped and those levels carry the last kept block's refinement, unpooled. The network's
    output changes by what the dropped blocks added (check it with ``facerecon eval`` before and
    after); it runs in a fraction of the time where those blocks learned little. Written
    atomically, without what only training needs (as :func:`export_inference_checkpoint`).
    Returns the written dict."""
    ckpt = load_checkpoint(src)
    model_cfg = _current_spelling(ckpt["config"]["model"], src)
    if model_cfg.get("kind") != "prior_graph":
        raise InputError(f"{src}: a {model_cfg.get('kind')!r} network has no graph blocks to prune (model v2's 'prior_graph' has)")
    block_ids = {int(m.group(1)) for k in ckpt["model"] for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if not 1 <= int(levels) <= len(block_ids):
        raise InputError(f"{src}: it has graph blocks on {len(block_ids)} levels; keep 1 to {len(block_ids)}, not {levels}")
    out = _inference_part(ckpt, drop=tuple(f"blocks.{l}." for l in range(int(levels), len(block_ids))))
    out["config"] = {**ckpt["config"], "model": {**model_cfg, "graph": {**model_cfg.get("graph", {}), "refined_levels": int(levels)}}}
    save_checkpoint(Path(dst), out)
    return out


def clean_stale_temps(folder: str | os.PathLike[str], patterns: tuple[str, ...] = RUN_TEMPORARIES) -> list[Path]:
    """Remove the temporary files a writer killed mid-save left in ``folder`` (see
    :data:`RUN_TEMPORARIES`). Call it when a run starts, before anything is written.
    Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for tmp in folder.glob(pattern):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (its type name when it has none), whole."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line
    return type(exc).__name__


#: How other files start (their magic bytes), to say what was given instead of a checkpoint.
_FOREIGN = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"\x89HDF": "an HDF5 file (a cache?)",
            b"\x1f\x8b": "a gzip archive", b"%PDF": "a PDF", b"ply": "a PLY mesh", b"\x7fELF": "a program"}


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError:
        return b""


def _load_failure(exc: BaseException, head: bytes = b"", path: Path | None = None) -> str:
    """What is wrong with a file ``torch.load`` refused, from its cause: the file's first bytes
    (a checkpoint is a zip archive, or a pickle in torch's legacy format), then the error."""
    text = str(exc)
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
    if head and not (is_zip or is_pickle):
        kind = next((name for magic, name in _FOREIGN.items() if head.startswith(magic)), None)
        return (f"not a checkpoint file: it is {kind}" if kind else
                "not a checkpoint file: it is neither a zip archive nor a pickle (random or foreign bytes)")
    if isinstance(exc, EOFError) or "unexpected EOF" in text or "failed finding central directory" in text:
        return "the checkpoint is truncated or not a checkpoint file (an interrupted copy?)"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "Unsupported class" in text:
        what = f" ({found.group(1)})" if found else ""
        return (
            f"the checkpoint holds pickled Python objects{what}, which facerecon does not load "
            f"(loading them can run code); save it again as plain tensors and values"
        )
    if is_pickle and ("Weights only load failed" in text or type(exc).__name__ == "UnpicklingError"):
        foreign = _pickled_global(path) if path is not None else None
        if foreign is not None:
            return _load_failure(type(exc)(f"Unsupported global: GLOBAL {foreign}"))
        return f"a pickle that is not a torch checkpoint, or a damaged one ({_weights_only_reason(text)}); save it with torch.save"
    return f"not a readable facerecon checkpoint ({type(exc).__name__}: {first_line(exc)})"


def _pickled_global(path: Path) -> str | None:
    """The first class or function other than torch's that a pickle file names (read with
    ``pickletools``, which runs nothing), or None: how a pickle the weights-only loader stopped
    at early (e.g. at a protocol-4 frame) is told apart from a damaged one."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if isinstance(arg, str):
                    strings = (strings + [arg])[-2:]
                name = arg.replace(" ", ".") if op.name == "GLOBAL" and isinstance(arg, str) else ".".join(strings) if op.name == "STACK_GLOBAL" else None
                if name and not name.startswith(("torch.", "collections.OrderedDict")):
                    return name
                if op.name == "STOP":
                    return None
    except Exception:
        return None
    return None


def _weights_only_reason(text: str) -> str:
    """The weights-only unpickler's own reason (e.g. "Unsupported operand 149") from its long message."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return found.group(1).strip().splitlines()[0] if found else "unreadable"


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointWriteError",
    "check_checkpoint",
    "clean_stale_temps",
    "export_inference_checkpoint",
    "first_line",
    "load_checkpoint",
    "save_checkpoint",
    "share_checkpoint",
]
