"""The Inception weights files FID reads, as tensors only (``loomray.files.tensor_files``),
and the one-sentence error of the evaluation."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


class EvaluationError(ValueError):
    """An evaluation cannot run as asked; the message says how to fix it."""


def weights_state(weights: str, protocol: str = "standard") -> dict:
    """The Inception weights file's tensors, read without running any code it holds
    (loomray.files.tensor_files); EvaluationError in one sentence when it is refused. Read
    once per file version: the command checks it, then the evaluator builds from it."""
    from loomray.files.tensor_files import TensorFileError

    try:
        stat = Path(weights).expanduser().stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (0, 0)  # read_tensors says what is wrong with the path
    try:
        state = _read_weights(str(weights), *version)
    except TensorFileError as err:
        raise EvaluationError(str(err)) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvaluationError(
            f"Inception weights file {weights} is not a state dict of tensors "
            f"({'torchvision' if protocol == 'paper' else 'torch-fidelity'}'s Inception-v3)"
        )
    return state


@functools.lru_cache(maxsize=1)
def _read_weights(weights: str, mtime_ns: int, size: int):
    """``read_tensors`` of one version of a weights file (the version is the cache key)."""
    from loomray.files.tensor_files import read_tensors

    return read_tensors(weights, "Inception weights file")
