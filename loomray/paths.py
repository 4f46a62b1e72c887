"""Checks of the paths a user names: the right kind of thing, or one sentence saying why not.

    folder_to_write(run_dir, "run dir")       # a folder that is there or can be made
    file_to_write(out, "--out")               # a file whose folder is there or can be made
    file_to_read(spec, "sweep spec")          # an existing, readable file

Each raises ``PathError`` (a ValueError) naming the path and the problem, before
anything is written: a file where a folder is expected, a folder where a file
is expected, a path under a file, a file that cannot be read.
"""

from __future__ import annotations

import os
from pathlib import Path


class PathError(ValueError):
    """A path names the wrong kind of thing; the message says which and why."""


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def folder_to_write(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} is a file, not a folder")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise PathError(f"{what} {path} lies under {blocker}, which is a file, not a folder")
    return path


def file_to_write(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder, not a file")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise PathError(f"{what} {path} lies under {blocker}, which is a file, not a folder")
    return path


def file_to_read(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise PathError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise PathError(f"{what} {path} cannot be read (permission denied)")
    return path
