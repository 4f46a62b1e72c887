"""Reflow pairs on disk: (noise seed, generated image) rows in Parquet shards.

A pairs folder holds ``pairs.json`` (the manifest: which model made the pairs,
with which sampler, how many, the image shape) and shards
``shard-00000.parquet``, ... of ``shard_size`` rows each. A row is

* ``seed`` (int64): the pair's noise is ``noise_from_seeds([seed], shape)``, the
  same generator as the coupling table's, so the noise costs 8 bytes;
* ``image`` (fixed-size binary, C*H*W bytes): the sample the model's sampler
  made from that noise, as uint8 (``(x + 1) * 127.5`` rounded).

Shards are written, and found finished, as ``loomray.files.shards`` does it: a rerun
skips exactly the finished shards and a half-written one is never taken for
finished.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.config import Config
from loomray.data.contract import ArrayDataset, DatasetError, RowDataset, register
from loomray.files.shards import Manifest, ShardFolder, ShardsError

MANIFEST = "pairs.json"
FORMAT = 1
PAIR_SEED_OFFSET = 3 * 10**12  # beside training (random), sample grids (1e12), eval (2e12)
SEEDS_PER_STREAM = 10**10


PairsError = ShardsError  # a pairs folder cannot be used as asked; the message says why


def pair_seeds(stream: int, lo: int, hi: int) -> np.ndarray:
    """The noise seeds of pairs ``lo..hi-1`` of a generation with seed ``stream``."""
    return PAIR_SEED_OFFSET + stream * SEEDS_PER_STREAM + np.arange(lo, hi, dtype=np.int64)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class PairsManifest(Manifest):
    """What a pairs folder holds; two generations agree on every field or are different."""

    IGNORED = ("source",)  # the same weights elsewhere make the same pairs

    source: str
    """The checkpoint file whose EMA model made the pairs."""
    source_fingerprint: str
    """``weights_fingerprint`` of that EMA model: another model is refused whatever its path."""
    source_step: int
    sampler: str
    pairs: int
    shard_size: int
    batch: int
    """Pairs sampled together (dopri5's step control looks at the whole batch)."""
    seed: int
    shape: tuple[int, ...]
    rtol: float = 1e-5
    atol: float = 1e-5
    source_config: dict[str, Any] = field(default_factory=dict)
    """The source run's config: a reflow run takes its model and its FID reference from it."""
    format: int = FORMAT

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def count(self) -> int:
        return self.pairs


def pairs_folder(folder: str | os.PathLike, manifest: PairsManifest) -> ShardFolder:
    return ShardFolder(folder, manifest, MANIFEST, "pairs")


def read_manifest(folder: str | os.PathLike) -> PairsManifest:
    return ShardFolder.read_manifest(folder, PairsManifest, MANIFEST, "pairs")


def check_folder(folder: Path, manifest: PairsManifest) -> bool:
    """Can ``folder`` hold ``manifest``'s pairs? True when it holds them already; a
    folder of other pairs, or a non-empty folder of anything else, is refused."""
    return pairs_folder(folder, manifest).check()


def open_folder(folder: Path, manifest: PairsManifest) -> bool:
    """Make ``folder`` the home of ``manifest``'s pairs (``check_folder`` first); True
    when it already was."""
    return pairs_folder(folder, manifest).open()


def write_shard(
    folder: Path,
    manifest: PairsManifest,
    index: int,
    seeds: np.ndarray,
    images: np.ndarray,
    nfe: float,
) -> Path:
    """Shard ``index`` (seeds int64 [n], images uint8 [n, *shape]) under its final name,
    atomically; ``nfe``: the mean evaluations spent per pair."""
    lo, hi = manifest.shard_range(index)
    images = np.asarray(images, dtype=np.uint8)
    if len(seeds) != hi - lo or images.shape != (hi - lo, *manifest.shape):
        raise ValueError(f"shard {index} must hold {hi - lo} pairs of shape {manifest.shape}")
    columns = {"seed": np.asarray(seeds, np.int64), "image": images}
    return pairs_folder(folder, manifest).write(index, columns, lo=lo, hi=hi, nfe=nfe)


def finished_shards(folder: Path, manifest: PairsManifest) -> set[int]:
    """The shards of ``manifest`` that are complete in ``folder``."""
    return pairs_folder(folder, manifest).finished(manifest.shards)


def read_shard(folder: Path, manifest: PairsManifest, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(seeds int64 [n], images uint8 [n, *shape]) of one shard."""
    columns = pairs_folder(folder, manifest).read(index)
    return columns["seed"], columns["image"]


def read_pair_seeds(folder: str | os.PathLike) -> np.ndarray:
    """The noise seeds of every pair of a complete pairs folder (no images read)."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    shards = pairs_folder(folder, manifest)
    if len(shards.finished(manifest.shards)) < manifest.shards:
        raise ShardsError(f"pairs folder {folder} is incomplete")
    return np.concatenate([shards.read(i, ["seed"])["seed"] for i in range(manifest.shards)])


def mean_nfe(folder: Path, manifest: PairsManifest) -> float:
    """The mean evaluations spent per pair over the finished shards."""
    shards = pairs_folder(folder, manifest)
    total = count = 0.0
    for index in sorted(shards.finished(manifest.shards)):
        lo, hi = manifest.shard_range(index)
        total += float((shards.meta(index) or {}).get("nfe", 0.0)) * (hi - lo)
        count += hi - lo
    return total / count if count else float("nan")


class PairsDataset(ArrayDataset):
    """The generated images of a complete pairs folder as training rows, with the
    noise seed of every row (``seeds``); no mirrored rows: a mirrored image would need
    mirrored noise."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder).expanduser()
        try:
            manifest = read_manifest(folder)
        except PairsError as err:
            raise DatasetError(str(err)) from err
        done = finished_shards(folder, manifest)
        if len(done) < manifest.shards:
            raise DatasetError(
                f"pairs folder {folder} is incomplete ({len(done)} of {manifest.shards} "
                "shards); finish it with loomray pairs (it resumes)"
            )
        parts = [read_shard(folder, manifest, i) for i in range(manifest.shards)]
        super().__init__(np.concatenate([p[1] for p in parts]), flip=False)
        self.seeds = np.concatenate([p[0] for p in parts])
        self.manifest = manifest


@register("pairs")
def _pairs_kind(cfg: Config, root: Path) -> RowDataset:
    d = cfg.data
    return _pairs(root, d.channels, d.resolution, d.limit)


def _pairs(root: Path, channels: int, resolution: int, limit: int | None) -> RowDataset:
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
