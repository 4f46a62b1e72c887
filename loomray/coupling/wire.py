"""What travels between a training rank and the coupling service each step.

A rank sends its batch as the data set stores it where that loses nothing: image
rows are ``u / 127.5 - 1`` for uint8 ``u``, so they travel as uint8 (a quarter of
the bytes) and the service decodes the very same float32 values. Anything else
(latents, 2-D points) travels as float32. The service answers with the int64 seeds
of the noise paired with each row, and the rank regenerates the noise itself
(``noise_from_seeds`` is bit-identical everywhere): 8 bytes a row instead of 4 per
value, e.g. 16 KB instead of 25 MB for a global batch of 2048 CIFAR-10 images.
"""

from __future__ import annotations

import numpy as np


def decode(x: np.ndarray) -> np.ndarray:
    """The float32 batch a packed batch stands for."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.asarray(x, np.float32)


def pack(x: np.ndarray) -> np.ndarray:
    """``x`` as uint8 when ``decode`` gives back exactly its float32 values, else float32."""
    x = np.asarray(x, np.float32)
    if x.size and np.abs(x).max() <= 1.0:
        u = np.rint((x + np.float32(1.0)) * np.float32(127.5)).astype(np.uint8)
        if np.array_equal(decode(u), x):
            return u
    return x


def wire_bytes(batch: int, values: int, packed_item: int) -> tuple[int, int]:
    """Bytes a step moves (sent, received) for ``batch`` rows of ``values`` values:
    the float32 batch out and float32 noise back, against the packed batch out
    (``packed_item`` bytes a value) and int64 seeds back."""
    return batch * values * 4 * 2, batch * (values * packed_item + 8)
