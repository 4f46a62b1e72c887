"""`loomray bench coupling`: how many LOOM solves per second one core serves.

Default shape is CIFAR-10 as the paper trains it: 50k images + their flips
(100k rows), K=4 caches, a global batch of 128, 3x32x32 = 3072 dims.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from loomray.coupling import AssignmentTable, LoomCoupling

PARTS = ("noise", "cost", "assign", "update")


@dataclass
class CouplingBenchResult:
    rows: int
    caches: int
    batch: int
    dim: int
    steps: int
    threads: int
    solves_per_s: float
    ms_per_part: dict[str, float]
    ms_per_solve: float


def bench_coupling(
    rows: int = 100_000,
    caches: int = 4,
    batch: int = 128,
    dim: int = 3072,
    steps: int = 300,
    warmup: int = 10,
    threads: int = 1,
    seed: int = 0,
) -> CouplingBenchResult:
    """Time ``steps`` LOOM steps (the full ``step`` call) on random data of the given shape."""
    if batch > rows:
        raise ValueError(f"batch ({batch}) cannot exceed rows ({rows})")
    rng = np.random.default_rng(seed)
    # A pool of data stands in for the dataset: solve time does not depend on
    # which images they are, and 100k x 3072 floats would not fit small hosts.
    pool = rng.uniform(-1.0, 1.0, size=(4 * batch, dim)).astype(np.float32)
    coupling = LoomCoupling(AssignmentTable.create(rows, caches, seed=seed))
    totals = dict.fromkeys(PARTS, 0.0)
    elapsed = 0.0
    with threadpool_limits(limits=threads):
        for i in range(warmup + steps):
            batch_rows = rng.choice(rows, size=batch, replace=False)
            x = pool[rng.integers(0, len(pool), size=batch)]
            start = time.perf_counter()
            _, stats = coupling.step(batch_rows, x, rng)
            if i >= warmup:
                elapsed += time.perf_counter() - start
                for part in PARTS:
                    totals[part] += stats.seconds[part]
    return CouplingBenchResult(
        rows=rows,
        caches=caches,
        batch=batch,
        dim=dim,
        steps=steps,
        threads=threads,
        solves_per_s=steps / elapsed,
        ms_per_part={p: 1e3 * totals[p] / steps for p in PARTS},
        ms_per_solve=1e3 * elapsed / steps,
    )
