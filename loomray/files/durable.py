"""Writes a crash cannot tear: a file is whole and on disk, or the old one is there.

    with replacing(path) as tmp:       # write tmp however you like
        torch.save(payload, tmp)
    write_text(path, text)             # the same for text

A private temporary file beside ``path`` is written, flushed to disk (fsync),
renamed over ``path`` and the rename made durable (fsync of the folder); on an
error the temporary file is removed and ``path`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to disk: a node
    crash must not undo it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """``.<name>.tmp-<pid>-<random>`` beside ``path`` (hidden; unique per writer)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mkdir: bool = True) -> Iterator[Path]:
    """A temporary path to write; on a clean exit it durably replaces ``path``."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())
