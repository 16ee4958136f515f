"""The training loop of ``facerecon train``: readable top to bottom.

One function, ``train_worker``, runs in every process: it builds the network, the optimizer, the
schedule and the data loaders, resumes from ``last.pt`` when asked, and loops over epochs. Rank 0
validates after every epoch, appends the metrics to ``metrics.jsonl``, and writes ``last.pt`` and
``best.pt`` atomically. ``run_training`` decides how many processes to start.

Checkpoints are plain dicts of tensors and Python values, loadable with
``torch.load(path, weights_only=True)``:

    format, version, facerecon_version, config (nested dict), epoch (completed epochs),
    step_in_epoch (batches of the current epoch already done; 0 at an epoch boundary),
    global_step, model (state dict), optimizer, scheduler, scaler, best (best val Chamfer),
    rng (torch CPU state, CUDA states), metrics (last validation summary)

Resuming is exact on the CPU: the sampler order, the ground-truth draws (seeded by seed, epoch
and sample index) and the RNG state are restored, so 2 epochs in one run equal 1 epoch + resume
+ 1 epoch. Ctrl-C or SIGTERM lets the step under way finish, then saves ``last.pt`` mid-epoch (with
``step_in_epoch`` and the epoch's loss sums) and exits cleanly: resuming from it is bit-identical too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from facerecon import __version__
from facerecon.config import Config
from facerecon.engine.distributed import (
    DistInfo,
    barrier,
    check_gpus,
    free_port,
    launched_by_torchrun,
    process_group,
)
from facerecon.engine.evaluate import EvalSettings, batch_metrics, summarise
from facerecon.errors import FaceReconError, InputError
from facerecon.io_utils import atomic_path, ensure_parent
from facerecon.model.network import forward_batch

# Checkpoint I/O lives in engine.checkpoint; the names stay importable from here.
from facerecon.engine.checkpoint import (  # noqa: E402,F401
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    clean_stale_temps,
    export_inference_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainOptions:
    """How to run (not what to learn: that is the ``Config``)."""

    cache: Path
    out: Path
    gpus: int = 0  # 0: CPU
    nproc: int = 1  # CPU processes (gloo) when gpus == 0
    resume: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps in this run (tests, smoke runs)
    validate: bool = True
    val_limit: int | None = None  # validate on the first N val samples only
    eval_settings: EvalSettings = field(default_factory=EvalSettings)
    quiet: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    epochs_done: int
    global_step: int
    best: float
    last_metrics: dict[str, float]
    interrupted: bool = False
    #: one parameter checksum per rank (sum and sum of squares, float64): equal when ranks agree
    rank_checksums: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------- launch
def run_training(cfg: Config, opts: TrainOptions, reporter: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg`` on ``opts.cache`` into ``opts.out``, in the processes ``opts`` asks for.

    ``torchrun`` launches (RANK/WORLD_SIZE in the environment) join their process group;
    ``gpus > 1`` or ``nproc > 1`` spawn that many processes on this machine; otherwise this process
    trains alone.
    """
    check_train_inputs(cfg, opts)
    if launched_by_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and opts.gpus != 0
        return train_worker(rank, world, cfg.to_dict(), opts, use_cuda, local, reporter)
    check_gpus(opts.gpus)
    world = opts.gpus if opts.gpus > 0 else max(1, opts.nproc)
    use_cuda = opts.gpus > 0
    if world == 1:
        return train_worker(0, 1, cfg.to_dict(), opts, use_cuda, 0, reporter)
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    ctx = mp.get_context("spawn")
    result_queue = ctx.SimpleQueue()
    mp.start_processes(
        _spawned_worker, args=(world, cfg.to_dict(), opts, use_cuda, result_queue), nprocs=world, start_method="spawn"
    )
    result = result_queue.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _spawned_worker(
    rank: int, world: int, cfg_dict: dict, opts: TrainOptions, use_cuda: bool, queue: Any
) -> None:
    try:
        result = train_worker(rank, world, cfg_dict, opts, use_cuda, rank, None)
    except FaceReconError as exc:
        if rank == 0:
            queue.put(exc)
        raise
    if rank == 0:
        queue.put(result)


def check_train_inputs(cfg: Config, opts: TrainOptions) -> None:
    """Refuse what cannot work before anything is started (InputError), and remove the
    temporary checkpoint files a killed run left in the run folder.

    The cache is checked whole (``facerecon.data.validate.check_cache``: its datasets, offsets
    and every value training reads, once per file), so a damaged cache is named with the
    sample at fault instead of failing, or silently training, later.
    """
    if not Path(opts.cache).is_file():
        raise InputError(f"{opts.cache}: cache file not found (make one with 'facerecon prepare')")
    from facerecon.data.validate import check_cache

    check_cache(opts.cache)
    clean_stale_temps(opts.out)
    if opts.resume and not (Path(opts.out) / "last.pt").is_file():
        raise InputError(f"{opts.out}: nothing to resume (no last.pt in the run folder)")
    if not opts.resume and (Path(opts.out) / "last.pt").is_file():
        raise InputError(f"{opts.out}: already holds a run (last.pt); use --resume to continue it or another --out")
    if cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise InputError("train.batch_size and train.epochs must be at least 1")


# ------------------------------------------------------------------------------------- worker
def train_worker(
    rank: int,
    world: int,
    cfg_dict: dict,
    opts: TrainOptions,
    use_cuda: bool,
    local_rank: int,
    reporter: Callable[[str], None] | None,
) -> TrainResult:
    """Everything one process does (see the module docstring)."""
    from facerecon.data.dataset import FaceCacheDataset, collate_faces
    from facerecon.losses import MeshLoss
    from facerecon.model.network import build_network

    cfg = Config.from_dict(cfg_dict)
    ckpt = None
    if opts.resume:
        ckpt = load_checkpoint(Path(opts.out) / "last.pt", map_location="cpu")
        if cfg.train.fit_template:  # the placement fitted when the run started
            saved = Config.from_dict(ckpt["config"]).model
            cfg = cfg.replace({"model.template_scale": list(saved.template_scale), "model.template_offset": list(saved.template_offset)})
    elif cfg.train.fit_template and cfg.model.start == "template":
        cfg = fit_template_placement(cfg, opts.cache)
    tc = cfg.train
    say = reporter if (reporter is not None and rank == 0 and not opts.quiet) else (lambda _m: None)
    with process_group(rank, world, use_cuda, local_rank) as info:
        device = info.device
        torch.manual_seed(tc.seed)
        model = build_network(cfg.model, device=device)
        correspondence = None
        if cfg.model.start == "prior" or cfg.loss.vertex > 0:
            correspondence = _setup_prior(model, cfg, opts, say)
        if cfg.model.start == "template" and not opts.resume and tc.init_landmarks and model.landmark_head is not None:
            mean_lms = _mean_train_landmarks(opts.cache)
            if mean_lms is not None:
                model.landmark_head.init_from_layout(model.template_vertices(), mean_lms.to(device))
        loss_fn = MeshLoss(cfg.loss).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tc.milestones), gamma=tc.gamma)
        use_amp = bool(tc.amp and device.type == "cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        reference = landmark_reference_from_cache(opts.cache)
        out = Path(opts.out)
        # "running": the epoch's loss sums so far (saved mid-epoch, so metrics.jsonl covers the whole epoch)
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": math.inf, "metrics": {}, "running": {}}
        if ckpt is not None:
            _check_resumable(cfg, ckpt, out / "last.pt")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            for key in state:
                state[key] = ckpt.get(key, state[key])
            _set_rng(ckpt.get("rng", {}))
            say(f"resuming {out / 'last.pt'}: epoch {state['epoch'] + 1}, batch {state['step_in_epoch'] + 1}")
        elif info.is_main:
            ensure_parent(out / "config.json")
            _write_json(out / "config.json", cfg.to_dict())
            with contextlib.suppress(FileNotFoundError):
                (out / "metrics.jsonl").unlink()

        ddp_model: nn.Module = model
        if info.distributed:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )

        augment = None
        if tc.augment:
            from facerecon.data.augment import AugmentSettings

            augment = AugmentSettings.from_train_config(tc)
        train_set = FaceCacheDataset(
            opts.cache,
            split="train",
            points_per_region=tuple(tc.points_per_region),
            seed=tc.seed,
            correspondence=correspondence,
            augment=augment,
        )
        if len(train_set) == 0:
            raise InputError(f"{opts.cache}: the train split is empty")
        val_set = None
        if opts.validate and info.is_main:
            val_set = FaceCacheDataset(opts.cache, split="val", points_per_region=None, seed=tc.seed)
            if len(val_set) == 0:
                val_set = None
                say("no val split in the cache: skipping validation")
        per_rank = math.ceil(len(train_set) / world)
        steps_per_epoch = math.ceil(per_rank / tc.batch_size)

        interrupted = False
        stop = False
        run_steps = 0
        forced = False
        last_saved = -1  # global step of the last last.pt written by this run
        with _stop_requests() as stop_request, _progress(opts, info, tc.epochs, steps_per_epoch, say) as progress:
            try:
                for epoch in range(state["epoch"], tc.epochs):
                    train_set.set_epoch(epoch)
                    sampler = _EpochSampler(len(train_set), info, tc.seed, epoch, state["step_in_epoch"] * tc.batch_size)
                    loader = DataLoader(
                        train_set,
                        batch_size=tc.batch_size,
                        sampler=sampler,
                        num_workers=tc.num_workers,
                        collate_fn=collate_faces,
                        pin_memory=device.type == "cuda",
                        drop_last=False,
                        generator=_loader_generator(tc.seed, epoch),  # not the global RNG: exact mid-epoch resume
                        worker_init_fn=_ignore_stop_signals,  # the main process alone decides when to stop
                    )
                    model.train()
                    progress.start_epoch(epoch, state["step_in_epoch"])
                    progress.restore(state["running"])
                    state["running"] = {}
                    with _stop_signals_blocked():  # workers start here: none may die of a signal before ignoring it
                        batches = iter(loader)
                    for batch in batches:
                        batch = _to_device(batch, device)
                        with torch.autocast(device_type=device.type, enabled=use_amp):
                            pred = forward_batch(ddp_model, batch)
                        losses = loss_fn(pred, batch, epoch=epoch + state["step_in_epoch"] / steps_per_epoch)
                        total, terms = losses.total, losses.terms
                        if not torch.isfinite(total):
                            raise FaceReconError(
                                f"training diverged: the loss is {float(total)} at epoch {epoch + 1}, "
                                f"step {state['global_step'] + 1} (lower --lr or set train.grad_clip)"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(total).backward()
                        if tc.grad_clip > 0:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        state["step_in_epoch"] += 1
                        state["global_step"] += 1
                        run_steps += 1
                        progress.step(batch["image"].shape[0] * world, float(total.detach()), {k: float(v) for k, v in terms.items()})
                        if opts.max_steps is not None and run_steps >= opts.max_steps:
                            stop = True
                            break
                        if _agreed_stop(stop_request.requested, info, device):  # Ctrl-C / SIGTERM: stop at this step boundary
                            interrupted = stop = True
                            break
                    if stop and state["step_in_epoch"] < steps_per_epoch:
                        break  # mid-epoch stop: last.pt below records the position
                    scheduler.step()
                    state["epoch"] = epoch + 1
                    state["step_in_epoch"] = 0
                    metrics: dict[str, float] = {}
                    if val_set is not None:
                        metrics = validate(model, val_set, device, opts.eval_settings, tc.batch_size, opts.val_limit)
                        state["metrics"] = metrics
                        if metrics["chamfer"] < state["best"]:
                            state["best"] = metrics["chamfer"]
                            if info.is_main:
                                save_checkpoint(out / "best.pt", _checkpoint(cfg, model, optimizer, scheduler, scaler, state, reference))
                    if info.is_main:
                        save_checkpoint(out / "last.pt", _checkpoint(cfg, model, optimizer, scheduler, scaler, state, reference))
                        record = {"epoch": epoch + 1, "global_step": state["global_step"], "lr": scheduler.get_last_lr()[0]}
                        record.update(progress.epoch_means())
                        record.update({f"val_{k}": v for k, v in metrics.items()})
                        _append_jsonl(out / "metrics.jsonl", record)
                        say(_epoch_line(record))
                    last_saved = state["global_step"]
                    barrier(info)
                    if stop:
                        break
                    if _agreed_stop(stop_request.requested, info, device):  # came during validation or saving
                        interrupted = True
                        break
            except KeyboardInterrupt:  # a second Ctrl-C: the step it broke is half done, save nothing
                interrupted = forced = True
        if forced:
            say(f"interrupted again: stopped at once without saving; {out / 'last.pt'} holds the last save")
        elif interrupted or (stop and state["step_in_epoch"] > 0):
            if state["step_in_epoch"] > 0:
                state["running"] = progress.running()
            if info.is_main and last_saved != state["global_step"]:
                save_checkpoint(out / "last.pt", _checkpoint(cfg, model, optimizer, scheduler, scaler, state, reference))
            if interrupted:
                say(f"interrupted: saved {out / 'last.pt'}; continue with --resume")
        checksums = _rank_checksums(model, info)
        return TrainResult(state["epoch"], state["global_step"], state["best"], state["metrics"], interrupted, checksums)


def _rank_checksums(model: nn.Module, info: DistInfo) -> list[float]:
    """Every rank's parameter checksum (all ranks must hold the same parameters under DDP)."""
    with torch.no_grad():
        value = sum(float(p.double().sum() + p.double().square().sum()) for p in model.parameters())
    if not info.distributed:
        return [value]
    gathered: list[object] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, value)
    return [float(v) for v in gathered]


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    settings: EvalSettings,
    batch_size: int,
    limit: int | None = None,
) -> dict[str, float]:
    """Mean Chamfer, F-scores and NME of ``model`` over ``dataset`` (see ``engine.evaluate``)."""
    from facerecon.data.dataset import collate_faces

    was_training = model.training
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_faces)
    records: dict[str, list[float]] = {}
    for batch in loader:
        batch = _to_device(batch, device)
        pred = forward_batch(model, batch)
        metrics = batch_metrics(
            pred.vertices,
            pred.faces[-1],
            batch["points"],
            batch["lengths"],
            [int(i) for i in batch["index"]],
            settings,
            pred.landmarks,
            batch.get("landmarks"),
        )
        for key, value in metrics.items():
            records.setdefault(key, []).extend(value.tolist())
    model.train(was_training)
    return summarise(records)


# ------------------------------------------------------------------------------------- sampler
class _EpochSampler(Sampler[int]):
    """The epoch's shuffled order (seeded by seed + epoch, identical on every rank), this rank's
    share of it (``order[rank::world]``, padded by wrapping like DistributedSampler), minus the
    first ``skip`` items already consumed before a resume."""

    def __init__(self, n: int, info: DistInfo, seed: int, epoch: int, skip: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
        total = math.ceil(n / info.world_size) * info.world_size
        order += order[: total - n]
        self.indices = order[info.rank :: info.world_size][skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------------- checkpoints
def _checkpoint(
    cfg: Config, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: dict, reference: torch.Tensor | None
) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "facerecon_version": __version__,
        "config": cfg.to_dict(),
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


def fit_template_placement(cfg: Config, cache: str | os.PathLike[str]) -> Config:
    """``cfg`` with ``model.template_scale`` / ``template_offset`` fitted so the template's
    bounding box matches the training mean face's (crop frame). Unchanged when the cache's ground
    truth has no shared topology (no per-point mean face)."""
    from facerecon.engine.evaluate import mean_face

    try:
        points, _ = mean_face(str(cache), "train")
    except InputError:
        return cfg
    if cfg.model.template != "hemisphere":
        return cfg
    lo, hi = points.min(0).values.double(), points.max(0).values.double()
    # canonical hemisphere: x, y in [-1, 1], dome tip at z = -1 (camera side), rim at z = 0
    scale = [float((hi[0] - lo[0]) / 2), float((hi[1] - lo[1]) / 2), float(hi[2] - lo[2])]
    offset = [float((hi[0] + lo[0]) / 2), float((hi[1] + lo[1]) / 2), float(hi[2])]
    return cfg.replace({"model.template_scale": scale, "model.template_offset": offset})


def _mean_train_landmarks(cache: str | os.PathLike[str]) -> torch.Tensor | None:
    import h5py
    import numpy as np

    with h5py.File(cache, "r") as f:
        train = np.flatnonzero(f["split"][:] == 0)
        if train.size == 0 or "landmarks" not in f:
            return None
        lms = f["landmarks"][:][train]
    ok = np.isfinite(lms).all(axis=(1, 2))
    return torch.from_numpy(lms[ok].mean(axis=0).astype(np.float32)) if ok.any() else None


def landmark_reference_from_cache(cache: str | os.PathLike[str]) -> torch.Tensor | None:
    """The frontal 68-landmark layout of the training split: each training sample's ground-truth
    landmarks with its pose undone (``frames.frontalise``), averaged. ``predict`` fits it to the
    predicted landmarks to report the head pose. None when the cache has no poses/landmarks.

    Returns:
        (68, 3) float32, centred, unit RMS radius, our axes (x right, y down, z away).
    """
    import h5py
    import numpy as np

    from facerecon.frames import frontalise

    with h5py.File(cache, "r") as f:
        train = np.flatnonzero(f["split"][:] == 0)
        if train.size == 0 or "pose" not in f or "landmarks" not in f:
            return None
        landmarks = f["landmarks"][:][train]
        poses = f["pose"][:][train]
    ok = np.isfinite(landmarks).all(axis=(1, 2)) & np.isfinite(poses).all(axis=1)
    if not ok.any():
        return None
    frontal = np.stack([frontalise(lm, *pose) for lm, pose in zip(landmarks[ok], poses[ok])])
    mean = frontal.mean(axis=0)
    mean = (mean - mean.mean(0)) / np.sqrt(((mean - mean.mean(0)) ** 2).sum(1).mean())
    return torch.from_numpy(mean.astype(np.float32))


def _check_resumable(cfg: Config, ckpt: dict, path: Path) -> None:
    saved = Config.from_dict(ckpt["config"])
    if saved.model != cfg.model:
        raise InputError(f"{path}: the run was made with another model configuration; resume without changing model.*")
    if saved.loss != cfg.loss or saved.train.batch_size != cfg.train.batch_size or saved.train.seed != cfg.train.seed:
        raise InputError(f"{path}: resume with the run's loss settings, batch size and seed (see config.json)")


def _set_rng(rng: dict) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _setup_prior(model: nn.Module, cfg: Config, opts: TrainOptions, say: Callable[[str], None]) -> tuple:
    """The template-to-face-model correspondence (the per-vertex ground truth, both orientations
    for flips) and, for a new model-v2 run, the shape basis learned from the training split."""
    import numpy as np

    from facerecon.model.face_prior import build_face_prior, read_correspondence_source, template_correspondence

    template = model.hierarchy.template_vertices(model.num_blocks - 1).cpu().numpy()
    src = read_correspondence_source(opts.cache)
    if src is None:
        raise InputError(
            f"{opts.cache}: model.start = 'prior' and loss.vertex need ground truth in a face model's vertex order "
            "(a schema-2 cache of a 3DMM dataset)"
        )
    mirrored = template * np.array([-1.0, 1.0, 1.0], dtype=template.dtype)
    ids_m, bary_m = template_correspondence(src[0], src[1], mirrored)
    if opts.resume or cfg.model.start != "prior":
        ids, bary = template_correspondence(src[0], src[1], template)
    else:
        faces = model.hierarchy.faces(model.num_blocks - 1).cpu().numpy()
        prior = build_face_prior(opts.cache, template, cfg.model.prior_components, template_faces=faces)
        model.set_prior(prior)
        ids, bary = prior.ids, prior.bary
        say(f"face prior: {prior.basis.shape[0]} shape modes explain {100 * prior.explained:.1f} % of the aligned training faces")
    return ids, bary, ids_m, bary_m


# ------------------------------------------------------------------------------------- helpers
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _write_json(path: Path, obj: Any) -> None:
    from facerecon.io_utils import write_json

    write_json(path, obj)


def _append_jsonl(path: Path, record: dict) -> None:
    """Append one line; on resume, lines of epochs at or after ``record['epoch']`` are dropped first."""
    lines: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) < record["epoch"]:
                    lines.append(line)
            except json.JSONDecodeError:
                continue
    lines.append(json.dumps(record))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _epoch_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('loss', float('nan')):.4g}"]
    for key in ("val_chamfer", "val_fscore@tau", "val_fscore@2tau", "val_nme"):
        if key in record:
            parts.append(f"{key[4:]} {record[key]:.4g}")
    return " | ".join(parts)


def _loader_generator(seed: int, epoch: int) -> torch.Generator:
    """The training loader's own generator (its worker seeds), seeded by seed and epoch: creating
    the loader again on a mid-epoch resume then leaves the global RNG as an uninterrupted run's."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block Ctrl-C and SIGTERM in this thread while the data-loader workers are forked: a worker
    inherits the blocked mask, so a signal to the process group that arrives before its
    ``worker_init_fn`` ignores the signals stays pending instead of running torch's worker handler
    (which ends the worker). The main process receives its own copy once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_stop_signals(worker_id: int) -> None:
    """In a data-loader worker: ignore Ctrl-C and SIGTERM sent to the whole process group (torch
    would end the worker and with it the batch the step under way waits for). The main process
    finishes the step and shuts the workers down; they also end when it dies (torch's watchdog).
    The worker starts with both signals blocked (``_stop_signals_blocked``): ignoring them discards
    any that arrived meanwhile, and only then are they unblocked."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


class _StopRequest:
    """Set by the first Ctrl-C or SIGTERM; the loop stops at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def _stop_requests() -> Iterator[_StopRequest]:
    """Ctrl-C and SIGTERM (a scheduler's stop) only ask the loop to stop: it finishes the step
    under way, saves ``last.pt`` and returns, so the checkpoint never holds a half-done step
    (BatchNorm statistics of an aborted forward pass). A second Ctrl-C raises
    ``KeyboardInterrupt`` at once (nothing is saved then). Forked data-loader workers inherit the
    handler and ignore both signals (a signal to the whole process group must not kill the
    batch the step under way waits for; the loader shuts them down), unless their parent is gone."""
    request = _StopRequest()
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            if signum == signal.SIGTERM and os.getppid() != owner:  # orphaned: behave as by default
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.requested = True

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they are
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous = {}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _agreed_stop(requested: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether any rank was asked to stop (all ranks must stop after the same step)."""
    if not info.distributed:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


class _Progress:
    """A rich progress bar on rank 0 with the loss terms, samples/s and ETA; running means per epoch."""

    def __init__(self, bar: Any, epochs: int, steps_per_epoch: int, log: Callable[[str], None] | None = None) -> None:
        self.bar = bar
        self.log = log  # when stderr is not a terminal (a log file): a plain line every minute
        self.last_log = time.perf_counter()
        self.epoch = 0
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.task = None
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def start_epoch(self, epoch: int, done: int) -> None:
        self.sums, self.count, self.samples, self.t0 = {}, 0, 0, time.perf_counter()
        self.epoch, self.done = epoch, done
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, completed=done, unit="batch", terms="")

    def step(self, samples: int, loss: float, terms: dict[str, float]) -> None:
        self.count += 1
        self.samples += samples
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        shown = " ".join(f"{k} {v / self.count:.3g}" for k, v in self.sums.items())
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, terms=f"{shown} | {rate:.2f} samples/s")
        if self.log is not None and time.perf_counter() - self.last_log > 60:
            self.last_log = time.perf_counter()
            step = self.done + self.count
            self.log(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps}: {shown} | {rate:.2f} samples/s")

    def running(self) -> dict:
        """The epoch's sums so far (saved in a mid-epoch checkpoint)."""
        return {"sums": dict(self.sums), "count": self.count}

    def restore(self, running: dict) -> None:
        """Continue the sums of a resumed epoch (so its means cover every step of it)."""
        if running:
            self.sums = {str(k): float(v) for k, v in dict(running.get("sums", {})).items()}
            self.count = int(running.get("count", 0))
            self.done = max(0, self.done - self.count)  # the progress line shows done + count

    def epoch_means(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out["samples_per_s"] = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        return out


@contextlib.contextmanager
def _progress(
    opts: TrainOptions, info: DistInfo, epochs: int, steps: int, say: Callable[[str], None]
) -> Iterator[_Progress]:
    if not info.is_main or opts.quiet or not opts.progress:
        yield _Progress(None, epochs, steps)
        return
    from rich.progress import TextColumn

    from facerecon.progress import err_console, make_progress

    if not err_console.is_terminal:  # a log file: plain periodic lines instead of a live bar
        yield _Progress(None, epochs, steps, log=say)
        return
    bar = make_progress(TextColumn("{task.fields[terms]}"))
    with bar:
        yield _Progress(bar, epochs, steps)
