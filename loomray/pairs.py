"""Reflow pairs on disk: (noise seed, generated image) rows in Parquet shards.

A pairs folder holds ``pairs.json`` (the manifest: which model made the pairs,
with which sampler, how many, the image shape) and shards
``shard-00000.parquet``, ... of ``shard_size`` rows each. A row is

* ``seed`` (int64): the pair's noise is ``noise_from_seeds([seed], shape)``, the
  same generator as the coupling table's, so the noise costs 8 bytes;
* ``image`` (fixed-size binary, C*H*W bytes): the sample the model's sampler
  made from that noise, as uint8 (``(x + 1) * 127.5`` rounded).

Each shard is written to a hidden temporary file and renamed into place, and
carries the manifest's digest in its Parquet metadata: a shard under its final
name is complete and belongs to this manifest, so a rerun skips exactly the
finished shards and a half-written one is never taken for finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.data import ArrayDataset, DatasetError

MANIFEST = "pairs.json"
META_KEY = b"loomray.pairs"
FORMAT = 1
PAIR_SEED_OFFSET = 3 * 10**12  # beside training (random), sample grids (1e12), eval (2e12)
SEEDS_PER_STREAM = 10**10


class PairsError(ValueError):
    """A pairs folder cannot be used as asked; the message says why."""


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
class PairsManifest:
    """What a pairs folder holds; two generations agree on every field or are different."""

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
    def shards(self) -> int:
        return -(-self.pairs // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        lo = index * self.shard_size
        return lo, min(self.pairs, lo + self.shard_size)

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=list)

    @classmethod
    def from_json(cls, text: str, where: str) -> PairsManifest:
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise PairsError(f"{where} is not a loomray pairs manifest: {err}") from err

    def differences(self, other: PairsManifest) -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k] and k != "source"]


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.parquet"


def read_manifest(folder: str | os.PathLike) -> PairsManifest:
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        raise PairsError(f"{folder} is not a pairs folder: it has no {MANIFEST}")
    return PairsManifest.from_json(path.read_text(), str(path))


def check_folder(folder: Path, manifest: PairsManifest) -> bool:
    """Can ``folder`` hold ``manifest``'s pairs? True when it holds them already; a
    folder of other pairs, or a non-empty folder of anything else, is refused."""
    from loomray.paths import PathError, folder_to_write

    try:
        folder_to_write(folder, "pairs folder")
    except PathError as err:
        raise PairsError(str(err)) from err
    if (folder / MANIFEST).is_file():
        changes = read_manifest(folder).differences(manifest)
        if changes:
            raise PairsError(
                f"pairs folder {folder} holds other pairs ({changes[0]}"
                f"{f' and {len(changes) - 1} more' if len(changes) > 1 else ''}); "
                "pass another folder"
            )
        return True
    if folder.exists() and any(folder.iterdir()):
        raise PairsError(f"pairs folder {folder} is not empty and holds no pairs; pass another")
    return False


def open_folder(folder: Path, manifest: PairsManifest) -> bool:
    """Make ``folder`` the home of ``manifest``'s pairs (``check_folder`` first); True
    when it already was."""
    if check_folder(folder, manifest):
        return True
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / MANIFEST, manifest.to_json().encode())
    return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_shard(
    folder: Path, manifest: PairsManifest, index: int, seeds: np.ndarray, images: np.ndarray,
    nfe: float,
) -> Path:
    """Shard ``index`` (seeds int64 [n], images uint8 [n, *shape]) under its final name,
    atomically; ``nfe``: the mean evaluations spent per pair."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lo, hi = manifest.shard_range(index)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if len(seeds) != hi - lo or images.shape != (hi - lo, *manifest.shape):
        raise ValueError(f"shard {index} must hold {hi - lo} pairs of shape {manifest.shape}")
    width = int(np.prod(manifest.shape))
    image = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(images), [None, pa.py_buffer(images.reshape(-1))]
    )
    meta = {"manifest": manifest.digest, "shard": index, "lo": lo, "hi": hi, "nfe": nfe}
    table = pa.table({"seed": pa.array(np.asarray(seeds, np.int64)), "image": image})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    path = shard_path(folder, index)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def shard_meta(path: Path) -> dict[str, Any] | None:
    """A shard's metadata, or None when the file is not a readable pairs shard."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except (OSError, KeyError, ValueError):
        return None


def finished_shards(folder: Path, manifest: PairsManifest) -> set[int]:
    """The shards of ``manifest`` that are complete in ``folder``."""
    done = set()
    for index in range(manifest.shards):
        path = shard_path(folder, index)
        meta = shard_meta(path) if path.is_file() else None
        if meta and meta.get("manifest") == manifest.digest and meta.get("shard") == index:
            done.add(index)
    return done


def read_shard(path: Path, manifest: PairsManifest) -> tuple[np.ndarray, np.ndarray]:
    """(seeds int64 [n], images uint8 [n, *shape]) of one shard."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    seeds = table.column("seed").to_numpy()
    image = table.column("image").combine_chunks()
    width = int(np.prod(manifest.shape))
    raw = np.frombuffer(image.buffers()[1], np.uint8)
    raw = raw[image.offset * width : (image.offset + len(image)) * width]
    return seeds, raw.reshape(len(image), *manifest.shape).copy()


def mean_nfe(folder: Path, manifest: PairsManifest) -> float:
    """The mean evaluations spent per pair over the finished shards."""
    total = count = 0.0
    for index in sorted(finished_shards(folder, manifest)):
        meta = shard_meta(shard_path(folder, index)) or {}
        lo, hi = manifest.shard_range(index)
        total += float(meta.get("nfe", 0.0)) * (hi - lo)
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
        parts = [read_shard(shard_path(folder, i), manifest) for i in range(manifest.shards)]
        super().__init__(np.concatenate([p[1] for p in parts]), flip=False)
        self.seeds = np.concatenate([p[0] for p in parts])
        self.manifest = manifest
