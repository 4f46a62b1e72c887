"""Folders of Parquet shards made by long, resumable jobs (reflow pairs, latents).

A folder holds a manifest (a JSON file: what the shards hold and how they were
made) and shards ``shard-00000.parquet``, ... Each shard is written to a hidden
temporary file and renamed into place, and carries the manifest's digest and
its index in its Parquet metadata: a shard under its final name is complete
and belongs to this manifest, so a rerun makes exactly the missing shards and a
half-written one is never taken for finished. A folder that holds another
manifest, or other files, is refused before anything is written.

Columns are arrays with one row per item: 1-D numeric arrays are stored as
Arrow columns, others as fixed-size binary rows (their dtype and row shape in
the shard's metadata), read back as the same arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loomray.files.durable import replacing, write_bytes

META_KEY = b"loomray.shard"


class ShardsError(ValueError):
    """A shard folder cannot be used as asked; the message says why."""


@dataclass
class Manifest:
    """Base of a folder's manifest: a dataclass of plain values with a ``shard_size``
    and a ``count`` of rows. Fields named in
    ``IGNORED`` (e.g. where a source file lies) may differ between two runs that
    make the same shards."""

    IGNORED = ()

    @property
    def count(self) -> int:
        """How many rows the shards hold in all."""
        raise NotImplementedError

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        """Rows ``lo..hi-1`` of shard ``index``."""
        lo = index * self.shard_size
        return lo, min(self.count, lo + self.shard_size)

    @property
    def digest(self) -> str:
        """A hash of what the shards depend on (not of the ``IGNORED`` fields)."""
        fields = {k: v for k, v in asdict(self).items() if k not in self.IGNORED}
        text = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=list)

    @classmethod
    def from_json(cls, text: str, where: str):
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as err:
            raise ShardsError(f"{where} is not a loomray {cls.__name__}: {err}") from err

    def differences(self, other: Manifest) -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k] and k not in self.IGNORED]


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.parquet"


class ShardFolder:
    """The shards of one manifest in one folder (``what`` names them in messages)."""

    def __init__(self, folder: str | os.PathLike, manifest: Manifest, name: str, what: str):
        self.folder = Path(folder).expanduser()
        self.manifest, self.name, self.what = manifest, name, what

    @classmethod
    def read_manifest(cls, folder: str | os.PathLike, kind: type, name: str, what: str):
        folder = Path(folder).expanduser()
        path = folder / name
        if not path.is_file():
            raise ShardsError(f"{folder} is not a {what} folder: it has no {name}")
        return kind.from_json(path.read_text(), str(path))

    def check(self) -> bool:
        """Can the folder hold these shards? True when it holds them already."""
        from loomray.files.locks import holds_anything
        from loomray.paths import PathError, folder_to_write

        try:
            folder_to_write(self.folder, f"{self.what} folder")
        except PathError as err:
            raise ShardsError(str(err)) from err
        if (self.folder / self.name).is_file():
            old = self.read_manifest(self.folder, type(self.manifest), self.name, self.what)
            changes = old.differences(self.manifest)
            if changes:
                more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
                raise ShardsError(
                    f"{self.what} folder {self.folder} holds other {self.what} "
                    f"({changes[0]}{more}); pass another folder"
                )
            return True
        if holds_anything(self.folder):
            raise ShardsError(
                f"{self.what} folder {self.folder} is not empty and holds no {self.what}; "
                "pass another"
            )
        return False

    def open(self) -> bool:
        """``check``, then make the folder the home of these shards."""
        if self.check():
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes(self.folder / self.name, self.manifest.to_json().encode())
        return False

    def write(self, index: int, columns: dict[str, np.ndarray], **meta: Any) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays, layout = {}, {}
        for name, values in columns.items():
            values = np.ascontiguousarray(values)
            if values.ndim == 1:
                arrays[name] = pa.array(values)
                continue
            width = values[0].nbytes if len(values) else 0
            layout[name] = {"dtype": values.dtype.str, "shape": list(values.shape[1:])}
            flat = pa.py_buffer(values.reshape(-1).view(np.uint8))
            arrays[name] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(values), [None, flat]
            )
        info = {"manifest": self.manifest.digest, "shard": index, "layout": layout, **meta}
        table = pa.table(arrays).replace_schema_metadata({META_KEY: json.dumps(info).encode()})
        path = shard_path(self.folder, index)
        with replacing(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def meta(self, index: int) -> dict[str, Any] | None:
        """A shard's metadata, or None when it is missing or not a readable shard."""
        import pyarrow.parquet as pq

        path = shard_path(self.folder, index)
        try:
            return json.loads((pq.read_schema(path).metadata or {})[META_KEY])
        except (OSError, KeyError, ValueError):
            return None

    def finished(self, count: int) -> set[int]:
        """The shards among ``0..count-1`` that are complete and of this manifest."""
        done = set()
        for index in range(count):
            meta = self.meta(index)
            if meta and meta.get("manifest") == self.manifest.digest and meta.get("shard") == index:
                done.add(index)
        return done

    def read(self, index: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """A shard's columns (all, or those named) as arrays."""
        import pyarrow.parquet as pq

        path = shard_path(self.folder, index)
        table = pq.read_table(path, columns=columns)
        layout = json.loads(table.schema.metadata[META_KEY])["layout"]
        out = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if name not in layout:
                out[name] = column.to_numpy()
                continue
            dtype, shape = np.dtype(layout[name]["dtype"]), layout[name]["shape"]
            width = column.type.byte_width
            raw = np.frombuffer(column.buffers()[1], np.uint8)
            raw = raw[column.offset * width : (column.offset + len(column)) * width]
            out[name] = raw.view(dtype).reshape(len(column), *shape).copy()
        return out


@dataclass
class Filled:
    """What ``fill`` did."""

    made: int
    """Shards made by this call (the others were there already)."""
    rows_made: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_made / self.seconds if self.rows_made and self.seconds > 0 else 0.0


def fill(
    shards: ShardFolder,
    write: Callable[..., Any],
    make_here: Callable[[int], tuple],
    make_on_ray: Callable[[list[int], Callable[..., None]], None],
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Filled:
    """Open the folder and make every missing shard: ``make_here(index)`` in this process
    (``workers=0``), or ``make_on_ray(missing, done)``, whose tasks call ``done(index,
    *made)`` on the driver. Each shard is written (``write(index, *made)``) as soon as it
    is made; ``progress(rows done, rows)`` follows."""
    manifest = shards.manifest
    shards.open()
    missing = [i for i in range(manifest.shards) if i not in shards.finished(manifest.shards)]
    left, start = list(missing), time.perf_counter()

    def rows(indices: list[int]) -> int:
        return sum(hi - lo for lo, hi in map(manifest.shard_range, indices))

    def done(index: int, *made: Any) -> None:
        write(index, *made)
        left.remove(index)
        if progress is not None:
            progress(manifest.count - rows(left), manifest.count)

    if workers == 0:
        for index in missing:
            done(index, *make_here(index))
    elif missing:
        make_on_ray(missing, done)
    return Filled(len(missing), rows(missing), time.perf_counter() - start)


def run_tasks(task, indices: list[int], workers: int, args, done) -> None:
    """``task.remote(*args(i))`` for every shard index, ``workers`` at a time (Ray must
    be connected), and ``done(*result)`` on the driver as each result arrives."""
    import ray

    queue, running = list(indices), []
    while queue or running:
        while queue and len(running) < workers:
            running.append(task.remote(*args(queue.pop(0))))
        ready, running = ray.wait(running, num_returns=1)
        done(*ray.get(ready[0]))
