"""The coupling service: one Ray actor that owns the table and serves the solves.

Each training step every rank submits ``(step, rank, rows, x)``. The service
gathers all ranks of the step, runs ONE coupling step over the global batch
(ranks concatenated in rank order, the step's randomness from
``step_rng(seed, step)``), and answers each rank with its slice of the noise.
Steps are solved strictly in order, so the table evolves exactly as in the
sequential algorithm; workers submit step k+1 before training on step k, so the
solve of k+1 overlaps the compute of k. Solves run in one worker thread (the
"solver thread"): the actor keeps accepting submissions while it solves, and
everything that writes the table runs on that thread, in order. While step k is
assigned, step k+1's noise and cost matrix are prepared on another thread when
its batches are in and its rows differ from k's (``loomray.coupling.lookahead``).

Exact under faults:

* Every solved step is journaled (``loomray.coupling.recovery``) before its
  reply leaves. A restarted actor rebuilds the table from the latest snapshot
  plus the journal, so it is exactly where the dead one was: steps the ranks
  resubmit that were solved already are answered with the same noise, the
  others are solved as usual.
* Submits are idempotent: a rank that sends a step twice gets the same answer
  twice.
* A rank that never submits: the waiting ranks get a ``TimeoutError`` naming
  the missing ranks after ``timeout_s``, so Ray Train can restart the group.
* Group restart from a checkpoint: rank 0 calls ``restore(step, seeds)`` with
  the table saved in that checkpoint; the service forgets everything after it
  and starts a new journal lineage there.

``table_at(step)`` returns the table as training sees it at ``step`` (all solves
of steps < step applied), undoing the prefetched solves beyond it, so a
checkpoint written at step k carries the table of step k.
"""

from loomray.coupling.recovery import SNAPSHOT_NAME
from loomray.coupling.service.actor import CouplingService
from loomray.coupling.service.spec import (
    UNDO_DEPTH,
    DurabilityError,
    LostStateError,
    ServiceSpec,
)

__all__ = [
    "SNAPSHOT_NAME",
    "UNDO_DEPTH",
    "CouplingService",
    "DurabilityError",
    "LostStateError",
    "ServiceSpec",
]
