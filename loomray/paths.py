"""Checks of the paths a user names: the right kind of thing, or one sentence saying why not.

    folder_to_write(run_dir, "run dir")       # a folder that is there or can be made
    file_to_write(out, "--out")               # a file whose folder is there or can be made
    file_to_read(spec, "sweep spec")          # an existing, readable file

Each raises ``PathError`` (a ValueError) naming the path and the problem, before
anything is written: a file where a folder is expected, a folder where a file
is expected, a path under a file, a folder that cannot be written, a file
that cannot be read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class PathError(ValueError):
    """A path names the wrong kind of thing; the message says which and why."""


def _not_under_a_file(path: Path, what: str, itself: bool = False) -> Path:
    """``path``, unless its first existing ancestor (``itself``: or the path) is not a
    folder this user can write in."""
    for parent in ([path] if itself else []) + list(path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise PathError(
                    f"{what} {path} lies under {parent}, which is a file, not a folder"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                why = "read-only" if _read_only(parent) else "not writable by this user"
                raise PathError(f"{what} {path} cannot be written: {parent} is {why}")
            break
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # s3://b, and s3:/b once Path() had it


def folder_to_write(path: str | os.PathLike, what: str) -> Path:
    if URI.match(str(path)):
        raise PathError(
            f"{what} {path} is a URI, not a folder: runs and sweeps are written to a "
            "filesystem that every node mounts at the same path (NFS, EFS, Filestore, "
            "Lustre); object stores lack the appends, renames and locks they need"
        )
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} is a file, not a folder")
    return _not_under_a_file(path, what, itself=True)


def file_to_write(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder, not a file")
    return _not_under_a_file(path, what)


def file_to_read(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise PathError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise PathError(f"{what} {path} cannot be read (permission denied)")
    return path
