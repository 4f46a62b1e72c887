"""Jonker-Volgenant linear assignment, compiled with numba, free of the GIL.

The same algorithm, order of operations and tie-breaking as ``lap.lapjv`` (lap
0.5, Tomas Kazmar, BSD-2-Clause): column reduction with reduction transfer, two
rounds of augmenting row reduction, then a shortest augmenting path (Dijkstra
over a column list) for every row left free. On every matrix tested, ties
included, it returns the very permutation ``lap.lapjv`` returns (test), so a run
does not depend on which of the two solved it.

Why a second copy of the algorithm: ``lap`` holds the GIL while it solves, so
nothing else in the coupling service can run meanwhile. This one releases it,
so the service computes the next step's noise and cost matrix on its other
cores while the current step is assigned (``loomray.coupling.pipeline``).

Costs are float64; every entry must be below ``LARGE`` (1e6), as in ``lap``
(LOOM's costs are distances of [-1, 1] data: tens to thousands).
"""

from __future__ import annotations

import numba
import numpy as np

LARGE = 1_000_000.0


def lapjv(cost: np.ndarray) -> np.ndarray:
    """Optimal permutation of a square cost matrix: row i takes column ``perm[i]``."""
    c = np.ascontiguousarray(cost, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a square cost matrix is needed, got shape {c.shape}")
    n = c.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if not np.isfinite(c).all() or np.abs(c).max() >= LARGE:
        raise ValueError(f"costs must be finite and below {LARGE:g} in magnitude")
    return _solve(c)


@numba.njit(cache=True, nogil=True)
def _solve(c):
    n = c.shape[0]
    x = np.full(n, -1, np.int64)  # row -> column
    y = np.zeros(n, np.int64)  # column -> row
    v = np.full(n, LARGE)  # column prices
    free = np.empty(n, np.int64)
    n_free = _reduce_columns(c, free, x, y, v)
    rounds = 0
    while n_free > 0 and rounds < 2:
        n_free = _augmenting_row_reduction(c, n_free, free, x, y, v)
        rounds += 1
    if n_free > 0:
        _augment(c, n_free, free, x, y, v)
    return x


@numba.njit(cache=True, nogil=True)
def _reduce_columns(c, free, x, y, v):
    """Column reduction (each column's minimum row, the last column first for ties)
    and reduction transfer; returns the count of free rows, listed in ``free``."""
    n = c.shape[0]
    for i in range(n):
        for j in range(n):
            if c[i, j] < v[j]:
                v[j] = c[i, j]
                y[j] = i
    unique = np.ones(n, np.bool_)
    for j in range(n - 1, -1, -1):
        i = y[j]
        if x[i] < 0:
            x[i] = j
        else:
            unique[i] = False
            y[j] = -1
    n_free = 0
    for i in range(n):
        if x[i] < 0:
            free[n_free] = i
            n_free += 1
        elif unique[i]:
            j = x[i]
            low = LARGE
            for j2 in range(n):
                if j2 != j:
                    h = c[i, j2] - v[j2]
                    if h < low:
                        low = h
            v[j] -= low
    return n_free


@numba.njit(cache=True, nogil=True)
def _augmenting_row_reduction(c, n_free, free, x, y, v):
    """One round over the free rows: each takes its cheapest column, lowering that
    column's price to the second cheapest, and frees the row it displaces. Returns
    the count of rows still free (at the start of ``free``)."""
    n = c.shape[0]
    current = 0
    new_free = 0
    count = 0
    while current < n_free:
        count += 1
        i = free[current]
        current += 1
        j1 = 0
        v1 = c[i, 0] - v[0]
        j2 = -1
        v2 = LARGE
        for j in range(1, n):
            h = c[i, j] - v[j]
            if h < v2:
                if h >= v1:
                    v2 = h
                    j2 = j
                else:
                    v2 = v1
                    v1 = h
                    j2 = j1
                    j1 = j
        i0 = y[j1]
        v1_new = v[j1] - (v2 - v1)
        lowers = v1_new < v[j1]
        if count < current * n:  # a bound on the rounds, against cycling
            if lowers:
                v[j1] = v1_new
            elif i0 >= 0 and j2 >= 0:
                j1 = j2
                i0 = y[j2]
            if i0 >= 0:
                if lowers:
                    current -= 1
                    free[current] = i0
                else:
                    free[new_free] = i0
                    new_free += 1
        elif i0 >= 0:
            free[new_free] = i0
            new_free += 1
        x[i] = j1
        y[j1] = i
    return new_free


@numba.njit(cache=True, nogil=True)
def _augment(c, n_free, free, x, y, v):
    """A shortest augmenting path from every free row, in order."""
    n = c.shape[0]
    pred = np.empty(n, np.int64)
    cols = np.empty(n, np.int64)
    d = np.empty(n)
    for f in range(n_free):
        start = free[f]
        j = _find_path(c, start, y, v, pred, cols, d)
        i = -1
        while i != start:
            i = pred[j]
            y[j] = i
            j, x[i] = x[i], j


@numba.njit(cache=True, nogil=True)
def _find_path(c, start, y, v, pred, cols, d):
    """Dijkstra from row ``start`` over reduced costs; returns the free column
    reached, with ``pred`` the path and the ready columns' prices updated."""
    n = c.shape[0]
    for j in range(n):
        cols[j] = j
        pred[j] = start
        d[j] = c[start, j] - v[j]
    lo = 0
    hi = 0
    ready = 0
    final = -1
    while final == -1:
        if lo == hi:  # the columns at the next smallest distance become the scan list
            ready = lo
            hi = lo + 1
            low = d[cols[lo]]
            for k in range(hi, n):
                j = cols[k]
                if d[j] <= low:
                    if d[j] < low:
                        hi = lo
                        low = d[j]
                    cols[k] = cols[hi]
                    cols[hi] = j
                    hi += 1
            for k in range(lo, hi):
                if y[cols[k]] < 0:
                    final = cols[k]
        if final == -1:
            final, lo, hi = _scan(c, lo, hi, d, cols, pred, y, v)
    low = d[cols[lo]]
    for k in range(ready):
        j = cols[k]
        v[j] += d[j] - low
    return final


@numba.njit(cache=True, nogil=True)
def _scan(c, lo, hi, d, cols, pred, y, v):
    """Relax the unscanned columns through each column of the scan list; stops at a
    free column reached at the current distance. Returns (column or -1, lo, hi); on
    reaching a column, lo and hi as they came (the caller prices from ``cols[lo]``)."""
    n = c.shape[0]
    lo0, hi0 = lo, hi
    while lo != hi:
        j = cols[lo]
        lo += 1
        i = y[j]
        low = d[j]
        h = c[i, j] - v[j] - low
        for k in range(hi, n):
            j = cols[k]
            reduced = c[i, j] - v[j] - h
            if reduced < d[j]:
                d[j] = reduced
                pred[j] = i
                if reduced == low:
                    if y[j] < 0:
                        return j, lo0, hi0
                    cols[k] = cols[hi]
                    cols[hi] = j
                    hi += 1
    return -1, lo, hi
