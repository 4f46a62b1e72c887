"""CIFAR-10 (its python batches, read as arrays only), downsampled-ImageNet .npz
batches and folders of image files."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from loomray.config import Config
from loomray.data.contract import ArrayDataset, DatasetError, RowDataset, limited, register

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


@register("cifar10")
def _cifar10(cfg: Config, root: Path) -> RowDataset:
    d = cfg.data
    if (d.resolution, d.channels) != (32, 3):
        raise DatasetError("CIFAR-10 is 3x32x32: set data.resolution=32 data.channels=3")
    return ArrayDataset(limited(load_cifar10(root, True, d.download), d.limit), d.flip)


@register("imagenet32", "imagenet64", "folder")
def _folder(cfg: Config, root: Path) -> RowDataset:
    d = cfg.data
    if not root.is_dir():
        raise DatasetError(f"{d.name} data not found: {root} is not a folder")
    if d.name in ("imagenet32", "imagenet64"):
        npz = sorted(root.glob("*.npz"))
        if npz:
            return ArrayDataset(limited(load_npz_batches(npz, d.resolution), d.limit), d.flip)
    files = _image_files(root)
    if not files:
        hint = " or downsampled-ImageNet .npz batches" if d.name.startswith("imagenet") else ""
        raise DatasetError(
            f"{d.name} data not found: no image files ({', '.join(IMAGE_SUFFIXES)}){hint} "
            f"under {root}"
        )
    return FolderDataset(limited(files, d.limit), d.resolution, d.channels, d.flip)
