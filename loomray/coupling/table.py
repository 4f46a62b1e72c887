"""The global assignment table: K noise seeds for every data row.

``seeds[i, k]`` is the seed of row i's k-th noise cache. A LOOM step only
permutes seeds among the slots it drew, so the multiset of seeds is fixed for
the life of a run; ``fingerprint`` (an order-free hash of that multiset) is set
at creation and lets anyone check the invariant cheaply. Snapshots are Parquet
files, never pickles, with the shape, step, exact checksum and fingerprint in
the schema metadata so that a corrupt or mismatched file is refused on load.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loomray.files.durable import replacing

FORMAT_VERSION = "1"
_META_PREFIX = "loomray."


def _checksum(seeds: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(seeds, dtype="<i8").tobytes()).hexdigest()


def multiset_fingerprint(seeds: np.ndarray) -> str:
    """Order-independent hash of the seeds: equal iff (whp) same multiset."""
    return _checksum(np.sort(np.asarray(seeds, np.int64).reshape(-1)))


@dataclass
class AssignmentTable:
    """Seeds ``[rows, caches]`` (int64) plus the step they belong to."""

    seeds: np.ndarray
    step: int = 0
    fingerprint: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    """Free-form provenance saved with a snapshot (e.g. the run it belongs to)."""

    def __post_init__(self) -> None:
        self.seeds = np.ascontiguousarray(self.seeds, dtype=np.int64)
        if self.seeds.ndim != 2:
            raise ValueError(f"seeds must be [rows, caches], got shape {self.seeds.shape}")
        if not self.fingerprint:
            self.fingerprint = multiset_fingerprint(self.seeds)

    @classmethod
    def create(cls, rows: int, caches: int, seed: int = 0) -> AssignmentTable:
        """A fresh table of ``rows * caches`` distinct seeds in random slots."""
        if rows < 1 or caches < 1:
            raise ValueError(f"a table needs rows >= 1 and caches >= 1, got {rows} and {caches}")
        rng = np.random.default_rng(seed)
        base = int(rng.integers(0, 2**62))
        seeds = base + rng.permutation(rows * caches).astype(np.int64)
        return cls(seeds.reshape(rows, caches))

    @property
    def rows(self) -> int:
        return self.seeds.shape[0]

    @property
    def caches(self) -> int:
        return self.seeds.shape[1]

    @property
    def checksum(self) -> str:
        return _checksum(self.seeds)

    def is_permutation_of_origin(self) -> bool:
        """True while the table holds exactly the seeds it was created with."""
        return multiset_fingerprint(self.seeds) == self.fingerprint

    def copy(self) -> AssignmentTable:
        return AssignmentTable(self.seeds.copy(), self.step, self.fingerprint, dict(self.labels))

    def save(self, path: str | os.PathLike) -> Path:
        """Write a Parquet snapshot atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = {f"cache_{k}": pa.array(self.seeds[:, k]) for k in range(self.caches)}
        meta = {
            "format": FORMAT_VERSION,
            "rows": str(self.rows),
            "caches": str(self.caches),
            "step": str(self.step),
            "checksum": self.checksum,
            "fingerprint": self.fingerprint,
            **{f"label.{k}": str(v) for k, v in self.labels.items()},
        }
        schema = pa.schema(
            [pa.field(name, pa.int64(), nullable=False) for name in columns],
            metadata={f"{_META_PREFIX}{k}".encode(): v.encode() for k, v in meta.items()},
        )
        with replacing(path, mkdir=False) as tmp:  # durable before it replaces the old one
            pq.write_table(pa.table(columns, schema=schema), tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AssignmentTable:
        """Read and validate a snapshot; any mismatch is a ValueError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"assignment table {path} does not exist")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(
                f"assignment table {path} is not a readable Parquet file: {err}"
            ) from err
        raw = table.schema.metadata or {}
        meta = {
            k.decode()[len(_META_PREFIX) :]: v.decode()
            for k, v in raw.items()
            if k.decode().startswith(_META_PREFIX)
        }
        missing = {"format", "rows", "caches", "step", "checksum", "fingerprint"} - meta.keys()
        if missing:
            raise ValueError(
                f"assignment table {path} lacks loomray metadata ({', '.join(sorted(missing))})"
            )
        rows, caches = int(meta["rows"]), int(meta["caches"])
        expected = [f"cache_{k}" for k in range(caches)]
        if table.column_names != expected or table.num_rows != rows:
            raise ValueError(
                f"assignment table {path} has shape [{table.num_rows}, {table.num_columns}] "
                f"but its metadata says [{rows}, {caches}]"
            )
        if any(table.column(c).null_count for c in expected):
            raise ValueError(f"assignment table {path} has missing seeds")
        seeds = np.stack([table.column(c).to_numpy() for c in expected], axis=1).astype(np.int64)
        if _checksum(seeds) != meta["checksum"]:
            raise ValueError(f"assignment table {path} fails its checksum: the seeds were altered")
        if np.unique(seeds).size != seeds.size:
            raise ValueError(f"assignment table {path} has duplicated seeds")
        if multiset_fingerprint(seeds) != meta["fingerprint"]:
            raise ValueError(
                f"assignment table {path} no longer holds the seeds it was created with"
            )
        labels = {k[len("label.") :]: v for k, v in meta.items() if k.startswith("label.")}
        return cls(seeds, int(meta["step"]), meta["fingerprint"], labels)
