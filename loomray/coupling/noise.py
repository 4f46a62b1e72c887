"""Gaussian noise regenerated from integer seeds, bit-identical everywhere.

LOOM-CFM stores seeds, not noise: a slot of the assignment table holds an int64
seed and the noise it stands for is regenerated whenever the slot is drawn. The
generator therefore has to be

* a pure function of (seed, element index): the same seed gives the same noise
  whatever batch it sits in, on the coupling service and on every worker;
* identical across machines, so a table written on one node means the same
  pairing on another and a resumed run replays exactly;
* fast: the service regenerates a whole global batch (128 x 3072 floats for
  CIFAR-10) on every solve.

Construction: a counter-based stream (the SplitMix64 finaliser applied to
``key + counter * golden_gamma``, ``key`` being the mixed seed) gives 64 random
bits per counter, i.e. two 32-bit draws. Each draw becomes one standard normal
through the Marsaglia-Tsang ziggurat (128 layers). The fast path, taken by ~97%
of draws, uses only integer compares and one float32 multiply, which IEEE 754
rounds identically on every machine. The rare wedge/tail path uses float64
exp/log and its result is rounded to float32; a one-ulp difference between two
libm implementations survives that rounding with probability ~2^-29 per
element. The ziggurat tables are built with the same float64 maths and pinned
by a checksum in the tests.

Usage::

    >>> z = noise_from_seeds(np.array([7, 11]), (3, 32, 32))
    >>> z.shape, z.dtype
    ((2, 3, 32, 32), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

from loomray.coupling.threads import run_blocks

_LAYERS = 128
_R = 3.442619855899  # right edge of the base layer (Marsaglia & Tsang, 2000)
_V = 9.91256303526217e-3  # area of every layer
_SCALE = float(1 << 24)  # magnitudes are 24-bit integers


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Layer thresholds k (uint32), widths w (float32 and float64), densities f."""
    k = np.zeros(_LAYERS, np.uint32)
    w = np.zeros(_LAYERS, np.float64)
    f = np.zeros(_LAYERS, np.float64)
    q = _V / math.exp(-0.5 * _R * _R)
    k[0] = int((_R / q) * _SCALE)
    w[0] = q / _SCALE
    w[-1] = _R / _SCALE
    f[0] = 1.0
    f[-1] = math.exp(-0.5 * _R * _R)
    dn = tn = _R
    for i in range(_LAYERS - 2, 0, -1):
        dn = math.sqrt(-2.0 * math.log(_V / dn + math.exp(-0.5 * dn * dn)))
        k[i + 1] = int((dn / tn) * _SCALE)
        tn = dn
        f[i] = math.exp(-0.5 * dn * dn)
        w[i] = dn / _SCALE
    return k, w.astype(np.float32), w, f


_K, _W32, _W64, _F = _ziggurat_tables()

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
# Counters of the wedge/tail redraws live far above the main stream's counters.
_REDRAW_BASE = np.uint64(1 << 40)


@numba.njit(cache=True, nogil=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _slow_normal(key, element, draw, kt, w32, w64, ft):
    """Wedge and tail cases of the ziggurat for one element, from its own stream."""
    redraw = np.uint64(0)
    while True:
        idx = draw & np.uint32(127)
        neg = (draw >> np.uint32(7)) & np.uint32(1)
        u = draw >> np.uint32(8)
        if u < kt[idx]:
            x = np.float32(u) * w32[idx]
            return -x if neg else x
        redraw += np.uint64(1)
        h = _mix64(key + (_REDRAW_BASE * redraw + np.uint64(element)) * _GAMMA)
        u1 = (np.float64(h & _LOW32) + 0.5) / 4294967296.0
        u2 = (np.float64(h >> np.uint64(32)) + 0.5) / 4294967296.0
        x64 = np.float64(u) * w64[idx]
        if idx == 0:
            # Tail beyond R: Marsaglia's exponential-rejection sampler.
            while True:
                tx = -math.log(u1) / _R
                ty = -math.log(u2)
                if ty + ty >= tx * tx:
                    v = np.float32(_R + tx)
                    return -v if neg else v
                redraw += np.uint64(1)
                h = _mix64(key + (_REDRAW_BASE * redraw + np.uint64(element)) * _GAMMA)
                u1 = (np.float64(h & _LOW32) + 0.5) / 4294967296.0
                u2 = (np.float64(h >> np.uint64(32)) + 0.5) / 4294967296.0
        if ft[idx] + u1 * (ft[idx - 1] - ft[idx]) < math.exp(-0.5 * x64 * x64):
            v = np.float32(x64)
            return -v if neg else v
        # The wedge test used the low half; the next candidate takes the high half.
        draw = np.uint32(h >> np.uint64(32))


@numba.njit(cache=True, nogil=True)
def _fill(seeds, out, kt, w32, w64, ft):
    n = out.shape[1]
    for i in range(seeds.shape[0]):
        key = _mix64(np.uint64(seeds[i]) + _GAMMA)
        for c in range((n + 1) // 2):
            h = _mix64(key + np.uint64(c + 1) * _GAMMA)
            for half in range(2):
                j = 2 * c + half
                if j >= n:
                    break
                draw = np.uint32(h & _LOW32) if half == 0 else np.uint32(h >> np.uint64(32))
                idx = draw & np.uint32(127)
                u = draw >> np.uint32(8)
                if u < kt[idx]:
                    # Sign by arithmetic, not a branch: it is a coin flip the
                    # predictor would miss half the time.
                    sign = np.float32(1.0) - np.float32(2.0) * np.float32(
                        (draw >> np.uint32(7)) & np.uint32(1)
                    )
                    out[i, j] = np.float32(u) * w32[idx] * sign
                else:
                    out[i, j] = _slow_normal(key, j, draw, kt, w32, w64, ft)


def noise_from_seeds(
    seeds: np.ndarray | Sequence[int], shape: Sequence[int], threads: int = 1
) -> np.ndarray:
    """Standard normal noise, one sample of ``shape`` per seed.

    Returns float32 ``[len(seeds), *shape]``; row i depends on ``seeds[i]`` alone, so
    ``threads`` > 1 (row blocks filled in parallel; the kernel releases the GIL)
    gives the same bits.
    """
    seeds = np.ascontiguousarray(seeds, dtype=np.int64).reshape(-1)
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"noise shape must be positive, got {shape}")
    out = np.empty((seeds.shape[0], math.prod(shape)), np.float32)
    keys = seeds.view(np.uint64)

    def fill(lo: int, hi: int) -> None:
        if hi > lo:
            _fill(keys[lo:hi], out[lo:hi], _K, _W32, _W64, _F)

    run_blocks(fill, seeds.shape[0], threads, align=16)
    return out.reshape((seeds.shape[0], *shape))


def ziggurat_checksum() -> str:
    """SHA-256 of the ziggurat tables; pinned in the tests against silent libm drift."""
    import hashlib

    digest = hashlib.sha256()
    for table in (_K, _W32, _W64, _F):
        digest.update(np.ascontiguousarray(table).tobytes())
    return digest.hexdigest()
