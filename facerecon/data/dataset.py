"""The training-side reader: a torch ``Dataset`` over a ``prepare`` cache, and the batch collate.

Per sample it returns the crop image and the dense ground truth, either all points with per-point
region weights, or a fixed number of points drawn per region (the face paper's landmark-weighted
sampling: 11000 / 4000 / 3000 for boundary / sub-priority / key, 18000 in all). Draws are
without replacement; a region with fewer points than asked gives each of its points once and
the shortfall drawn with replacement; an empty region's draws come
from the whole cloud, so every sample has the same total. The generator is seeded by
``(seed, epoch, index)``: the same sample gets the same draw in any worker process, and a new
one each epoch (:meth:`FaceCacheDataset.set_epoch`).

The HDF5 file is opened lazily in each process that reads (h5py handles must not cross a fork).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from facerecon.errors import InputError

#: Points drawn per region (boundary 0, sub-priority 1, key 2): the face paper's best setting.
DEFAULT_POINTS_PER_REGION = (11000, 4000, 3000)
SPLITS = {"train": 0, "val": 1, "test": 2}


def split_codes(split: str) -> list[int] | None:
    """The cache's codes of ``split``: one of ``SPLITS``, several joined by ``+`` (``"train+val"``);
    None for ``"all"``. Raises ``InputError`` for anything else."""
    if split == "all":
        return None
    names = split.split("+")
    if any(n not in SPLITS for n in names) or len(set(names)) != len(names):
        raise InputError(f"split must be train, val, test (or several joined by '+', e.g. train+val) or all; got {split!r}")
    return [SPLITS[n] for n in names]


def split_rows(split_arr: np.ndarray, split: str) -> np.ndarray:
    """Rows of a cache's ``split`` array in ``split`` (see :func:`split_codes`)."""
    codes = split_codes(split)
    return np.arange(split_arr.shape[0]) if codes is None else np.flatnonzero(np.isin(split_arr, codes))


class FaceCacheDataset(torch.utils.data.Dataset):
    """Samples of one split of a cache written by ``facerecon prepare``.

    Args:
        path: the ``.h5`` cache.
        split: ``"train"``, ``"val"``, ``"test"``, several joined by ``+`` (``"train+val"``) or ``"all"``.
        points_per_region: draws per region ``(boundary, sub, key)``; None returns every point.
        weights: per-region loss weights ``(boundary, sub, key)`` put on each point
            (e.g. ``(0.5, 1.5, 2.0)`` for TPAMI-style weighting); None gives 1 everywhere.
        seed: base seed of the draws.
        return_image_float: image as float32 in [0, 1] (else uint8), ``(3, 224, 224)`` either way.
        correspondence: ``(ids, bary)`` or ``(ids, bary, ids_mirrored, bary_mirrored)``, each
            (V, 3), from ``facerecon.model.face_prior.template_correspondence``: every item then
            has ``vertices`` (V, 3), the ground truth in the template's topology (needs a cache
            whose points are the face model's vertices in order). The mirrored pair is used for
            flipped samples.
        augment: a ``facerecon.data.augment.AugmentSettings`` to augment every item (training),
            or None. With ``five_outlier`` > 0 the split's own gross five-point failures are
            collected once (``FivePointFailures``) and transplanted onto its faces.
        profile_views: include the cache's face-profiled views (``prepare --profile-views``,
            training rows only) after the rows when the split includes ``train``.
        views_per_epoch: serve only this many of the views per epoch, a different seeded draw
            each epoch (:meth:`epoch_view`); None: all of them. Keeps an epoch's length, and so
            the learning-rate schedule, independent of how many views the cache holds.

    Each item is a dict:
        ``image`` (3, 224, 224); ``points``, ``normals`` (P, 3) float32 crop units / unit vectors;
        ``regions`` (P,) int64; ``weights`` (P,) float32; ``colors`` (P, 3) float32 in [0, 1];
        ``landmarks`` (68, 3) float32 crop units; ``pose`` (3,) float32 yaw, pitch, roll degrees;
        ``mm_per_unit`` () float32; ``index`` () int64 (row in the cache); ``id`` str;
        ``landmarks5`` (5, 2) float32 MTCNN's five points, crop units (NaN: none); ``vertices``
        (V, 3) with a ``correspondence``. A profiled view's ``index`` is its source row and its
        ``id`` the source's with ``@view<k>``; its ground truth is derived from the source row's
        (:func:`view_arrays`).
    """

    rows: np.ndarray  # the split's cache rows, in item order (with the yaw repeats)

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str = "train",
        points_per_region: Sequence[int] | None = DEFAULT_POINTS_PER_REGION,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        return_image_float: bool = True,
        correspondence: Any = None,
        augment: Any = None,
        yaw_repeat: Sequence[float] | None = None,
        profile_views: bool = True,
        views_per_epoch: int | None = None,
    ) -> None:
        import h5py

        from facerecon.data.cache import SCHEMA_VERSION

        self.path = Path(path)
        split_codes(split)  # refuse an unknown split before opening the file
        self.points_per_region = _checked_counts(points_per_region)
        if weights is not None and len(weights) != 3:
            raise InputError(f"weights must be 3 numbers (boundary, sub, key), got {weights}")
        self.weights = np.asarray(weights if weights is not None else (1.0, 1.0, 1.0), dtype=np.float32)
        self.seed = int(seed)
        self.epoch = 0
        self.return_image_float = return_image_float
        self.augment = augment
        self.correspondence = _correspondence_arrays(correspondence) if correspondence is not None else None
        try:
            with h5py.File(self.path, "r") as f:
                version = int(f.attrs.get("schema_version", -1))
                if version != SCHEMA_VERSION:
                    raise InputError(f"{self.path}: cache schema {version} is not {SCHEMA_VERSION}; run facerecon prepare again")
                yaw = self._read_index(f, split, augment, profile_views, yaw_repeat is not None)
                if correspondence is not None and not bool(f.attrs.get("points_in_model_order", False)):
                    raise InputError(f"{self.path}: per-vertex ground truth needs points in the face model's order (a 3DMM cache)")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open cache ({exc})") from None
        except KeyError as exc:
            raise InputError(f"{self.path}: not a facerecon cache (missing {exc})") from None
        if views_per_epoch is not None and views_per_epoch < 0:
            raise InputError(f"views_per_epoch must be >= 0, got {views_per_epoch}")
        self.views_per_epoch = self.n_views if views_per_epoch is None else min(int(views_per_epoch), self.n_views)
        self.copies = np.zeros_like(self.rows)  # 0: the sample itself; k > 0: its k-th repeat
        if yaw is not None and yaw_repeat is not None:
            self.rows, self.copies = yaw_repeat_rows(self.rows, yaw[self.rows], yaw_repeat, self.seed)
        self.n_rows = int(self.rows.shape[0])
        self.split = split
        self._file: Any = None
        self._pid: int | None = None

    def _read_index(self, f: Any, split: str, augment: Any, profile_views: bool, with_yaw: bool) -> np.ndarray | None:
        """What every item needs from the open cache ``f``: the split's rows, the point offsets,
        the ids, the number of profiled views and the split's gross five-point failures. Returns
        every row's abs(yaw) (``with_yaw``, for the yaw repeats) or None."""
        split_arr = f["split"][:]
        yaw = np.abs(f["pose"][:, 0]) if with_yaw else None
        rows = split_rows(split_arr, split)
        self.five_failures = None
        if augment is not None and augment.five_outlier > 0 and "landmarks5" in f:
            from facerecon.data.augment import FivePointFailures

            self.five_failures = FivePointFailures.from_samples(
                f["landmarks"][:][rows], f["landmarks5"][:][rows], f["pose"][:, 0][rows]
            )
        self.offsets = f["offsets"][:].astype(np.int64)
        codes = split_codes(split)
        with_views = profile_views and "views" in f and (codes is None or 0 in codes)
        self.n_views = int(f["views/source"].shape[0]) if with_views else 0
        self._all_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][:]]
        self.rows = rows
        return yaw

    def __len__(self) -> int:
        return self.n_rows + self.views_per_epoch

    def epoch_view(self, k: int) -> int:
        """The stored view served as the epoch's ``k``-th view: all of them in order, or, when an
        epoch serves fewer views than the cache holds, the first ``views_per_epoch`` of a
        permutation seeded by (seed, epoch), so that every epoch sees other views."""
        if self.views_per_epoch == self.n_views:
            return k
        order = np.random.default_rng([self.seed, self.epoch, 3000]).permutation(self.n_views)
        return int(order[k])

    def set_epoch(self, epoch: int) -> None:
        """Change the draws (call at the start of each epoch; DataLoader workers pick it up when
        they are re-created per epoch, i.e. without ``persistent_workers``)."""
        self.epoch = int(epoch)

    def _h5(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r", rdcc_nbytes=16 << 20)
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # never pickle an open handle into a worker
        return state

    def draw(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Indices of the points to keep for one sample.

        Args:
            regions: ``(P,)`` region labels of the sample.
            rng: the sample's generator.

        Returns:
            ``(sum(points_per_region),)`` int64 indices into the sample's points.
        """
        assert self.points_per_region is not None
        picks = []
        for region, count in enumerate(self.points_per_region):
            if count == 0:
                continue
            pool = np.flatnonzero(regions == region)
            if pool.shape[0] == 0:
                pool = np.arange(regions.shape[0])
            if pool.shape[0] >= count:
                picks.append(pool[rng.permutation(pool.shape[0])[:count]])
            else:  # every point once, the shortfall drawn with replacement
                extra = pool[rng.integers(0, pool.shape[0], count - pool.shape[0])]
                picks.append(np.concatenate([pool[rng.permutation(pool.shape[0])], extra]))
        return np.concatenate(picks)

    def _stored(self, item: int) -> tuple[dict[str, Any], list[int]]:
        """Item ``item``'s arrays, read (a row) or derived (a profiled view), and its seed key."""
        f = self._h5()
        if item >= self.n_rows:
            v = self.epoch_view(item - self.n_rows)
            d = view_arrays(f, v, self.offsets)
            d["id"] = f"{self._all_ids[d['index']]}@view{int(f['views/view'][v])}"
            return d, [self.seed, self.epoch, d["index"], 2000 + int(f["views/view"][v])]
        row = int(self.rows[item])
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        d = {name: f[name][a:b] for name in ("regions", "points", "normals", "colors")}
        d.update(
            image=f["images"][row], landmarks=f["landmarks"][row].astype(np.float32), pose=f["pose"][row].astype(np.float32),
            landmarks5=f["landmarks5"][row].astype(np.float32) if "landmarks5" in f else np.full((5, 2), np.nan, np.float32),
            mm_per_unit=float(f["mm_per_unit"][row]), index=row, id=self._all_ids[row],
        )
        return d, [self.seed, self.epoch, row] + ([int(self.copies[item]) + 1000] if self.copies[item] else [])

    def __getitem__(self, item: int) -> dict[str, Any]:
        d, key = self._stored(int(item))
        aug_rng = np.random.default_rng(key + [1]) if self.augment is not None else None
        tf = None
        if aug_rng is not None:
            from facerecon.data.augment import draw_transform

            tf = draw_transform(aug_rng, self.augment)
        vertices = None
        if self.correspondence is not None:
            ids, bary, ids_m, bary_m = self.correspondence
            if tf is not None and tf.flip:
                ids, bary = ids_m, bary_m
            from facerecon.model.face_prior import template_truth

            vertices = template_truth(d["points"], ids, bary)
        if self.points_per_region is not None:
            idx = self.draw(d["regions"], np.random.default_rng(key))
            for name in ("regions", "points", "normals", "colors"):
                d[name] = d[name][idx]
        d["normals"] = d["normals"].astype(np.float32)
        if tf is not None and aug_rng is not None:
            vertices = self._augment(d, tf, aug_rng, vertices)
        return self._tensors(d, vertices)

    def _augment(self, d: dict[str, Any], tf: Any, rng: np.random.Generator, vertices: np.ndarray | None) -> np.ndarray | None:
        """Apply the drawn transform ``tf`` to the item's arrays in ``d`` (image with photometric
        changes, points, normals, landmarks, the five points with their noise, drops and
        transplanted failures) and to ``vertices``; returns the moved vertices."""
        from facerecon.data.augment import apply_geometry, apply_normals, flip_landmarks, photometric, warp_image

        aug = self.augment
        true_landmarks = d["landmarks"]
        d["image"] = photometric(warp_image(tf, d["image"]), rng, aug)
        d["points"] = apply_geometry(tf, d["points"])
        d["normals"] = apply_normals(tf, d["normals"])
        landmarks = apply_geometry(tf, d["landmarks"])
        five = apply_geometry(tf, d["landmarks5"]) + rng.normal(0.0, aug.five_noise, size=(5, 2)).astype(np.float32)
        if vertices is not None:
            vertices = apply_geometry(tf, vertices)
        if tf.flip:
            landmarks = flip_landmarks(landmarks)
            five = flip_landmarks(five, five=True)
        if aug.drop_five > 0 and rng.random() < aug.drop_five:
            five = np.full((5, 2), np.nan, np.float32)  # as an undetected face's average crop
        elif self.five_failures and rng.random() < aug.five_outlier:
            five = apply_geometry(tf, self.five_failures.transplant(true_landmarks, float(d["pose"][0]), rng))
            if tf.flip:
                five = flip_landmarks(five, five=True)
        d["landmarks"], d["landmarks5"] = landmarks, five
        return vertices

    def _tensors(self, d: dict[str, Any], vertices: np.ndarray | None) -> dict[str, Any]:
        """The item as tensors (the image as float in [0, 1] unless ``return_image_float`` is off)."""
        image = torch.from_numpy(np.ascontiguousarray(d["image"].transpose(2, 0, 1)))
        if self.return_image_float:
            image = image.float().div_(255.0)
        regions = d["regions"]
        out = {
            "image": image,
            "points": torch.from_numpy(np.ascontiguousarray(d["points"], dtype=np.float32)),
            "normals": torch.from_numpy(d["normals"]),
            "regions": torch.from_numpy(regions.astype(np.int64)),
            "weights": torch.from_numpy(self.weights[regions]),
            "colors": torch.from_numpy(d["colors"].astype(np.float32) / 255.0),
            "landmarks": torch.from_numpy(np.ascontiguousarray(d["landmarks"], dtype=np.float32)),
            "landmarks5": torch.from_numpy(np.ascontiguousarray(d["landmarks5"], dtype=np.float32)),
            "pose": torch.from_numpy(d["pose"]),
            "mm_per_unit": torch.tensor(d["mm_per_unit"], dtype=torch.float32),
            "index": torch.tensor(d["index"], dtype=torch.int64),
            "id": d["id"],
        }
        if vertices is not None:
            out["vertices"] = torch.from_numpy(vertices)
        return out

def _checked_counts(points_per_region: Sequence[int] | None) -> tuple[int, ...] | None:
    """The points drawn per region (boundary, sub, key) as ints, checked; None: every point."""
    if points_per_region is None:
        return None
    counts = tuple(int(c) for c in points_per_region)
    if len(counts) != 3 or min(counts) < 0 or sum(counts) == 0:
        raise InputError(f"points_per_region must be 3 counts >= 0 (boundary, sub, key), got {counts}")
    return counts


def _correspondence_arrays(correspondence: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, barycentrics, mirrored ids, mirrored barycentrics) with their dtypes; a pair
    without a mirrored one serves both."""
    parts = [np.asarray(c) for c in correspondence]
    if len(parts) == 2:
        parts = parts + parts
    return parts[0].astype(np.int64), parts[1].astype(np.float32), parts[2].astype(np.int64), parts[3].astype(np.float32)


def view_arrays(f: Any, v: int, offsets: np.ndarray) -> dict[str, Any]:
    """A profiled view's ground truth derived from its source row (``docs/profiling.md``): the
    stored ``(3, 4)`` crop-units map ``M`` moves the points and landmarks, its rotation part
    ``M[:, :3] side' / side`` the normals; regions are the source's, colours are read from the
    view's crop at the moved points, millimetres per unit scale by ``side' / side``.

    Args:
        f: the open cache; v: the view's number in ``views/``; offsets: the rows' point offsets.
    """
    from facerecon.imageio import sample_colors

    g = f["views"]
    row = int(g["source"][v])
    m = g["transform"][v].astype(np.float64)
    scale = float(g["boxes"][v][2] / f["boxes"][row][2])  # side' / side
    a, b = int(offsets[row]), int(offsets[row + 1])
    points = (f["points"][a:b].astype(np.float64) @ m[:, :3].T + m[:, 3]).astype(np.float32)
    image = g["images"][v]
    size = image.shape[0]
    return {
        "regions": f["regions"][a:b],
        "points": points,
        "normals": (f["normals"][a:b].astype(np.float64) @ (m[:, :3] * scale).T).astype(np.float32),
        "colors": sample_colors(image, (points[:, :2].astype(np.float64) + 1.0) * (size / 2.0)),
        "image": image,
        "landmarks": (f["landmarks"][row].astype(np.float64) @ m[:, :3].T + m[:, 3]).astype(np.float32),
        "pose": g["pose"][v].astype(np.float32),
        "landmarks5": g["landmarks5"][v].astype(np.float32),
        "mm_per_unit": float(f["mm_per_unit"][row]) * scale,
        "index": row,
    }


_POINT_KEYS = ("points", "normals", "regions", "weights", "colors")


def collate_faces(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of :class:`FaceCacheDataset` items into a batch.

    Per-point tensors are padded to the longest cloud of the batch: ``points``, ``normals``,
    ``colors`` with 0, ``weights`` with 0 (padding never counts in a weighted loss), ``regions``
    with -1. ``lengths`` ``(B,)`` int64 gives each cloud's true size; everything else is stacked,
    ``id`` becomes a list of str.
    """
    if not batch:
        raise InputError("collate_faces needs at least one sample")
    lengths = torch.tensor([int(s["points"].shape[0]) for s in batch], dtype=torch.int64)
    longest = int(lengths.max())
    out: dict[str, Any] = {"lengths": lengths}
    for key in batch[0]:
        values = [s[key] for s in batch]
        if key in _POINT_KEYS:
            fill = -1 if key == "regions" else 0
            shape = (len(batch), longest, *values[0].shape[1:])
            padded = torch.full(shape, fill, dtype=values[0].dtype)
            for i, v in enumerate(values):
                padded[i, : v.shape[0]] = v
            out[key] = padded
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = list(values)
    return out


def yaw_repeat_rows(rows: np.ndarray, yaw: np.ndarray, repeat: Sequence[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows repeated by their |yaw| bin (0-30, 30-60, 60-90+ degrees): a weight ``w`` shows every
    row of its bin ``floor(w)`` times and a fixed (seeded) share ``w - floor(w)`` of them once more.

    Returns:
        ``(rows, copies)``: the original rows first (copy 0), then the repeats (copy k >= 1).
    """
    weights = np.asarray([float(w) for w in repeat], dtype=np.float64)
    if weights.shape != (3,) or (weights < 1.0).any():
        raise InputError(f"train.yaw_repeat must be 3 weights >= 1 (|yaw| 0-30, 30-60, 60-90), got {tuple(repeat)}")
    bins = np.digitize(np.abs(yaw), [30.0, 60.0])
    gen = np.random.default_rng([int(seed), 77])
    out_rows, out_copies = [rows], [np.zeros_like(rows)]
    for b, w in enumerate(weights):
        members = rows[bins == b]
        whole = int(np.floor(w))
        for k in range(1, whole):
            out_rows.append(members)
            out_copies.append(np.full_like(members, k))
        extra = int(round((w - whole) * members.shape[0]))
        if extra:
            out_rows.append(np.sort(gen.choice(members, size=extra, replace=False)))
            out_copies.append(np.full(extra, whole, dtype=rows.dtype))
    return np.concatenate(out_rows), np.concatenate(out_copies)

