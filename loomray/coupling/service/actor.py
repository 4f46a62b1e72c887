"""The CouplingService actor: the hot path (submit, solve in order, reply), its
durable state and restores (see ``loomray.coupling.service``)."""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from loomray.coupling.couplings import LoomCoupling, make_coupling, step_rng, undo_permutation
from loomray.coupling.journal import Record
from loomray.coupling.lookahead import Lookahead
from loomray.coupling.recovery import DurableState, Solved
from loomray.coupling.service.observed import Observed
from loomray.coupling.service.spec import (
    UNDO_DEPTH,
    DurabilityError,
    LostStateError,
    ServiceSpec,
    reconstructed,
    write_failure,
)
from loomray.coupling.table import AssignmentTable
from loomray.coupling.wire import decode


@dataclass
class _Step:
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    waiters: collections.Counter = field(default_factory=collections.Counter)
    error: BaseException | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    batch: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None
    """The ranks' parts joined in rank order (counts, rows, x), once all are in."""

    def joined(self) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
        if self.batch is None:
            ranks = sorted(self.parts)
            counts = tuple(len(self.parts[r][0]) for r in ranks)
            rows = np.concatenate([self.parts[r][0] for r in ranks])
            x = np.concatenate([self.parts[r][1] for r in ranks])
            self.batch = (counts, rows, x)
        return self.batch


class CouplingService:
    """Serve coupling solves to ``world`` ranks; see the module docstring."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.restarts = 0
        pair_seeds = None
        if spec.pairs:
            from loomray.data.pairs import read_pair_seeds

            pair_seeds = read_pair_seeds(spec.pairs)
        creation = (
            AssignmentTable.create(spec.rows, spec.caches, seed=spec.seed)
            if spec.kind == "loom"
            else None
        )
        self.fingerprint = creation.fingerprint if creation is not None else ""
        self.table = creation
        self.recent: collections.deque[Solved] = collections.deque(maxlen=UNDO_DEPTH)
        self.next_step: int | None = 0
        self.durable = (
            DurableState(spec.snapshot_dir, self._identity(), pair_seeds)
            if spec.snapshot_dir
            else None
        )
        self.lost = ""  # why the state is lost, when it is (next_step None)
        self.failed = ""  # why no step can be made durable, when one could not
        self.snapshot_problem = ""  # why the last snapshot failed, until one succeeds
        self.restoring_to: int | None = None
        self.restores_pending = 0
        self.restore_lock = asyncio.Lock()
        if self.durable is not None and reconstructed():
            self.restarts = 1
            self._rebuild(creation)
        self.coupling = make_coupling(spec.kind, self.table, spec.cost, pair_seeds)
        self.coupling.threads = max(1, int(spec.threads))
        self.steps: dict[int, _Step] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-solve")
        self.lookahead = Lookahead(self.coupling.threads)
        self.solving: tuple[int, np.ndarray] | None = None  # the step being assigned, its rows
        # One BLAS thread: the service lives beside busy training workers, and
        # idle OpenBLAS threads spin on the cores they need.
        threadpool_limits(limits=1)
        self.solver: asyncio.Task | None = None
        self.solved = 0
        self.ahead = 0  # solves whose noise and costs were prepared during the step before
        self.restored_at: int | None = None
        self.solved_since_restore = 0
        self.busy_until: dict[int, float] = {}  # see busy()
        self.observed = Observed(spec.run)

    def _rebuild(self, creation: AssignmentTable | None) -> None:
        """A restarted actor: take the dead one's state from snapshot + journal. Files
        that cannot be used leave a service that waits to be restored (Ray would not
        restart an actor whose constructor raised, and a restore can still save the run)."""
        try:
            rebuilt = self.durable.rebuild(creation)
        except (ValueError, OSError) as err:  # JournalError is a ValueError
            self.next_step, self.lost = None, str(err)
            return
        self.table, self.next_step = rebuilt.table, rebuilt.next_step
        self.recent.extend(rebuilt.solved)
        if self.next_step is None:
            self.lost = f"its files in {self.spec.snapshot_dir} do not hold a restorable state"

    def _identity(self) -> dict[str, Any]:
        s = self.spec
        return {
            "run": s.run_id,
            "kind": s.kind,
            "rows": s.rows,
            "caches": s.caches if s.kind == "loom" else 0,
            "seed": s.seed,
            "cost": s.cost,
            "fingerprint": self.fingerprint,
        }

    # ---- the hot path -------------------------------------------------------
    async def submit(
        self, step: int, rank: int, rows: np.ndarray, x: np.ndarray, info: dict | None = None
    ) -> np.ndarray:
        """This rank's batch of ``step`` (float32, or packed: loomray.coupling.wire);
        returns the seeds of its noise, int64 per row, once the step is solved."""
        if not 0 <= rank < self.spec.world:
            raise ValueError(f"rank {rank} is outside a world of {self.spec.world}")
        self._check_state()
        self.observed.submitted(rank, info)
        rows, x = np.asarray(rows, np.int64), decode(x)
        if step < self.next_step:  # a resubmit: answer what was answered
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, self._answer_again, step, rank, rows)
        entry = self.steps.setdefault(step, _Step())
        entry.parts[rank] = (rows, x)
        entry.batch = None
        entry.waiters[rank] += 1
        self._kick()
        self._look_ahead()
        try:
            await self._wait_for_ranks(step, entry)
        finally:
            entry.waiters[rank] -= 1
        if entry.error is not None:
            raise entry.error
        seeds = entry.results[rank]
        if not entry.waiters[rank]:
            del entry.results[rank]
            if not entry.results and self.steps.get(step) is entry:
                del self.steps[step]
        return seeds

    async def _wait_for_ranks(self, step: int, entry: _Step) -> None:
        """Until ``step`` is solved: ``timeout_s`` after the last rank that is not busy
        (``busy``) has had its chance, then TimeoutError naming the missing ranks."""
        deadline = time.monotonic() + self.spec.timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(entry.event.wait(), timeout=max(left, 0.001))
                return
            except asyncio.TimeoutError:
                missing = self._missing(step)
                busy = max((self.busy_until.get(r, 0.0) for r in missing), default=0.0)
                if busy > time.monotonic():
                    deadline = busy + self.spec.timeout_s
                    continue
                raise TimeoutError(
                    f"coupling service: step {step} still lacks rank(s) "
                    f"{', '.join(map(str, missing)) or '?'} after {self.spec.timeout_s:g} s; "
                    "a training worker is stuck or dead"
                ) from None

    def busy(self, rank: int, seconds: float) -> None:
        """``rank`` works outside the steps for up to ``seconds`` (rank 0 writing sample
        images); steps that wait for it wait that much longer. 0: done."""
        self.busy_until[rank] = time.monotonic() + seconds if seconds > 0 else 0.0

    def _check_state(self) -> None:
        if self.restoring_to is not None:
            raise RuntimeError(
                f"the coupling service is being restored to step {self.restoring_to}; "
                "requests from before the restore are refused"
            )
        if self.failed:
            raise DurabilityError(self.failed)
        if self.next_step is None:
            raise LostStateError(
                f"the coupling service of run {self.spec.run} restarted and cannot go on "
                f"where it was ({self.lost}); the workers must restart from the last checkpoint"
            )

    def _answer_again(self, step: int, rank: int, rows: np.ndarray) -> np.ndarray:
        """The answer ``rank`` got (or would have got) for an already solved ``step``."""
        solved = next((s for s in self.recent if s.record.step == step), None)
        if solved is None:
            raise ValueError(
                f"step {step} was already solved (the service is at step {self.next_step}); "
                "restore() the service when restarting from a checkpoint"
            )
        span = solved.record.span(rank)
        if not np.array_equal(solved.record.rows[span], rows):
            raise ValueError(f"rank {rank} resubmitted step {step} with other rows than before")
        return solved.seeds[span]

    def _missing(self, step: int) -> list[int]:
        entry = self.steps.get(step)
        have = set(entry.parts) if entry else set()
        return [r for r in range(self.spec.world) if r not in have]

    def _ready(self) -> int | None:
        entry = self.steps.get(self.next_step) if self.next_step is not None else None
        if entry is None or entry.event.is_set() or self._missing(self.next_step):
            return None
        return self.next_step

    def _kick(self) -> None:
        if self.solver is None or self.solver.done():
            self.solver = asyncio.get_running_loop().create_task(self._solve_ready())

    async def _solve_ready(self) -> None:
        loop = asyncio.get_running_loop()
        while (step := self._ready()) is not None:
            entry = self.steps[step]
            ranks = sorted(entry.parts)
            counts, rows, x = entry.joined()
            entry.parts.clear()

            def assigning(step=step, rows=rows) -> None:  # on the solver thread
                loop.call_soon_threadsafe(self._assigning, step, rows)

            try:
                seeds = await loop.run_in_executor(
                    self.executor, self._solve, step, counts, rows, x, assigning
                )
            except Exception as err:  # handed to every waiting rank
                entry.error = err
                entry.event.set()
                continue
            finally:
                self.solving = None
            bounds = np.cumsum([0, *counts])
            for r, lo, hi in zip(ranks, bounds[:-1], bounds[1:], strict=True):
                entry.results[r] = seeds[lo:hi]
            self.next_step = step + 1
            entry.event.set()

    def _assigning(self, step: int, rows: np.ndarray) -> None:
        """``step`` is being assigned: prepare the step after it beside the assignment."""
        if self.next_step == step:  # not solved already
            self.solving = (step, rows)
            self._look_ahead()

    def _look_ahead(self) -> None:
        """Prepare the step after the one being assigned once all its batches are in."""
        if self.solving is None:
            return
        step = self.solving[0] + 1
        entry = self.steps.get(step)
        if entry is None or entry.event.is_set() or self._missing(step):
            return
        counts, rows, x = entry.joined()
        rng = step_rng(self.spec.seed, step)
        self.lookahead.start(self.coupling, step, rows, x, rng, self.solving[1])

    def _solve(self, step: int, counts: tuple[int, ...], rows, x, assigning=None):
        """One step on the solver thread: solve, journal, and only then reply."""
        t0 = time.perf_counter()
        if self.table is not None:
            self.table.step = step
        if self.durable is not None and self.durable.journal is None:
            self.durable.begin(self.table, step, creation=False)
        if self.failed:
            raise DurabilityError(self.failed)
        prepared = self.lookahead.take(step)
        stats = self.coupling.solve(rows, x, step_rng(self.spec.seed, step), prepared, assigning)
        record = Record(step, rows, stats.perm, counts)
        if self.durable is not None:
            try:
                self.durable.append(record)
            except OSError as err:  # the step is not durable: it never happened
                self._undo(step, rows, stats)
                self.failed = (
                    f"loomray: the coupling service stopped at step {step}: "
                    f"{write_failure(err, 'writing its journal')}; the table stays at the "
                    "last durable step; free space and resume the run"
                )
                raise DurabilityError(self.failed) from None
        self.recent.append(Solved(record, stats.caches, stats.seeds))
        seconds = time.perf_counter() - t0
        self.solved += 1
        self.ahead += stats.ahead
        self.lookahead.observe(stats)
        self.solved_since_restore += 1
        self.observed.solved(step, seconds, stats, len(rows), max(0, len(self.steps) - 1))
        if self.durable is not None and (step + 1) % self.spec.snapshot_every == 0:
            self._snapshot(step + 1)
        return stats.seeds  # the answer: each rank regenerates its noise from these

    def _undo(self, step: int, rows: np.ndarray, stats) -> None:
        """Take back a solved step that could not be journaled."""
        if self.table is not None:
            undo_permutation(self.table.seeds, rows, stats.caches, stats.perm)
            self.table.step = step

    def _snapshot(self, step: int) -> None:
        """Cut the journal at ``step``. A failed cut loses nothing (the steps are
        journaled), so training goes on; it is reported in `loomray status`, the
        metrics and the driver's output until a cut succeeds."""
        try:
            self.durable.snapshot(self.table, step, [s.record for s in self.recent])
        except OSError as err:
            self.snapshot_problem = (
                f"{write_failure(err, f'the coupling snapshot at step {step}')}; the journal "
                "grows until a snapshot succeeds"
            )
            print(f"loomray: warning: {self.snapshot_problem}", flush=True)
        else:
            self.snapshot_problem = ""
        self.observed.snapshot_failed(bool(self.snapshot_problem))

    # ---- state --------------------------------------------------------------
    async def restore(
        self,
        step: int,
        seeds: np.ndarray | None = None,
        fingerprint: str = "",
        fresh: bool = False,
    ) -> None:
        """Restart the service at ``step`` with the table of that step (None: step 0's).

        ``fresh``: the checkpoint has no table (an imported release): a new table at
        ``step``; LOOM's assignment starts over, the network goes on."""
        table = self._restored_table(step, seeds, fingerprint, fresh)
        # A fence: from here until every restore is done, late submits of the old worker
        # group are refused instead of being solved against the new table. Restores run
        # one at a time, and the fence stays up while one is still waiting.
        self.restores_pending += 1
        self.restoring_to = step
        try:
            async with self.restore_lock:
                self.restoring_to = step
                await self._restore(step, seeds, table)
        finally:
            self.restores_pending -= 1
            if not self.restores_pending:
                self.restoring_to = None

    async def _restore(self, step: int, seeds, table: AssignmentTable | None) -> None:
        """Fail the waiting steps, let the solver finish, then restart at ``step``."""
        for entry in self.steps.values():
            if not entry.event.is_set():
                entry.error = RuntimeError(f"the service was restored to step {step}")
                entry.event.set()
        if self.solver is not None and not self.solver.done():
            await asyncio.gather(self.solver, return_exceptions=True)
        loop = asyncio.get_running_loop()
        creation = seeds is None and step == 0
        await loop.run_in_executor(self.executor, self._restart_at, step, table, creation)
        self.steps.clear()

    def _restored_table(
        self, step: int, seeds: np.ndarray | None, fingerprint: str, fresh: bool = False
    ) -> AssignmentTable | None:
        if self.spec.kind != "loom":
            return None
        if seeds is None:
            if step != 0 and not fresh:
                raise ValueError(f"restoring to step {step} needs that step's table")
            table = AssignmentTable.create(self.spec.rows, self.spec.caches, self.spec.seed)
        else:
            table = AssignmentTable(np.array(seeds, np.int64), step, fingerprint)
            if table.rows != self.spec.rows or table.caches != self.spec.caches:
                raise ValueError(
                    f"the restored table is [{table.rows}, {table.caches}], the service "
                    f"expects [{self.spec.rows}, {self.spec.caches}]"
                )
            if table.fingerprint != self.fingerprint:
                raise ValueError(
                    "the restored table holds other seeds than this run's table: it belongs "
                    "to another run"
                )
        table.step = step
        return table

    def _restart_at(self, step: int, table: AssignmentTable | None, creation: bool) -> None:
        """On the solver thread: the new state, and a new journal lineage for it."""
        self.recent.clear()
        self.restored_at, self.solved_since_restore = step, 0
        self.table = table
        self.lookahead.clear()
        if table is not None:
            self.coupling = LoomCoupling(table, self.spec.cost)
            self.coupling.threads = max(1, int(self.spec.threads))
        self.next_step, self.lost = step, ""
        if self.durable is not None:
            try:
                self.durable.begin(table, step, creation)
            except OSError as err:
                self.failed = (
                    f"loomray: the coupling service cannot restart at step {step}: "
                    f"{write_failure(err, 'writing its snapshot and journal')}; free space "
                    "and resume the run"
                )
                raise DurabilityError(self.failed) from None
        self.failed = ""

    async def table_at(self, step: int) -> dict[str, Any] | None:
        """Seeds of the table as training sees it at ``step`` (solves of steps < step).

        Waits (up to the timeout) for the solves before ``step`` to finish."""
        if self.table is None:
            return None
        self._check_state()
        deadline = time.monotonic() + self.spec.timeout_s
        while self.next_step is not None and self.next_step < step:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.002)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._table_at, step)

    def _table_at(self, step: int) -> dict[str, Any]:
        # On the solver thread, so no solve is half-applied while we copy.
        solved_to = self.table.step
        oldest = self.recent[0].record.step if self.recent else solved_to
        if not oldest <= step <= solved_to:
            raise ValueError(
                f"the table of step {step} is not available (solved up to {solved_to}, "
                f"undo log from {oldest})"
            )
        seeds = self.table.seeds.copy()
        for solved in reversed(self.recent):
            if solved.record.step >= step:
                undo_permutation(seeds, solved.record.rows, solved.caches, solved.record.perm)
        return {"seeds": seeds, "step": step, "fingerprint": self.table.fingerprint}

    def stats(self) -> dict[str, Any]:
        """Live numbers for progress bars, `loomray status` and tests."""
        out: dict[str, Any] = {
            "run": self.spec.run,
            "run_dir": self.spec.run_dir,
            "kind": self.spec.kind,
            "world": self.spec.world,
            "step": (self.next_step - 1) if self.next_step is not None else -1,
            "solves": self.solved,
            "prepared_ahead": self.ahead,
            "restarts": self.restarts,
            "phase": self._phase(),
            "queue_depth": sum(1 for e in self.steps.values() if not e.event.is_set()),
        }
        if self.durable is not None and self.solved:
            out["journal_bytes_per_step"] = self.durable.bytes / self.solved
        problems = [p for p in (self.failed, self.snapshot_problem) if p]
        if problems:
            out["problem"] = problems[0].removeprefix("loomray: ")
        out.update(self.observed.figures())
        return out

    def _phase(self) -> str:
        """What the run is doing, for progress bars and `loomray status`."""
        if self.next_step is None:
            return "waiting to be restored from a checkpoint"
        if self.solved_since_restore or (self.restored_at is None and self.solved):
            return "training"
        if self.restored_at is None:
            return "starting the workers"
        return f"restored to step {self.restored_at}, loading the first batches"

    def record(self, images_per_s: float) -> None:
        self.observed.images(images_per_s)

    def ping(self) -> bool:
        return True

    def holder(self) -> dict[str, Any] | None:
        """The driver that started this service (pid, host, Ray job)."""
        return self.spec.driver
