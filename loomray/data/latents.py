"""Latent shards on disk, and the dataset that trains on them.

A latents folder (made by `loomray encode`) holds ``latents.json`` (the
manifest: the autoencoder and a hash of its weights, the image data set, the
latent shape) and Parquet shards (``loomray.files.shards``) with two columns per
row: the posterior's mean and standard deviation, float16. Row i < N is image
i; with flips, row N + i is image i mirrored, encoded as such (a mirrored
latent is not the latent of the mirrored image).

Each shard's metadata also holds sums of its values (float64): the latent
scale, 1 / std of posterior samples over the whole data set, is computed from
them exactly, ``var = E[mean^2 + std^2] - E[mean]^2``.

Training draws a posterior sample per row and step,
``scale * (mean + std * eps)``, with eps a function of (train.seed, step, row)
(``posterior_seeds``), so a run resumed at step k draws what it would have
drawn; ``data.posterior=mean`` trains on the means.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.config import Config
from loomray.coupling import noise_from_seeds
from loomray.data.contract import DatasetError, RowDataset, register
from loomray.files.shards import Manifest, ShardFolder, ShardsError

MANIFEST = "latents.json"
FORMAT = 1
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


@dataclass
class LatentsManifest(Manifest):
    IGNORED = ("autoencoder",)  # the same weights elsewhere make the same latents

    autoencoder: str
    """Where the autoencoder was loaded from (a folder, a file or a hub id)."""
    autoencoder_fingerprint: str
    """A hash of its weights: shards of another autoencoder are refused."""
    images: dict[str, Any]
    """The image data set (a ``data`` config section) the latents encode."""
    items: int
    rows: int
    latent_shape: tuple[int, ...]
    shard_size: int
    batch: int
    format: int = FORMAT

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(s) for s in self.latent_shape)

    @property
    def count(self) -> int:
        return self.rows


def latents_folder(folder: str | os.PathLike, manifest: LatentsManifest) -> ShardFolder:
    return ShardFolder(folder, manifest, MANIFEST, "latents")


def read_manifest(folder: str | os.PathLike) -> LatentsManifest:
    return ShardFolder.read_manifest(folder, LatentsManifest, MANIFEST, "latents")


def shard_sums(mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """The sums a shard contributes to the latent scale (of the stored float16 values)."""
    m = mean.astype(np.float64)
    s = std.astype(np.float64)
    return {"n": float(m.size), "sum": float(m.sum()), "sq": float((m * m + s * s).sum())}


def latent_scale(sums: list[dict[str, float]]) -> float:
    """1 / std of posterior samples over the data set, from every shard's sums."""
    n = sum(s["n"] for s in sums)
    mean = sum(s["sum"] for s in sums) / n
    var = sum(s["sq"] for s in sums) / n - mean * mean
    return 1.0 / math.sqrt(max(var, 1e-12))


def posterior_seeds(seed: int, step: int, rows: np.ndarray) -> np.ndarray:
    """Noise seeds of the posterior samples of ``rows`` at ``step``: a 64-bit mix of
    (seed, step, row), so draws never repeat across steps or rows."""
    with np.errstate(over="ignore"):
        z = (
            np.uint64(seed) * np.uint64(_MIX[0])
            + np.uint64(step) * np.uint64(_MIX[1])
            + np.asarray(rows, np.uint64) * np.uint64(_MIX[2])
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def latents_info(folder: str | os.PathLike) -> tuple[LatentsManifest, float]:
    """(manifest, scale) of a complete latents folder, from the manifest and the shards'
    metadata only (no latents are read); DatasetError when it is not complete."""
    folder = Path(folder).expanduser()
    try:
        manifest = read_manifest(folder)
    except ShardsError as err:
        raise DatasetError(str(err)) from err
    shards = latents_folder(folder, manifest)
    done = shards.finished(manifest.shards)
    if len(done) < manifest.shards:
        raise DatasetError(
            f"latents folder {folder} is incomplete ({len(done)} of {manifest.shards} shards); "
            "finish it with loomray encode (it resumes)"
        )
    return manifest, latent_scale([shards.meta(i)["sums"] for i in range(manifest.shards)])


def read_latents(folder: str | os.PathLike) -> tuple[LatentsManifest, Any, Any, float]:
    """(manifest, mean, std, scale) of a complete latents folder, or DatasetError."""
    manifest, scale = latents_info(folder)
    shards = latents_folder(Path(folder).expanduser(), manifest)
    parts = [shards.read(i) for i in range(manifest.shards)]
    mean = np.concatenate([p["mean"] for p in parts])
    std = np.concatenate([p["std"] for p in parts])
    return manifest, mean, std, scale


class LatentDataset(RowDataset):
    """Rows of a latents folder: the scaled posterior mean (``batch``), or a posterior
    sample drawn for the step (``batch_at``, with ``posterior="sample"``); ``scale``:
    the factor (default: the folder's 1 / std)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        posterior: str = "sample",
        seed: int = 0,
        scale: float | None = None,
    ):
        manifest, mean, std, own = read_latents(folder)
        super().__init__(len(mean), manifest.latent_shape, flip=False)
        self.manifest, self.scale = manifest, scale or own  # data.latent_scale, if set
        self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        self.posterior, self.seed = posterior, seed

    def items(self, indices: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(np.asarray(indices, np.int64))
        return self.mean[idx].float() * self.scale

    def item(self, index: int) -> torch.Tensor:
        return self.items(np.array([index]))[0]

    def batch_at(self, rows: np.ndarray, step: int) -> torch.Tensor:
        x = self.batch(rows)
        if self.posterior == "mean":
            return x
        rows = np.asarray(rows, np.int64)
        eps = noise_from_seeds(posterior_seeds(self.seed, step, rows), self.shape)
        std = self.std[torch.from_numpy(rows)].float() * self.scale
        return x + std * torch.from_numpy(eps)


@register("latents")
def _latents(cfg: Config, root: Path) -> RowDataset:
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
