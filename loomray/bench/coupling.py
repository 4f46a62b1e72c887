"""`loomray bench coupling`: how many LOOM solves per second the service serves.

Default shape is CIFAR-10 as the paper trains it: 50k images + their flips
(100k rows), K=4 caches, a global batch of 128, 3x32x32 = 3072 dims, on random
data. ``data="mnist"`` uses image rows instead (MNIST-5k padded to 3x32x32, so
3072 values a row, at most 5000 rows), where untimed warm-up steps let the table
settle as it does in training: a settled table is near-optimal, which changes the
assignment solver's work (Jonker-Volgenant finishes much sooner).
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
    solver: str
    data: str
    warmup: int
    lookahead: bool
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
    solver: str = "lapjv",
    data: str = "random",
    lookahead: bool = True,
) -> CouplingBenchResult:
    """Time ``steps`` LOOM solves after ``warmup`` untimed ones, as the service solves
    them: training's batch plan (an epoch's batches share no row), each step's own
    randomness, ``threads`` for noise and costs (coupling.service_cpus) and, with
    ``lookahead``, the next step's noise and costs prepared during this one's assignment."""
    from loomray.coupling import step_rng
    from loomray.coupling.lookahead import Lookahead
    from loomray.data import BatchPlan

    if batch > rows:
        raise ValueError(f"batch ({batch}) cannot exceed rows ({rows})")
    images = bench_images(rows, dim) if data == "mnist" else None
    # Random data: a pool stands in for the dataset (100k x 3072 floats would not
    # fit small hosts); row r's sample is pool[r % len(pool)].
    rng = np.random.default_rng(seed)
    pool = images if images is not None else rng.uniform(-1, 1, (4 * batch, dim)).astype(np.float32)
    plan = BatchPlan(rows, batch, seed)
    coupling = LoomCoupling(AssignmentTable.create(rows, caches, seed=seed))
    coupling.threads = threads
    ahead = Lookahead(threads)
    totals = dict.fromkeys(PARTS, 0.0)
    elapsed = 0.0

    def batch_of(i: int) -> tuple[np.ndarray, np.ndarray] | None:
        if i >= warmup + steps:
            return None
        batch_rows = plan.global_rows(i)
        return batch_rows, pool[batch_rows % len(pool)]

    with threadpool_limits(limits=1):
        following = batch_of(0)
        for i in range(warmup + steps):
            # each batch is gathered once, untimed (the service receives it from the ranks)
            (batch_rows, x), following = following, batch_of(i + 1)
            # Warm-up solves use lapjv whatever is timed: both are exact, so the table
            # settles alike, and scipy's minutes of warm-up at large batches buy nothing.
            coupling.solver = solver if i >= warmup else "lapjv"
            start = time.perf_counter()

            def assigning(following=following, batch_rows=batch_rows, i=i) -> None:
                if lookahead and following is not None:  # as the service: beside this one
                    rng = step_rng(seed, i + 1)
                    ahead.start(coupling, i + 1, *following, rng, busy_rows=batch_rows)

            stats = coupling.solve(batch_rows, x, step_rng(seed, i), ahead.take(i), assigning)
            ahead.observe(stats)
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
        solver=solver,
        data=data,
        warmup=warmup,
        lookahead=lookahead,
        solves_per_s=steps / elapsed,
        ms_per_part={p: 1e3 * totals[p] / steps for p in PARTS},
        ms_per_solve=1e3 * elapsed / steps,
    )


def bench_images(rows: int, dim: int) -> np.ndarray:
    """MNIST-5k as 3x32x32 image rows (padded, the digit in every channel), float32 in
    [-1, 1]: image-like data of CIFAR-10's size for the solver's real workload."""
    from loomray.coupling.wire import decode
    from loomray.data import mnist_5k

    if dim != 3072:
        raise ValueError(f"--data mnist rows have 3x32x32 = 3072 values, not --dim {dim}")
    images = mnist_5k()[0]
    if rows > len(images):
        raise ValueError(f"--data mnist has {len(images)} rows, fewer than --rows {rows}")
    x = np.full((rows, 3, 32, 32), -1.0, np.float32)
    x[:, :, 2:30, 2:30] = decode(images[:rows])  # the uint8 image convention
    return x.reshape(rows, dim)
