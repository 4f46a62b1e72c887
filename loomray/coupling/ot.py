"""Exact linear assignment between a data batch and a noise batch.

``solve_assignment(x, z)`` returns ``perm`` such that pairing ``x[i]`` with
``z[perm[i]]`` minimises ``sum_i c(x_i, z_perm(i))`` over all permutations, where
``c`` is the Euclidean distance (``"l2"``, the LOOM-CFM authors' cost) or its
square (``"sql2"``, the usual OT-CFM cost). The permutation acts on the noise
side: ``z[perm]`` is the re-paired noise batch, aligned with ``x``.

The solver is Jonker-Volgenant (``lapjv``): loomray's numba copy of ``lap``'s
algorithm (``loomray.coupling.jv``), which returns ``lap.lapjv``'s very permutation
(tested, ties included) and releases the GIL, so the service prepares the next
step meanwhile. It is exact like scipy's ``linear_sum_assignment`` (the same
optimal cost, tested, ties included) and far faster on LOOM's matrices once the
table is near-optimal (docs/results.md). Where several permutations are optimal
scipy may pick another; a run's journal keeps the one it used.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
from scipy.optimize import linear_sum_assignment

from loomray.coupling.jv import lapjv
from loomray.coupling.threads import ALIGN, run_blocks

Cost = Literal["l2", "sql2"]
COSTS: tuple[str, ...] = ("l2", "sql2")
SOLVERS: tuple[str, ...] = ("lapjv", "lap", "scipy")
"""lapjv: loomray's GIL-free Jonker-Volgenant; lap: the same algorithm from the ``lap``
package (holds the GIL); scipy: ``linear_sum_assignment``."""


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1)


def check_cost(cost: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; expected one of {', '.join(COSTS)}")


def cost_matrix(x: np.ndarray, z: np.ndarray, cost: Cost = "l2", threads: int = 1) -> np.ndarray:
    """``C[i, j] = c(x_i, z_j)`` as float64 [B, B'].

    Uses ``|x|^2 + |z|^2 - 2 x.z`` with a matrix product in the inputs' dtype
    (the dominant work: a GEMM per row block, ``threads`` blocks side by side)
    and float64 for the combination, fused into one pass per block.
    """
    check_cost(cost)
    xf, zf = _flat(x), _flat(z)
    if xf.shape[1] != zf.shape[1]:
        raise ValueError(f"x and z differ in size per sample: {xf.shape[1]} vs {zf.shape[1]}")
    # Norms in the inputs' precision: upcasting the [B, D] inputs costs more
    # than the GEMM itself saves; the [B, B] combination is done in float64.
    xx = np.einsum("ij,ij->i", xf, xf).astype(np.float64)
    zz = np.einsum("ij,ij->i", zf, zf).astype(np.float64)
    out = np.empty((len(xf), len(zf)), np.float64)
    zt = zf.T

    def block(lo: int, hi: int) -> None:
        if hi > lo:
            _combine(xf[lo:hi] @ zt, xx[lo:hi], zz, out[lo:hi], cost == "l2")

    # The coupling service runs BLAS on one thread (its blocks are the threads):
    # OpenBLAS's own threads would spin on the cores the next step's noise needs.
    # (Not set here: threadpoolctl's limit costs ~1.5 ms a call.)
    run_blocks(block, len(xf), threads, align=ALIGN)
    return out


@numba.njit(cache=True, nogil=True)
def _combine(dot, xx, zz, out, root):
    """out = sqrt(max(xx_i + zz_j - 2 dot_ij, 0)) (or without the root), in float64,
    with numpy's order of operations (the same bits as the unfused expression)."""
    for i in range(dot.shape[0]):
        for j in range(dot.shape[1]):
            sq = max(xx[i] + zz[j] - 2.0 * np.float64(dot[i, j]), 0.0)
            out[i, j] = np.sqrt(sq) if root else sq


def assignment_from_cost(c: np.ndarray, solver: str = "lapjv") -> np.ndarray:
    """Optimal permutation for a square cost matrix: row i takes column perm[i]."""
    if solver == "lapjv":
        return lapjv(c)
    if solver == "lap":
        import lap

        if c.shape[0] == 0:
            return np.zeros(0, np.int64)
        cols = lap.lapjv(np.ascontiguousarray(c, np.float64), return_cost=False)[0]
        return np.asarray(cols, np.int64)
    if solver != "scipy":
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    rows, cols = linear_sum_assignment(c)
    perm = np.empty(c.shape[0], np.int64)
    perm[rows] = cols
    return perm


def solve_assignment(x: np.ndarray, z: np.ndarray, cost: Cost = "l2") -> np.ndarray:
    """Permutation ``perm`` with ``z[perm]`` the optimal re-pairing of ``z`` to ``x``."""
    if len(x) != len(z):
        raise ValueError(f"x and z must have the same batch size, got {len(x)} and {len(z)}")
    return assignment_from_cost(cost_matrix(x, z, cost))


def pair_costs(x: np.ndarray, z: np.ndarray, cost: Cost = "l2") -> np.ndarray:
    """``c(x_i, z_i)`` for aligned batches, float64 [B]."""
    check_cost(cost)
    d = _flat(x).astype(np.float64) - _flat(z).astype(np.float64)
    sq = np.einsum("ij,ij->i", d, d)
    return np.sqrt(sq) if cost == "l2" else sq
