"""The coupling service's journal: every solved step, on disk before its reply leaves.

A step is replayable from its rows and its re-pairing alone: the caches it
drew (LOOM) or the fresh seeds it drew (baselines) are functions of
``step_rng(seed, step)``, so a record holds just::

    step (int64) | n (uint32) | world (uint32) | counts per rank (uint32 x world)
    | rows (uint32 x n) | perm (uint32 x n) | crc32 of all of it (uint32)

1,052 bytes for a global batch of 128 on 2 ranks. The file starts with a
header naming the run it belongs to (run id, coupling kind, table shape, seed,
cost, the table's fingerprint) and its *lineage*: the service state the
records apply to (a restore starts a new lineage; snapshots keep it and cut
the journal back to a short tail). Appends are one ``write`` plus
``fdatasync``; a torn last record (a crash mid-write, i.e. a step that was never
answered) fails its CRC and is dropped on reading.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loomray.files.durable import write_bytes

MAGIC = b"LOOMJRN1"
_HEAD = struct.Struct("<qII")  # step, n, world
_U32 = struct.Struct("<I")
HEADER_KEYS = ("run", "kind", "rows", "caches", "seed", "cost", "fingerprint", "lineage")


class JournalError(ValueError):
    """A journal that is unreadable or belongs to another run."""


@dataclass(frozen=True)
class Record:
    """One solved step: the global batch's rows (ranks in order), its re-pairing,
    and how many rows each rank sent."""

    step: int
    rows: np.ndarray
    perm: np.ndarray
    counts: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.rows)
        if len(self.perm) != n or sum(self.counts) != n:
            raise ValueError(f"record of step {self.step}: rows, perm and counts disagree")
        if n and int(np.max(self.rows)) >= 2**32:
            raise ValueError("the journal stores rows as uint32: the table is too large")
        body = b"".join(
            (
                _HEAD.pack(self.step, n, len(self.counts)),
                np.asarray(self.counts, "<u4").tobytes(),
                np.asarray(self.rows, "<u4").tobytes(),
                np.asarray(self.perm, "<u4").tobytes(),
            )
        )
        return body + _U32.pack(zlib.crc32(body))

    def span(self, rank: int) -> slice:
        """The slice of the global batch that ``rank`` sent."""
        lo = sum(self.counts[:rank])
        return slice(lo, lo + self.counts[rank])


def _decode(buf: memoryview, at: int) -> tuple[Record, int] | None:
    """The record starting at ``at`` and the offset after it; None if torn."""
    if len(buf) - at < _HEAD.size:
        return None
    step, n, world = _HEAD.unpack_from(buf, at)
    end = at + _HEAD.size + 4 * (world + 2 * n)
    if end + 4 > len(buf) or world > 1 << 16:
        return None
    if zlib.crc32(buf[at:end]) != _U32.unpack_from(buf, end)[0]:
        return None
    arrays = np.frombuffer(buf[at + _HEAD.size : end], "<u4").astype(np.int64)
    counts = tuple(int(c) for c in arrays[:world])
    rows, perm = arrays[world : world + n], arrays[world + n :]
    return Record(step, rows, perm, counts), end + 4


def _encode_header(header: dict[str, Any]) -> bytes:
    body = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _U32.pack(len(body)) + body + _U32.pack(zlib.crc32(body))


def read_journal(path: Path) -> tuple[dict[str, Any], list[Record], int]:
    """Header, records and the byte length of the valid part (a torn tail is dropped)."""
    data = memoryview(path.read_bytes())
    start = len(MAGIC) + 4
    if bytes(data[: len(MAGIC)]) != MAGIC or len(data) < start:
        raise JournalError(f"coupling journal {path} is not a loomray journal")
    (size,) = _U32.unpack_from(data, len(MAGIC))
    body = bytes(data[start : start + size])
    if len(body) != size or len(data) < start + size + 4:
        raise JournalError(f"coupling journal {path} has a truncated header")
    if zlib.crc32(body) != _U32.unpack_from(data, start + size)[0]:
        raise JournalError(f"coupling journal {path} has a corrupt header")
    header = json.loads(body)
    at, records = start + size + 4, []
    while (got := _decode(data, at)) is not None:
        record, at = got
        records.append(record)
    return header, records, at


def check_header(path: Path, header: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a journal written for another run (one sentence naming the difference)."""
    for key in HEADER_KEYS:
        if key != "lineage" and header.get(key) != expected.get(key):
            raise JournalError(
                f"coupling journal {path} belongs to another run ({key} {header.get(key)!r}, "
                f"this run has {expected.get(key)!r}); refusing to replay it"
            )


class Journal:
    """An open journal, appended to by the service's solver thread only."""

    def __init__(self, path: Path, header: dict[str, Any], records: list[Record] = ()) -> None:
        """Start ``path`` afresh (atomically) with ``header`` and ``records``."""
        self.path = Path(path)
        self.header = dict(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path, _encode_header(self.header) + b"".join(r.encode() for r in records))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.bytes_written = 0

    @classmethod
    def reopen(cls, path: Path, valid_bytes: int) -> Journal:
        """Continue an existing journal after ``read_journal``, cutting a torn tail."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.header, _, _ = read_journal(self.path)
        with open(self.path, "r+b") as f:
            f.truncate(valid_bytes)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.bytes_written = 0
        return self

    def append(self, record: Record) -> int:
        """Write one record durably; returns its size in bytes."""
        data = record.encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fdatasync(self._fd)
        self.bytes_written += len(data)
        return len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
