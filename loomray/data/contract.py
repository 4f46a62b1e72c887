"""Datasets as table rows: every dataset yields (row index, sample in [-1, 1]).

With ``flip`` on, a dataset of N images has 2N rows and row ``i + N`` is image
``i`` mirrored, which is how the coupling table treats flips (each mirrored
image keeps noise slots of its own, as in the authors' code).

Minibatches are a pure function of (seed, step): ``BatchPlan.global_rows(step)``
walks a fresh permutation of the rows every epoch, and each rank takes its
slice. That makes a resumed run, a replay, and the coupling service all agree
on which rows a step trains on, with no sampler state to save.

The contract every kind of dataset meets (``RowDataset``), the batch plan, and the
registry through which ``build_dataset`` finds the kind a config names; each kind
registers itself from its own module (``loomray.data.<kind>``) and this module
imports none of them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from loomray.config import Config


class DatasetError(ValueError):
    """A dataset is missing or unreadable; the message says where we looked."""


class RowDataset(Dataset):
    """Rows 0..N-1 are the samples; N..2N-1 their mirror images when ``flip``."""

    def __init__(self, n_items: int, shape: tuple[int, ...], flip: bool) -> None:
        self.n_items = n_items
        self.shape = tuple(shape)
        self.flip = flip

    def __len__(self) -> int:
        return self.n_items * (2 if self.flip else 1)

    @abstractmethod
    def item(self, index: int) -> torch.Tensor:
        """Sample ``index`` (not mirrored), float32 in [-1, 1]."""

    def items(self, indices: np.ndarray) -> torch.Tensor:
        return torch.stack([self.item(int(i)) for i in indices])

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """Samples of the given rows, float32 [B, *shape] in [-1, 1]."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for a dataset of {len(self)} rows")
        x = self.items(rows % self.n_items)
        mirrored = rows >= self.n_items  # decided on the host, in numpy
        if mirrored.any():
            mask = torch.from_numpy(mirrored)
            x[mask] = torch.flip(x[mask], dims=[-1])
        return x

    def batch_at(self, rows: np.ndarray, step: int) -> torch.Tensor:
        """The samples training uses at ``step`` (the same as ``batch`` unless the data
        draws per step, like latents' posterior samples)."""
        return self.batch(rows)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor]:
        return row, self.batch(np.array([row]))[0]


class ArrayDataset(RowDataset):
    """Samples held in memory: uint8 images (0..255) or float arrays already in [-1, 1]."""

    def __init__(self, data: np.ndarray, flip: bool) -> None:
        super().__init__(len(data), data.shape[1:], flip)
        self.data = torch.from_numpy(np.ascontiguousarray(data))

    def items(self, indices: np.ndarray) -> torch.Tensor:
        x = self.data[torch.from_numpy(np.asarray(indices, np.int64))]
        if x.dtype == torch.uint8:
            return x.float() / 127.5 - 1.0
        return x.float().clone()

    def item(self, index: int) -> torch.Tensor:
        return self.items(np.array([index]))[0]


def limited(data, limit: int | None):
    return data if limit is None else data[:limit]


Loader = Callable[[Config, "Path | None"], RowDataset]
LOADERS: dict[str, tuple[Loader, bool]] = {}


def register(*names: str, root: bool = True) -> Callable[[Loader], Loader]:
    """Make ``loader(cfg, root)`` the one for data.name in ``names``; ``root``: the kind
    reads data.root (a DatasetError says it is required when unset)."""

    def add(loader: Loader) -> Loader:
        for name in names:
            LOADERS[name] = (loader, root)
        return loader

    return add


def build_dataset(cfg: Config) -> RowDataset:
    """The dataset a config names, or a DatasetError saying where it looked."""
    d = cfg.data
    root = Path(d.root).expanduser() if d.root else None
    if d.name not in LOADERS:
        raise DatasetError(f"no dataset of kind {d.name!r} is known")
    loader, needs_root = LOADERS[d.name]
    if needs_root and root is None:
        raise DatasetError(f"data.root is required for the {d.name} dataset")
    return loader(cfg, root)


class BatchPlan:
    """Which rows each step trains on: a pure function of (seed, step)."""

    def __init__(self, rows: int, batch: int, seed: int) -> None:
        if batch > rows:
            raise DatasetError(f"the batch of {batch} is larger than the {rows} rows of data")
        self.rows, self.batch, self.seed = rows, batch, seed
        self.steps_per_epoch = rows // batch
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def global_rows(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        return self._perm[i * self.batch : (i + 1) * self.batch]

    def local_rows(self, step: int, rank: int, world: int) -> np.ndarray:
        per = self.batch // world
        return self.global_rows(step)[rank * per : (rank + 1) * per]


class _StepBatches(Dataset):
    """Item k is the whole local batch of step ``start + k``: lets a DataLoader
    prefetch deterministic batches in worker processes."""

    def __init__(self, dataset, plan, start, stop, rank, world):
        self.dataset, self.plan = dataset, plan
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int):
        step = self.start + k
        rows = self.plan.local_rows(step, self.rank, self.world)
        return step, torch.from_numpy(rows.copy()), self.dataset.batch_at(rows, step)


def iterate_batches(
    dataset: RowDataset,
    plan: BatchPlan,
    start: int,
    stop: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin: bool = False,
) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """(step, rows, x) for steps start..stop-1 of this rank; ``pin``: x in pinned
    memory, so that its copy to a GPU does not block."""
    if isinstance(dataset, ArrayDataset) or workers == 0:
        for step in range(start, stop):
            rows = plan.local_rows(step, rank, world)
            x = dataset.batch_at(rows, step)
            yield step, rows, x.pin_memory() if pin else x
        return
    loader = DataLoader(
        _StepBatches(dataset, plan, start, stop, rank, world),
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=pin,
    )
    for step, rows, x in loader:
        yield int(step), rows.numpy(), x
