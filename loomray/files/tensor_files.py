"""Torch files that a user, a variable or a config names: tensors and plain values only.

    state = read_tensors(path, "Inception weights file")   # TensorFileError: one sentence

Every such file is read with ``torch.load(weights_only=True)``, so a file that
would run code when unpickled (a crafted ``.pth``) is refused before anything in
it runs. Where a library insists on unpickling a path itself (torch-fidelity's
Inception), it gets ``plain_copy``: a private file that loomray wrote from the
tensors it read, never the user's file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class TensorFileError(ValueError):
    """A torch file that cannot be read as tensors and plain values (one sentence)."""


def read_tensors(path: str | os.PathLike, what: str) -> Any:
    """``path`` loaded with ``weights_only=True`` on the CPU."""
    from loomray.paths import PathError, file_to_read

    try:
        path = file_to_read(path, what)
    except PathError as err:
        raise TensorFileError(str(err)) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only refuses (code, or no pickle)
        raise TensorFileError(
            f"{what} {path} cannot be read: it is not a torch file of tensors and plain values, "
            "and loomray never unpickles anything else (that could run code it holds)"
        ) from err
    except Exception as err:  # torch raises many types for a bad file (KeyError(101): text)
        raise TensorFileError(
            f"{what} {path} cannot be read: it is not a file written by torch.save "
            f"(torch.load raised {type(err).__name__})"
        ) from err


@contextlib.contextmanager
def plain_copy(state: Any) -> Iterator[str]:
    """A file of ``state`` (read by ``read_tensors``) in a private folder, for a library
    that loads paths with a full unpickler; removed on exit."""
    folder = tempfile.mkdtemp(prefix="loomray-weights-")  # mode 0700: this user's alone
    try:
        path = Path(folder) / "weights.pth"
        torch.save(state, path)
        yield str(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
