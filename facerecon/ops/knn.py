"""Exact nearest neighbours in both directions between batched 3D point clouds.

Backends: the compiled extension (C++/OpenMP on the CPU, CUDA on the GPU; see ``build.py``) and a
pure-torch fallback (chunked, bounded memory, same results) used with a one-time warning when the
extension cannot be built or loaded. ``FACERECON_NN_BACKEND=torch|cpp|auto`` forces a backend
(``cpp`` means "the compiled extension", CPU or CUDA kernel; forcing it raises when it is missing).

Autograd: the kernels only pick the indices (no gradient flows through an argmin); the squared
distances are recomputed in torch from them, ``(x - y[idx]).square().sum(-1)``, which is exact,
differentiable w.r.t. both clouds (and twice), and works for any floating dtype.
"""

from __future__ import annotations

import os
import types
import warnings
from typing import NamedTuple, Optional, Sequence, Union

import torch

import facerecon.ops.build as build
from facerecon.errors import DependencyError, InputError

LengthsLike = Union[torch.Tensor, Sequence[int], None]

_FALLBACK_BYTES = 64 * 2**20  # bound on the fallback's temporaries


class NNResult(NamedTuple):
    """Nearest neighbours in both directions (pytorch3d's padding convention).

    dist_xy: (B, N) SQUARED distance from each x point to its nearest y point (squared input units).
    idx_xy: (B, N) int64 index into y of that point; -1 for padded x rows (their distance is 0).
    dist_yx: (B, M) squared distance from each y point to its nearest x point.
    idx_yx: (B, M) int64 index into x; -1 for padded y rows.
    """

    dist_xy: torch.Tensor
    idx_xy: torch.Tensor
    dist_yx: torch.Tensor
    idx_yx: torch.Tensor


# ----------------------------------------------------------------------------------- extension
def _forced() -> str:
    value = os.environ.get("FACERECON_NN_BACKEND", "auto").strip().lower() or "auto"
    if value not in ("auto", "torch", "cpp", "cuda"):
        raise InputError(f"FACERECON_NN_BACKEND={value!r} is not one of auto, torch, cpp")
    return value


def _extension_for(device: torch.device) -> Optional[types.ModuleType]:
    """The extension to use for tensors on ``device``, or None for the torch fallback."""
    forced = _forced()
    if forced == "torch":
        return None
    module = build.ensure_extension()
    usable = module is not None and (device.type == "cpu" or (device.type == "cuda" and module.with_cuda))
    if usable:
        return module
    state = build._state
    reason = state.failure or f"the extension has no kernel for {device.type} tensors"
    if forced in ("cpp", "cuda"):
        raise DependencyError(f"FACERECON_NN_BACKEND={forced} but the compiled extension is unavailable: {reason}")
    if not state.warned:
        state.warned = True
        warnings.warn(
            f"facerecon: compiled nearest-neighbour extension unavailable ({reason}); using the slower "
            "pure-torch fallback. Run `python -m facerecon.ops --verbose` to see why.",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def backend(device: Union[torch.device, str, None] = None) -> str:
    """The backend used for tensors on ``device`` (default: CUDA if available, else CPU).

    Returns ``"cuda"`` (compiled CUDA kernel), ``"cpp"`` (compiled C++/OpenMP kernel) or
    ``"torch"`` (fallback). Builds the extension on first call if needed (like first use).
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            module = _extension_for(device)
        except DependencyError:
            return "torch"
    if module is None:
        return "torch"
    return "cuda" if device.type == "cuda" else "cpp"


def backend_summary() -> str:
    """One line naming the backend in use and the build cache. Never compiles anything."""
    forced = _forced()
    threads = torch.get_num_threads()
    state = build._state
    module, directory = state.module, state.directory
    if module is None and forced != "torch" and not state.tried:
        for with_cuda in ([True, False] if build.cuda_wanted() else [False]):
            spec = build.make_spec(with_cuda)
            if build.is_built(spec):
                try:
                    module = build.load(spec, build=False)
                except Exception:  # broad on purpose: a broken cache entry is reported as not built
                    continue
                state.tried, state.module, state.directory = True, module, spec.directory
                directory = spec.directory
                break
    if forced == "torch":
        return f"nearest neighbours: pure torch (forced by FACERECON_NN_BACKEND), {threads} threads"
    if module is not None:
        cuda = "built" if module.with_cuda else "not built"
        return (f"nearest neighbours: compiled C++/OpenMP ({threads} threads), CUDA: {cuda}; "
                f"cache {directory}")
    if state.failure:
        return f"nearest neighbours: pure torch fallback (build failed: {state.failure})"
    return (f"nearest neighbours: compiled extension not built yet (built at first use or by "
            f"`python -m facerecon.ops`), cache {build.cache_root()}")


# ---------------------------------------------------------------------------------- validation
def _lengths(lengths: LengthsLike, size: int, batch: int, device: torch.device, name: str) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.int64, device=device)
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise InputError(f"{name} must hold integers, got dtype {lengths.dtype}")
    if lengths.device != device:
        raise InputError(f"{name} is on {lengths.device} but the points are on {device}")
    if tuple(lengths.shape) != (batch,):
        raise InputError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    lengths = lengths.to(torch.int64)
    if batch:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1:
            raise InputError(f"{name} has an empty cloud (length {low}); every cloud needs at least one point")
        if high > size:
            raise InputError(f"{name} has length {high} but the padded clouds hold only {size} points")
    return lengths


def _check_cloud(points: object, name: str) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (B, P, 3), got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise InputError(f"{name} must have shape (B, P, 3), got {tuple(points.shape)}")
    if points.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{name} must be float32 or float64, got {points.dtype}")
    if points.shape[1] == 0:
        raise InputError(f"{name} is an empty cloud (0 points); every cloud needs at least one point")
    return points


def _check_finite(points: torch.Tensor, lengths: torch.Tensor, full: bool, name: str) -> None:
    ok = torch.isfinite(points.detach()).all(dim=-1)  # (B, P)
    if not full:  # padded rows are ignored, whatever they hold
        ok = ok | (torch.arange(points.shape[1], device=points.device) >= lengths[:, None])
    if not bool(ok.all()):
        b, i = (~ok).nonzero()[0].tolist()
        raise InputError(f"{name}[{b}, {i}] is not finite (NaN or inf); clean the point cloud first")


def validate(x: torch.Tensor, y: torch.Tensor, x_lengths: LengthsLike = None,
             y_lengths: LengthsLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two padded clouds and return their lengths as (B,) int64 tensors.

    Raises InputError for wrong shapes or dtypes, mismatched batch sizes, devices or dtypes, empty
    clouds, lengths out of range and non-finite coordinates within the lengths.
    """
    x = _check_cloud(x, "x")
    y = _check_cloud(y, "y")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if x.device != y.device:
        raise InputError(f"x is on {x.device} but y is on {y.device}; move both to one device")
    if x.dtype != y.dtype:
        raise InputError(f"x is {x.dtype} but y is {y.dtype}; use one dtype for both clouds")
    batch = x.shape[0]
    xl = _lengths(x_lengths, x.shape[1], batch, x.device, "x_lengths")
    yl = _lengths(y_lengths, y.shape[1], batch, y.device, "y_lengths")
    _check_finite(x, xl, x_lengths is None, "x")
    _check_finite(y, yl, y_lengths is None, "y")
    return xl, yl


# ------------------------------------------------------------------------------------ fallback
def _torch_nearest(x: torch.Tensor, y: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch indices (idx_xy (B, N), idx_yx (B, M)), chunked to bound temporaries.

    Direct differences (no |a|^2 + |b|^2 - 2ab expansion); ties go to the smallest index.
    """
    batch, n_max, m_max = x.shape[0], x.shape[1], y.shape[1]
    idx_xy = torch.full((batch, n_max), -1, dtype=torch.int64, device=x.device)
    idx_yx = torch.full((batch, m_max), -1, dtype=torch.int64, device=x.device)
    for b, (n, m) in enumerate(zip(xl.tolist(), yl.tolist())):
        a, c = x[b, :n], y[b, :m]
        # (k, m, 3) differences + (k, m) distances: 4 * k * m elements.
        chunk = max(1, _FALLBACK_BYTES // (4 * m * x.element_size()))
        col_best = torch.full((m,), float("inf"), dtype=x.dtype, device=x.device)
        col_arg = torch.zeros((m,), dtype=torch.int64, device=x.device)
        for s in range(0, n, chunk):
            d = (a[s:s + chunk, None, :] - c[None, :, :]).square_().sum(-1)  # (k, m)
            idx_xy[b, s:s + d.shape[0]] = d.argmin(dim=1)
            values, rows = d.min(dim=0)
            better = values < col_best  # strict: an earlier chunk keeps ties
            col_best = torch.where(better, values, col_best)
            col_arg = torch.where(better, rows + s, col_arg)
        idx_yx[b, :m] = col_arg
    return idx_xy, idx_yx


def _gather_sq_dist(points: torch.Tensor, others: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, P) squared distance from each point to ``others[idx]``; 0 where idx is -1 (padding)."""
    valid = idx >= 0
    nearest = torch.gather(others, 1, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, 3))
    dist = (points - nearest).square().sum(-1)
    return torch.where(valid, dist, torch.zeros((), dtype=dist.dtype, device=dist.device))


# --------------------------------------------------------------------------------------- front
def nearest_indices(x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor, y_lengths: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices only, for VALIDATED inputs: (idx_xy (B, N), idx_yx (B, M)) int64, -1 on padding."""
    x, y = x.detach(), y.detach()
    module = _extension_for(x.device)
    if module is None:
        return _torch_nearest(x, y, x_lengths, y_lengths)
    out = module.knn_bidirectional(x, y, x_lengths, y_lengths, torch.get_num_threads())
    return out[1], out[3]


def nearest_neighbors(x: torch.Tensor, y: torch.Tensor, x_lengths: LengthsLike = None,
                      y_lengths: LengthsLike = None) -> NNResult:
    """Exact nearest neighbour of every x point in y and of every y point in x.

    Args:
        x: (B, N, 3) float32 or float64 points, any unit.
        y: (B, M, 3) points of the same dtype, unit and device.
        x_lengths: (B,) int64 number of valid points of each x cloud (rows beyond are padding and
            are ignored, whatever they hold); None means all N.
        y_lengths: (B,) int64, likewise for y.

    Returns:
        NNResult(dist_xy (B, N), idx_xy (B, N) int64, dist_yx (B, M), idx_yx (B, M) int64): SQUARED
        Euclidean distances (squared input units) and indices of the nearest point; padded rows
        get distance 0 and index -1. Ties go to the smallest index. The distances are
        differentiable w.r.t. x and y (the indices are piecewise constant).

    Raises:
        InputError: wrong shapes/dtypes, mismatched devices or dtypes, empty clouds, lengths out of
            range, non-finite coordinates.
    """
    xl, yl = validate(x, y, x_lengths, y_lengths)
    with torch.no_grad():
        idx_xy, idx_yx = nearest_indices(x, y, xl, yl)
    return NNResult(_gather_sq_dist(x, y, idx_xy), idx_xy, _gather_sq_dist(y, x, idx_yx), idx_yx)
