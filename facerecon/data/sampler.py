"""The training data order: one seeded shuffle per epoch, split between ranks, resumable mid-epoch.

The order depends only on the seed, the epoch, the rank and the number of ranks (never on the
global RNG), so two runs with the same seed read the same batches, and a run resumed in the middle
of an epoch reads the rest of that epoch's batches.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """The epoch's shuffled order (seeded by seed + epoch, identical on every rank), this rank's
    share of it (``order[rank::world]``, padded by wrapping like DistributedSampler), minus the
    first ``skip`` items already consumed before a resume."""

    def __init__(self, n: int, rank: int, world: int, seed: int, epoch: int, skip: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
        total = math.ceil(n / world) * world
        order += order[: total - n]
        self.indices = order[rank::world][skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """The training loader's own generator (its worker seeds), seeded by seed and epoch: creating
    the loader again on a mid-epoch resume then leaves the global RNG as an uninterrupted run's."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
