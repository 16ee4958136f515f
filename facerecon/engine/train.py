"""The training loop of ``facerecon train``, in the order it runs.

``run_training`` checks the inputs (the cache is checked and its statistics read in one pass,
``engine.statistics``) and starts the processes (``engine.distributed``). ``train_worker`` runs in
every process, one stage after the other, each a function below in the same order:

    setup   the run's configuration and cache statistics (read by rank 0, handed to the others)
    model   network, face prior, loss, optimizer and schedule; their states on ``--resume``
            (the FaceVision-GAN family, ``model.kind = "facevision"``: the generator and both
            discriminators, two optimizers and schedules, the maps side file; ``engine.facevision``)
    data    the training and validation sets
    loop    epochs of steps (forward, loss, backward, optimizer step); at each epoch's end rank 0
            validates (``engine.evaluate``), appends ``metrics.jsonl`` and writes ``last.pt`` and
            ``best.pt`` atomically
    save    ``last.pt`` of a run stopped mid-epoch

Checkpoints are plain dicts of tensors and Python values, loadable with
``torch.load(path, weights_only=True)``; ``engine.checkpoint.training_checkpoint`` makes them and
lists their keys (``epoch``: completed epochs; ``step_in_epoch``: batches of the current epoch
already done, 0 at an epoch boundary).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from facerecon.config import Config
from facerecon.data.sampler import EpochSampler, loader_generator
from facerecon.engine.checkpoint import (
    clean_stale_temps,
    load_checkpoint,
    save_checkpoint,
    share_checkpoint,
    training_checkpoint,
)
from facerecon.engine.distributed import (
    DistInfo,
    barrier,
    check_gpus,
    is_main_launch,
    launched_by_torchrun,
    process_group,
    run_on_main,
    spawn,
)
from facerecon.engine.evaluate import EvalSettings, evaluate_network, metric_means
from facerecon.engine.statistics import CacheStatistics, read_cache_statistics
from facerecon.errors import FaceReconError, InputError
from facerecon.io_utils import atomic_path, ensure_parent
from facerecon.model.network import forward_batch
from facerecon.progress import TrainingProgress, training_progress
from facerecon.signals import StopRequest, ignore_stop_signals, stop_requests, stop_signals_blocked

if TYPE_CHECKING:
    from facerecon.model.blocks import MeshNetBase
    from facerecon.model.facevision import FaceVisionNet
    from facerecon.model.prior_net import PriorFaceNet


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
    #: the signal that stopped an interrupted run (``signal.SIGINT`` or ``signal.SIGTERM``)
    stop_signal: int | None = None


# ------------------------------------------------------------------------------------- launch
def run_training(cfg: Config, opts: TrainOptions, reporter: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg`` on ``opts.cache`` into ``opts.out``, in the processes ``opts`` asks for.

    ``torchrun`` launches (RANK/WORLD_SIZE in the environment) join their process group;
    ``gpus > 1`` or ``nproc > 1`` spawn that many processes on this machine; otherwise this process
    trains alone.
    """
    check_train_inputs(cfg, opts)
    if launched_by_torchrun():  # rank 0 reads the statistics once the group has formed
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and opts.gpus != 0
        return train_worker(rank, world, cfg.to_dict(), opts, use_cuda, local, reporter)
    check_gpus(opts.gpus)
    world = opts.gpus if opts.gpus > 0 else max(1, opts.nproc)
    use_cuda = opts.gpus > 0
    statistics = read_cache_statistics(opts.cache, training_split(cfg), template=prior_template(cfg, opts))  # read by check_train_inputs: remembered
    if world == 1:
        return train_worker(0, 1, cfg.to_dict(), opts, use_cuda, 0, reporter, statistics)
    return spawn(_spawned_worker, world, (cfg.to_dict(), opts, use_cuda, _shareable(statistics)))


def _shareable(statistics: CacheStatistics) -> CacheStatistics:
    """The statistics with model v2's gathered training faces (``prior_samples``, ~120 MB for
    AFLW2000-3D) as CPU tensors: torch's multiprocessing hands tensors to the spawned processes
    through one shared-memory copy, where numpy arrays would be pickled to each of them."""
    if statistics.prior_samples is None:
        return statistics
    import dataclasses

    import numpy as np

    samples = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in statistics.prior_samples)
    return dataclasses.replace(statistics, prior_samples=samples)  # type: ignore[arg-type]  # tensors while shared; _learn_prior reads them back as arrays


def _spawned_worker(rank: int, world: int, cfg_dict: dict, opts: TrainOptions, use_cuda: bool, statistics: CacheStatistics) -> TrainResult:
    return train_worker(rank, world, cfg_dict, opts, use_cuda, rank, None, statistics)


def training_split(cfg: Config) -> str:
    """The cache split a run trains on, as ``FaceCacheDataset`` names it (``train.splits``
    joined by ``+``)."""
    return "+".join(dict.fromkeys(cfg.train.splits))


def check_train_inputs(cfg: Config, opts: TrainOptions) -> None:
    """Refuse what cannot work before anything is started (InputError), and remove the
    temporary checkpoint files a killed run left in the run folder.

    The cache is checked whole (``facerecon.data.validate``: its datasets, offsets and every
    value training reads) in the pass that reads the statistics the run starts from
    (``engine.statistics``; once per file, and under ``torchrun`` by rank 0 only), so a damaged
    cache is named with the sample at fault instead of failing, or silently training, later.
    """
    if not Path(opts.cache).is_file():
        raise InputError(f"{opts.cache}: cache file not found (make one with 'facerecon prepare')")
    if not cfg.train.splits:
        raise InputError("train.splits is empty: name the cache splits to train on, e.g. [\"train\"]")
    if is_main_launch():
        _check_split_has_samples(read_cache_statistics(opts.cache, training_split(cfg), template=prior_template(cfg, opts)), opts.cache)
    clean_stale_temps(opts.out)
    if opts.resume and not (Path(opts.out) / "last.pt").is_file():
        raise InputError(f"{opts.out}: nothing to resume (no last.pt in the run folder)")
    if not opts.resume and (Path(opts.out) / "last.pt").is_file():
        raise InputError(f"{opts.out}: already holds a run (last.pt); use --resume to continue it or another --out")
    if cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise InputError("train.batch_size and train.epochs must be at least 1")


def _check_split_has_samples(statistics: CacheStatistics, cache: Path) -> None:
    """An empty training split, named with the cache and the sizes of its splits."""
    if statistics.n_samples > 0:
        return
    counts = statistics.split_counts or {}
    sizes = ", ".join(f"{name} {n}" for name, n in counts.items())
    raise InputError(
        f"{cache}: the {statistics.split} split holds no sample ({sizes or 'no split array'}); "
        "train on other splits (train.splits) or make the cache with other split sizes"
    )


# ------------------------------------------------------------------------------------- worker
def train_worker(
    rank: int,
    world: int,
    cfg_dict: dict,
    opts: TrainOptions,
    use_cuda: bool,
    local_rank: int,
    reporter: Callable[[str], None] | None,
    statistics: CacheStatistics | None = None,
) -> TrainResult:
    """Everything one process does: setup -> model -> data -> loop -> save (the functions below,
    in that order). ``statistics``: the cache's, already read (else rank 0 reads them)."""
    say = reporter if (reporter is not None and rank == 0 and not opts.quiet) else _silent
    ckpt = load_checkpoint(Path(opts.out) / "last.pt", map_location="cpu") if opts.resume else None
    with process_group(rank, world, use_cuda, local_rank) as info:
        given = Config.from_dict(cfg_dict)
        if statistics is None:
            statistics = run_on_main(lambda: read_cache_statistics(opts.cache, training_split(given), template=prior_template(given, opts)), info)
        cfg = _run_config(given, ckpt, statistics)
        torch.manual_seed(cfg.train.seed)
        with _deterministic(info.device):
            run = _build_model(cfg, opts, info, statistics, say)
            _start_or_resume(run, ckpt)
            _build_data(run)
            _train(run)
        return TrainResult(
            run.state["epoch"], run.state["global_step"], run.state["best"], run.state["metrics"], run.interrupted,
            _rank_checksums(run.model, info), run.stop_signal,
        )


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms for a CPU run (where a run with a seed repeats bit for bit and
    resumes exactly, see the module docstring): an operation without a deterministic
    implementation is then an error instead of a silent difference. Restored afterwards."""
    if device.type != "cpu":
        yield
        return
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@dataclass
class _Run:
    """What the stages of one process build and the loop works with."""

    cfg: Config
    opts: TrainOptions
    info: DistInfo
    say: Callable[[str], None]
    model: nn.Module
    correspondence: tuple | None  # per-vertex ground truth (see FaceCacheDataset), or None
    reference: torch.Tensor | None  # the landmark reference saved in every checkpoint
    loss_fn: nn.Module = None  # type: ignore[assignment]  # set by _build_model right after construction
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    use_amp: bool = False
    ddp_model: nn.Module = None  # type: ignore[assignment]  # set when the loop starts (the model, or its DDP wrapper)
    # "running": the epoch's loss sums so far (saved mid-epoch, so metrics.jsonl covers the whole epoch)
    state: dict = field(
        default_factory=lambda: {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": math.inf, "metrics": {}, "running": {}}
    )
    train_set: Any = None
    val_set: Any = None
    steps_per_epoch: int = 0
    run_steps: int = 0  # optimizer steps made by this run (not counting a resumed run's)
    stop: bool = False  # stop after this step (--max-steps, Ctrl-C / SIGTERM)
    interrupted: bool = False  # by Ctrl-C / SIGTERM
    forced: bool = False  # by a second Ctrl-C: nothing more is saved
    stop_signal: int | None = None  # the signal this process was stopped by (None: another rank's)
    last_saved: int = -1  # global step of the last last.pt written by this run
    gan_weights: Any = None  # the FaceVision-GAN family's loss weights (None: a template family)
    average: Any = None  # the GAN's gradient averaging over processes, or None
    maps: Path | None = None  # the FaceVision-GAN family's training maps (side file of the cache)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def out(self) -> Path:
        return Path(self.opts.out)


# ------------------------------------------------------------------------------------- setup
def _run_config(cfg: Config, ckpt: dict | None, statistics: CacheStatistics) -> Config:
    """The run's configuration: on ``--resume`` with ``train.fit_template`` the template placement
    fitted when the run started; for a new run, the template placed on the training mean face."""
    if ckpt is not None:
        if not cfg.train.fit_template or cfg.model.kind != "pixel2mesh":
            return cfg
        saved = Config.from_dict(ckpt["config"]).model
        placed = saved.pixel2mesh
        return cfg.replace({"model.pixel2mesh.template_scale": list(placed.template_scale),
                            "model.pixel2mesh.template_offset": list(placed.template_offset)})
    if cfg.train.fit_template and cfg.model.kind == "pixel2mesh":
        return fit_template_placement(cfg, statistics)
    return cfg


def fit_template_placement(cfg: Config, cache: str | os.PathLike[str] | CacheStatistics) -> Config:
    """``cfg`` with ``model.pixel2mesh.template_scale`` / ``template_offset`` fitted so the template's
    bounding box matches the training mean face's (crop frame). Unchanged when the cache's ground
    truth has no shared topology (no per-point mean face). ``cache``: the cache or its statistics."""
    stats = cache if isinstance(cache, CacheStatistics) else read_cache_statistics(cache)
    if stats.mean_points is None or cfg.model.template != "hemisphere":
        return cfg
    points = torch.from_numpy(stats.mean_points)
    lo, hi = points.min(0).values.double(), points.max(0).values.double()
    # canonical hemisphere: x, y in [-1, 1], dome tip at z = -1 (camera side), rim at z = 0
    scale = [float((hi[0] - lo[0]) / 2), float((hi[1] - lo[1]) / 2), float(hi[2] - lo[2])]
    offset = [float((hi[0] + lo[0]) / 2), float((hi[1] + lo[1]) / 2), float(hi[2])]
    return cfg.replace({"model.pixel2mesh.template_scale": scale, "model.pixel2mesh.template_offset": offset})


# ------------------------------------------------------------------------------------- model
def _build_model(cfg: Config, opts: TrainOptions, info: DistInfo, statistics: CacheStatistics, say: Callable[[str], None]) -> _Run:
    """The network (its face prior, its landmark head's start), the loss and the optimizer."""
    from facerecon.losses import MeshLoss
    from facerecon.model.network import build_network

    if cfg.model.kind == "facevision":
        return _build_facevision(cfg, opts, info, statistics, say)
    model = build_network(cfg.model, device=info.device)
    correspondence = None
    if cfg.model.starts_from_prior or cfg.loss.vertex > 0:
        correspondence = _setup_prior(model, cfg, opts, info, statistics, say)
    tc = cfg.train
    if not cfg.model.starts_from_prior and not opts.resume and tc.init_landmarks and model.landmark_head is not None:
        if statistics.mean_landmarks is not None:
            model.landmark_head.init_from_layout(model.template_vertices(), torch.from_numpy(statistics.mean_landmarks).to(info.device))
    reference = None if statistics.landmark_reference is None else torch.from_numpy(statistics.landmark_reference.copy())
    run = _Run(cfg, opts, info, say, model, correspondence, reference)
    run.loss_fn = MeshLoss(cfg.loss).to(info.device)
    run.params = [p for p in model.parameters() if p.requires_grad]
    run.optimizer = torch.optim.Adam(run.params, lr=tc.lr, weight_decay=tc.weight_decay)
    run.scheduler = torch.optim.lr_scheduler.MultiStepLR(run.optimizer, milestones=list(tc.milestones), gamma=tc.gamma)
    run.use_amp = bool(tc.amp and info.device.type == "cuda")
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp)
    return run


def _build_facevision(cfg: Config, opts: TrainOptions, info: DistInfo, statistics: CacheStatistics, say: Callable[[str], None]) -> _Run:
    """The FaceVision-GAN family: the maps side file (made once, by rank 0), the generator and
    both discriminators with the landmarks' codes, their optimizers and schedules."""
    from facerecon.engine.facevision import (
        build_optimizers,
        cache_face_model,
        gradient_averager,
        loss_weights,
        training_maps,
    )
    from facerecon.model.facevision import FaceVisionNet

    maps, codes = run_on_main(lambda: training_maps(opts.cache, cfg.model.facevision.input_size, say), info)
    model = FaceVisionNet.from_config(cfg.model).to(info.device)
    model.landmark_codes.copy_(torch.from_numpy(codes))
    model.set_face_model(*cache_face_model(opts.cache))
    reference = None if statistics.landmark_reference is None else torch.from_numpy(statistics.landmark_reference.copy())
    run = _Run(cfg, opts, info, say, model, None, reference, gan_weights=loss_weights(cfg.model), maps=maps)
    run.optimizer, run.scheduler, run.params = build_optimizers(model, cfg.train)
    run.average = gradient_averager(info.distributed)
    run.scaler = torch.amp.GradScaler("cuda", enabled=False)  # float32: the adversarial losses are sensitive
    return run


def _setup_prior(
    model: MeshNetBase, cfg: Config, opts: TrainOptions, info: DistInfo, statistics: CacheStatistics, say: Callable[[str], None]
) -> tuple:
    """The template-to-face-model correspondence (the per-vertex ground truth, both orientations
    for flips) and, for a new model-v2 run, the shape basis learned from the training split (by
    rank 0, handed to the others)."""
    import numpy as np

    from facerecon.model.face_prior import template_correspondence

    template = model.hierarchy.template_vertices(model.num_blocks - 1).cpu().numpy()
    if statistics.face_model is None:
        raise InputError(
            f"{opts.cache}: the prior networks (model.kind) and loss.vertex need ground truth in a face model's vertex order "
            "(a schema-2 cache of a 3DMM dataset)"
        )
    face_mean, triangles = statistics.face_model
    mirrored = template * np.array([-1.0, 1.0, 1.0], dtype=template.dtype)
    ids_m, bary_m = template_correspondence(face_mean, triangles, mirrored)
    if opts.resume or not cfg.model.starts_from_prior:
        ids, bary = template_correspondence(face_mean, triangles, template)
    else:
        faces = model.hierarchy.faces(model.num_blocks - 1).cpu().numpy()
        prior = run_on_main(lambda: _learn_prior(statistics, template, cfg.model.prior.components, faces), info)
        cast("PriorFaceNet", model).set_prior(prior)  # a prior network: cfg.model.starts_from_prior
        ids, bary = prior.ids, prior.bary
        say(f"face prior: {prior.basis.shape[0]} shape modes explain {100 * prior.explained:.1f} % of the aligned training faces")
    return ids, bary, ids_m, bary_m


def prior_template(cfg: Config, opts: TrainOptions) -> Any:
    """The finest template level a new model-v2 run learns its prior on (None otherwise): the
    cache statistics then gather the training faces in its topology in their one pass."""
    if opts.resume or not cfg.model.starts_from_prior:
        return None
    from facerecon.mesh.templates import load_template
    from facerecon.model.graph import MeshHierarchy

    hierarchy = MeshHierarchy.from_template(load_template(cfg.model.template))
    blocks = hierarchy.num_levels if cfg.model.blocks is None else cfg.model.blocks
    return hierarchy.template_vertices(blocks - 1).cpu().numpy()


def _learn_prior(statistics: CacheStatistics, template: Any, components: int, faces: Any) -> Any:
    """Model v2's shape basis from the training split (its faces gathered in the statistics' pass)."""
    import numpy as np

    from facerecon.model.face_prior import build_face_prior

    if (
        statistics.prior_samples is None
        or statistics.correspondence is None
        or statistics.correspondence_template is None
        or not np.array_equal(statistics.correspondence_template, template)
    ):
        raise InputError("internal: the cache statistics were read without the network's template")
    shapes, landmarks, fives = (a.numpy() if isinstance(a, torch.Tensor) else a for a in statistics.prior_samples)  # see _shareable
    return build_face_prior(shapes, landmarks, fives, statistics.correspondence, template, components, template_faces=faces)


def _start_or_resume(run: _Run, ckpt: dict | None) -> None:
    """Resume: the states of ``last.pt`` (model, optimizer, schedule, scaler, position, RNG). New
    run: ``config.json`` and no ``metrics.jsonl``. Then DDP wraps the model."""
    if ckpt is not None:
        _check_resumable(run.cfg, ckpt, run.out / "last.pt")
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        for key in run.state:
            run.state[key] = ckpt.get(key, run.state[key])
        _set_rng(ckpt.get("rng", {}))
        run.say(f"resuming {run.out / 'last.pt'}: epoch {run.state['epoch'] + 1}, batch {run.state['step_in_epoch'] + 1}")
    elif run.info.is_main:
        ensure_parent(run.out / "config.json")
        _write_json(run.out / "config.json", run.cfg.to_dict())
        with contextlib.suppress(FileNotFoundError):
            (run.out / "metrics.jsonl").unlink()
    run.ddp_model = run.model
    if run.info.distributed and run.gan_weights is None:  # the GAN averages its gradients itself
        device = run.device
        run.ddp_model = nn.parallel.DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)


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


# ------------------------------------------------------------------------------------- data
def _build_data(run: _Run) -> None:
    """The training set (region draws, augmentation) and, on rank 0, the validation set."""
    from facerecon.data.dataset import FaceCacheDataset

    tc, opts = run.cfg.train, run.opts
    augment = None
    if tc.augment.enabled:
        augment = tc.augment
    yaw_repeat = None if tuple(tc.yaw_repeat) == (1.0, 1.0, 1.0) else tuple(tc.yaw_repeat)
    split = training_split(run.cfg)
    if run.gan_weights is not None:  # the crops with their maps (the cache's profiled views have none)
        from facerecon.data.facevision_maps import MapsDataset

        run.train_set = MapsDataset(opts.cache, run.maps, split=split, augment=augment, seed=tc.seed, yaw_repeat=yaw_repeat)
    else:
        run.train_set = FaceCacheDataset(
            opts.cache, split=split, points_per_region=tuple(tc.points_per_region), seed=tc.seed,
            correspondence=run.correspondence, augment=augment, yaw_repeat=yaw_repeat,
            views_per_epoch=None if tc.profile_views_per_epoch < 0 else tc.profile_views_per_epoch,
        )
    if len(run.train_set) == 0:
        raise InputError(f"{opts.cache}: the {split} split is empty")
    if opts.validate and "val" in tc.splits:
        run.say("train.splits includes val: validation skipped (its faces are trained on)")
    elif opts.validate and run.info.is_main:
        run.val_set = FaceCacheDataset(opts.cache, split="val", points_per_region=None, seed=tc.seed)
        if len(run.val_set) == 0:
            run.val_set = None
            run.say("no val split in the cache: skipping validation")
    per_rank = math.ceil(len(run.train_set) / run.info.world_size)
    run.steps_per_epoch = math.ceil(per_rank / tc.batch_size)


def _epoch_loader(run: _Run, epoch: int) -> DataLoader:
    """The epoch's loader: its sampler skips the batches a resumed epoch has done already."""
    from facerecon.data.dataset import collate_faces

    tc = run.cfg.train
    run.train_set.set_epoch(epoch)
    sampler = EpochSampler(len(run.train_set), run.info.rank, run.info.world_size, tc.seed, epoch, run.state["step_in_epoch"] * tc.batch_size)
    return DataLoader(
        run.train_set,
        batch_size=tc.batch_size,
        sampler=sampler,
        num_workers=tc.num_workers,
        collate_fn=getattr(run.train_set, "collate_fn", collate_faces),  # the GAN's maps: the default collate
        pin_memory=run.device.type == "cuda",
        drop_last=False,
        generator=loader_generator(tc.seed, epoch),  # not the global RNG: exact mid-epoch resume
        worker_init_fn=ignore_stop_signals,  # the main process alone decides when to stop
    )


# ------------------------------------------------------------------------------------- loop
def _train(run: _Run) -> None:
    """The epochs, from the resumed position; then ``last.pt`` if the run stopped mid-epoch."""
    tc = run.cfg.train
    with stop_requests() as stop_request, training_progress(run.info.is_main and not run.opts.quiet and run.opts.progress, tc.epochs, run.steps_per_epoch, run.say) as progress:
        try:
            for epoch in range(run.state["epoch"], tc.epochs):
                if not _train_epoch(run, epoch, progress, stop_request):
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: the step it broke is half done, save nothing
            run.interrupted = run.forced = True
            run.stop_signal = signal.SIGINT
    _save_on_stop(run, progress)


def _train_epoch(run: _Run, epoch: int, progress: TrainingProgress, stop_request: StopRequest) -> bool:
    """One epoch's steps, then its end (validation, saving). False: the run stops here."""
    _train_steps(run, epoch, progress, stop_request)
    if run.stop and run.state["step_in_epoch"] < run.steps_per_epoch:
        return False  # mid-epoch stop: _save_on_stop records the position
    _end_epoch(run, epoch, progress)
    if run.stop:
        return False
    if _agreed_stop(stop_request.requested, run.info, run.device):  # came during validation or saving
        run.interrupted, run.stop_signal = True, stop_request.signum
        return False
    return True


def _train_steps(run: _Run, epoch: int, progress: TrainingProgress, stop_request: StopRequest) -> None:
    """The epoch's batches (the rest of them on a mid-epoch resume), until a stop is asked for."""
    loader = _epoch_loader(run, epoch)
    run.model.train()
    progress.start_epoch(epoch, run.state["step_in_epoch"])
    progress.restore(run.state["running"])
    run.state["running"] = {}
    with stop_signals_blocked():  # workers start here: none may die of a signal before ignoring it
        batches = iter(loader)
    for batch in batches:
        _train_step(run, batch, epoch, progress)
        if run.opts.max_steps is not None and run.run_steps >= run.opts.max_steps:
            run.stop = True
            return
        if _agreed_stop(stop_request.requested, run.info, run.device):  # Ctrl-C / SIGTERM: stop at this step boundary
            run.interrupted = run.stop = True
            run.stop_signal = stop_request.signum
            return


# ------------------------------------------------------------------------------------- step
def _train_step(run: _Run, batch: dict, epoch: int, progress: TrainingProgress) -> None:
    """Forward, loss, backward and one optimizer step on one batch."""
    state, tc = run.state, run.cfg.train
    batch = _to_device(batch, run.device)
    if run.gan_weights is not None:
        _gan_step(run, batch, epoch, progress)
        return
    with torch.autocast(device_type=run.device.type, enabled=run.use_amp):
        pred = forward_batch(run.ddp_model, batch)
    losses = run.loss_fn(pred, batch, epoch=epoch + state["step_in_epoch"] / run.steps_per_epoch)
    total, terms = losses.total, losses.terms
    if not torch.isfinite(total):
        raise FaceReconError(
            f"training diverged: the loss is {float(total)} at epoch {epoch + 1}, "
            f"step {state['global_step'] + 1} (lower --lr or set train.grad_clip)"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if tc.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    state["step_in_epoch"] += 1
    state["global_step"] += 1
    run.run_steps += 1
    progress.step(batch["image"].shape[0] * run.info.world_size, float(total.detach()), {k: float(v) for k, v in terms.items()})


def _gan_step(run: _Run, batch: dict, epoch: int, progress: TrainingProgress) -> None:
    """The FaceVision-GAN family's step: both discriminators, then the generator (``engine.facevision``)."""
    from facerecon.engine.facevision import train_on_batch

    state = run.state
    total, terms = train_on_batch(cast("FaceVisionNet", run.model), batch, run.optimizer, run.gan_weights, run.average)
    if not math.isfinite(total):
        raise FaceReconError(
            f"training diverged: the generator's loss is {total} at epoch {epoch + 1}, step {state['global_step'] + 1} (lower --lr)"
        )
    state["step_in_epoch"] += 1
    state["global_step"] += 1
    run.run_steps += 1
    progress.step(batch["image"].shape[0] * run.info.world_size, total, terms)


# ------------------------------------------------------------------------------------- save
def _end_epoch(run: _Run, epoch: int, progress: TrainingProgress) -> None:
    """A finished epoch: the schedule's step, validation, ``best.pt`` / ``last.pt``, ``metrics.jsonl``."""
    state = run.state
    run.scheduler.step()
    state["epoch"] = epoch + 1
    state["step_in_epoch"] = 0
    metrics: dict[str, float] = {}
    improved = False
    if run.val_set is not None:
        metrics = validate(run.model, run.val_set, run.device, run.opts.eval_settings, run.cfg.train.batch_size, run.opts.val_limit)
        state["metrics"] = metrics
        improved = metrics["chamfer"] < state["best"]
        if improved:
            state["best"] = metrics["chamfer"]
    if run.info.is_main:  # last.pt first: a disk too full for it never keeps a best.pt newer than it
        _save(run, "last.pt")
        if improved:  # the same checkpoint: a hard link, no extra space
            share_checkpoint(run.out / "last.pt", run.out / "best.pt")
        record = {"epoch": epoch + 1, "global_step": state["global_step"], "lr": run.scheduler.get_last_lr()[0]}
        record.update(progress.epoch_means())
        record.update({f"val_{k}": v for k, v in metrics.items()})
        _append_jsonl(run.out / "metrics.jsonl", record)
        run.say(_epoch_line(record))
    run.last_saved = state["global_step"]
    barrier(run.info)


def _save_on_stop(run: _Run, progress: TrainingProgress) -> None:
    """After the loop: ``last.pt`` with the position and loss sums of a run stopped mid-epoch."""
    state = run.state
    if run.forced:
        run.say(f"interrupted again: stopped at once without saving; {run.out / 'last.pt'} holds the last save")
    elif run.interrupted or (run.stop and state["step_in_epoch"] > 0):
        if state["step_in_epoch"] > 0:
            state["running"] = progress.running()
        if run.info.is_main and run.last_saved != state["global_step"]:
            _save(run, "last.pt")
        if run.interrupted:
            run.say(f"interrupted: saved {run.out / 'last.pt'}; continue with --resume")


def _save(run: _Run, name: str) -> None:
    save_checkpoint(
        run.out / name,
        training_checkpoint(run.cfg.to_dict(), run.model, run.optimizer, run.scheduler, run.scaler, run.state, run.reference),
    )


# ------------------------------------------------------------------------------------- validation
def validate(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    settings: EvalSettings,
    batch_size: int,
    limit: int | None = None,
) -> dict[str, float]:
    """Mean Chamfer, F-scores and NME of ``model`` over ``dataset``: ``facerecon eval``'s numbers
    (``engine.evaluate.evaluate_network``), without the fold percentage."""
    was_training = model.training
    report = evaluate_network(model, dataset, settings, batch_size, device, limit, folds=False)
    model.train(was_training)
    return metric_means(report.rows)


def _rank_checksums(model: nn.Module, info: DistInfo) -> list[float]:
    """Every rank's parameter checksum (all ranks must hold the same parameters under DDP)."""
    with torch.no_grad():
        value = sum(float(p.double().sum() + p.double().square().sum()) for p in model.parameters())
    if not info.distributed:
        return [value]
    gathered: list[Any] = [None] * info.world_size  # each rank's float
    torch.distributed.all_gather_object(gathered, value)
    return [float(v) for v in gathered]


# ------------------------------------------------------------------------------------- helpers
def _silent(_message: str) -> None:
    pass


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


# ------------------------------------------------------------------------------------- stop
def _agreed_stop(requested: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether any rank was asked to stop (all ranks must stop after the same step)."""
    if not info.distributed:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)
