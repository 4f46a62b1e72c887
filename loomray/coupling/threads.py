"""The coupling's threads: row blocks of one step's work, run side by side.

The service's solve thread splits a step's noise and cost matrix into row blocks
on ``coupling.service_cpus`` threads. Every row is computed by the same code
whatever the split (noise row i depends on seed i alone; a cost row is one
single-threaded GEMM row block and a fused combination), so the bits do not
depend on the number of threads (tested). The kernels release the GIL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

ALIGN = 64  # block starts stay multiples of this: the GEMM tiles rows alike in every split


@functools.cache
def pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool per width, kept for the process (the service asks every step)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loom-coupling")


def row_blocks(rows: int, threads: int, align: int = 1) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans covering ``rows`` in at most ``threads`` blocks whose starts
    are multiples of ``align``; one block when there is too little to share."""
    threads = max(1, int(threads))
    per = -(-rows // threads)  # ceil
    per = -(-per // align) * align
    if threads == 1 or rows < 2 * align:
        return [(0, rows)]
    return [(lo, min(lo + per, rows)) for lo in range(0, rows, per)]


def run_blocks(work: Callable[[int, int], None], rows: int, threads: int, align: int = 1) -> None:
    """``work(lo, hi)`` for every row block, on the pool when there are several."""
    blocks = row_blocks(rows, threads, align)
    if len(blocks) == 1:
        work(*blocks[0])
        return
    for future in [pool(len(blocks)).submit(work, lo, hi) for lo, hi in blocks]:
        future.result()
