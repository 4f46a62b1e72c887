"""The next step prepared while this one is assigned.

A step's noise and cost matrix (most of its work) depend on the table only at
the step's own rows, and a step changes the table only at its rows. Within an
epoch consecutive global batches hold different rows, so step s+1's noise and
cost can be computed while step s is assigned, on a thread of their own (the
assignment, ``loomray.coupling.jv``, releases the GIL). The coupling uses what was
prepared only if its slots still hold the seeds it was made from (else it
computes them again), so results are those of the sequential algorithm whatever
the timing (tested).

With ``coupling.service_cpus`` >= 2 there are cores beside the assignment's. Where
the assignment is a large part of a step (at least ``RATIO`` of the time of its noise
and costs, as at batch 2048), the next step's noise and costs are prepared on all of
them; where it is small (batch 512, the assignment a fifth of the step), only the
next step's noise, on one thread: the cost matrix beside the assignment costs more
in shared caches than it saves. Figures in docs/results.md.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from loomray.coupling.couplings import Coupling, CouplingStats, Prepared

RATIO = 0.5


def disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two batches of table rows share no row."""
    return not np.isin(a, b, assume_unique=True).any()


class Lookahead:
    """Prepares steps ahead on one thread; ``take`` hands a step what was prepared."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-prepare")
        self.pending: dict[int, Future] = {}
        self.threads = threads
        self.full = True  # noise and costs ahead, until a step says the costs do not pay

    def observe(self, stats: CouplingStats) -> None:
        """What steps like this one gain from being prepared ahead: the costs too, or
        only the noise."""
        took = stats.seconds
        if "assign" in took:
            self.full = took["assign"] >= RATIO * (took.get("noise", 0.0) + took.get("cost", 0.0))

    def start(
        self,
        coupling: Coupling,
        step: int,
        rows: np.ndarray,
        x: np.ndarray,
        rng: np.random.Generator,
        busy_rows: np.ndarray,
    ) -> bool:
        """Prepare ``step`` (its rows, data and randomness) unless it is already under
        way or shares rows with the step being solved (``busy_rows``)."""
        if self.threads < 2 or step in self.pending or not disjoint(rows, busy_rows):
            return False
        threads = self.threads if self.full else 1
        work = functools.partial(coupling.prepare, costs=self.full, threads=threads)
        self.pending[step] = self.executor.submit(work, rows, x, rng)
        return True

    def take(self, step: int) -> Prepared | None:
        """What was prepared for ``step`` (waiting for it to finish), or None."""
        # steps never solved (a restore); a copy of the keys, as the event loop's thread
        # adds entries meanwhile
        for old in [s for s in list(self.pending) if s < step]:
            self.pending.pop(old, None)
        future = self.pending.pop(step, None)
        if future is None:
            return None
        try:
            return future.result()
        except Exception:  # the step computes it itself, and meets the error there
            return None

    def clear(self) -> None:
        """Forget everything prepared (a restore: other steps, another table)."""
        self.pending.clear()
