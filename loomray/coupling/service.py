"""The coupling service: one Ray actor that owns the table and serves the solves.

Each training step every rank submits ``(step, rank, rows, x)``. The service
gathers all ranks of the step, runs ONE coupling step over the global batch
(ranks concatenated in rank order, the step's randomness from
``step_rng(seed, step)``), and answers each rank with its slice of the noise.
Steps are solved strictly in order, so the table evolves exactly as in the
sequential algorithm; workers submit step k+1 before training on step k, so the
solve of k+1 overlaps the compute of k. Solves run in a worker thread: the
actor keeps accepting submissions while it solves.

Faults:

* A rank that never submits: the waiting ranks get a ``TimeoutError`` naming
  the missing ranks after ``timeout_s``, so Ray Train can restart the group.
* Group restart from a checkpoint: rank 0 calls ``restore(step, seeds)`` with
  the table saved in that checkpoint; the service forgets everything after it,
  and the run continues exactly.
* The actor itself dies: Ray restarts it (``max_restarts``) and it reloads its
  latest snapshot. Workers resubmit what was in flight and carry on. Steps
  between the snapshot and the crash are lost to the table (it stays a valid
  permutation of its seeds); a step that some rank had already received before
  the crash is solved on the ranks that resubmit it.

``table_at(step)`` returns the table as training sees it at ``step`` (all solves
of steps < step applied), undoing the prefetched solves beyond it, so a
checkpoint written at step k carries the table of step k.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from loomray.coupling.couplings import LoomCoupling, make_coupling, step_rng
from loomray.coupling.table import AssignmentTable

SNAPSHOT_NAME = "table-snapshot.parquet"
UNDO_DEPTH = 16


@dataclass
class ServiceSpec:
    """Everything the service needs to (re)build itself, e.g. after a restart."""

    kind: str
    rows: int
    caches: int
    cost: str
    seed: int
    world: int
    snapshot_dir: str | None = None
    snapshot_every: int = 500
    timeout_s: float = 300.0
    run: str = "loomray"


@dataclass
class _Step:
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    error: BaseException | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)


class _Telemetry:
    """ray.util.metrics when running inside Ray, nothing otherwise."""

    def __init__(self, run: str) -> None:
        self.enabled = False
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Gauge, Histogram
        except ImportError:
            return
        tags = {"run": run}
        latency = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0]

        def tagged(metric):
            return metric.set_default_tags(tags)

        self.solve = tagged(
            Histogram(
                "loomray_coupling_solve_seconds",
                "Seconds per coupling solve (global batch).",
                boundaries=latency,
                tag_keys=("run",),
            )
        )
        self.wait = tagged(
            Histogram(
                "loomray_worker_wait_seconds",
                "Seconds a training worker blocked on the service per step.",
                boundaries=latency,
                tag_keys=("run",),
            )
        )
        self.swaps = tagged(
            Counter("loomray_coupling_swaps", "Noise seeds moved by the solves.", tag_keys=("run",))
        )
        self.pre = tagged(
            Gauge(
                "loomray_coupling_cost_pre",
                "Mean pair cost of the last batch before its solve.",
                tag_keys=("run",),
            )
        )
        self.post = tagged(
            Gauge(
                "loomray_coupling_cost_post",
                "Mean pair cost of the last batch after its solve.",
                tag_keys=("run",),
            )
        )
        self.queue = tagged(
            Gauge(
                "loomray_coupling_queue_depth",
                "Steps submitted but not yet solved.",
                tag_keys=("run",),
            )
        )
        self.step = tagged(Gauge("loomray_coupling_step", "Last solved step.", tag_keys=("run",)))
        self.loss = tagged(
            Gauge("loomray_train_loss", "Training loss (rank 0).", tag_keys=("run",))
        )
        self.images = tagged(
            Gauge(
                "loomray_train_images_per_second",
                "Training throughput over all workers.",
                tag_keys=("run",),
            )
        )
        self.enabled = True


def _reconstructed() -> bool:
    """True inside a Ray actor that Ray restarted after it died."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except (ImportError, AttributeError, RuntimeError):
        return False


class CouplingService:
    """Serve coupling solves to ``world`` ranks; see the module docstring."""

    def __init__(self, spec: ServiceSpec, table: AssignmentTable | None = None) -> None:
        self.spec = spec
        self.restarts = 0
        snapshot = self._snapshot_path()
        self.next_step: int | None = 0
        if table is None and snapshot is not None and snapshot.is_file() and _reconstructed():
            # We are a restarted actor: resume from our own latest snapshot.
            table = AssignmentTable.load(snapshot)
            self.next_step = None  # accept wherever the workers are
            self.restarts = 1
        if table is None and spec.kind == "loom":
            table = AssignmentTable.create(spec.rows, spec.caches, seed=spec.seed)
        if table is not None and table.rows != spec.rows:
            raise ValueError(f"the table has {table.rows} rows but the dataset {spec.rows}")
        self.table = table
        self.coupling = make_coupling(spec.kind, table, spec.cost)
        self.steps: dict[int, _Step] = {}
        self.last_submitted: dict[int, int] = {}
        self.undo: collections.deque = collections.deque(maxlen=UNDO_DEPTH)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-solve")
        # One BLAS thread: the service lives beside busy training workers, and
        # idle OpenBLAS threads spin on the cores they need.
        threadpool_limits(limits=1)
        self.solver: asyncio.Task | None = None
        self.history: collections.deque = collections.deque(maxlen=1000)
        self.waits: collections.deque = collections.deque(maxlen=1000)
        self.loss: float | None = None
        self.solved = 0
        self.submits: dict[int, int] = {}  # batches received per rank
        self.nodes: dict[int, str] = {}  # the Ray node of each rank
        self.telemetry = _Telemetry(spec.run)

    # ---- the hot path -------------------------------------------------------
    async def submit(
        self, step: int, rank: int, rows: np.ndarray, x: np.ndarray, info: dict | None = None
    ) -> np.ndarray:
        """This rank's batch of ``step``; returns its noise once the step is solved."""
        if not 0 <= rank < self.spec.world:
            raise ValueError(f"rank {rank} is outside a world of {self.spec.world}")
        if self.next_step is not None and step < self.next_step:
            raise ValueError(
                f"step {step} was already solved (the service is at step {self.next_step}); "
                "restore() the service when restarting from a checkpoint"
            )
        self._record_info(rank, info)
        entry = self.steps.setdefault(step, _Step())
        entry.parts[rank] = (np.asarray(rows, np.int64), np.asarray(x, np.float32))
        self.last_submitted[rank] = max(self.last_submitted.get(rank, -1), step)
        self._kick()
        try:
            await asyncio.wait_for(entry.event.wait(), timeout=self.spec.timeout_s)
        except asyncio.TimeoutError:
            missing = self._missing(step)
            raise TimeoutError(
                f"coupling service: step {step} still lacks rank(s) "
                f"{', '.join(map(str, missing)) or '?'} after {self.spec.timeout_s:g} s; "
                "a training worker is stuck or dead"
            ) from None
        if entry.error is not None:
            raise entry.error
        z = entry.results.pop(rank)
        if not entry.results and self.steps.get(step) is entry:
            del self.steps[step]
        return z

    def _record_info(self, rank: int, info: dict | None) -> None:
        self.submits[rank] = self.submits.get(rank, 0) + 1
        if not info:
            return
        if isinstance(info.get("node"), str):
            self.nodes[rank] = info["node"]
        if "wait" in info:
            self.waits.append(float(info["wait"]))
            if self.telemetry.enabled:
                self.telemetry.wait.observe(float(info["wait"]))
        if rank == 0 and "loss" in info:
            self.loss = float(info["loss"])
            if self.telemetry.enabled:
                self.telemetry.loss.set(self.loss)

    def _missing(self, step: int) -> list[int]:
        entry = self.steps.get(step)
        have = set(entry.parts) if entry else set()
        return [r for r in range(self.spec.world) if r not in have and not self._past(r, step)]

    def _past(self, rank: int, step: int) -> bool:
        # Ranks submit in step order, so a rank that submitted a later step but
        # not this one already holds this step's answer (from before a restart).
        return self.last_submitted.get(rank, -1) > step and self.next_step is None

    def _ready(self) -> int | None:
        pending = [s for s, e in self.steps.items() if e.parts and not e.event.is_set()]
        if not pending:
            return None
        step = min(pending) if self.next_step is None else self.next_step
        entry = self.steps.get(step)
        if entry is None or entry.event.is_set() or self._missing(step):
            return None
        return step

    def _kick(self) -> None:
        if self.solver is None or self.solver.done():
            self.solver = asyncio.get_running_loop().create_task(self._solve_ready())

    async def _solve_ready(self) -> None:
        loop = asyncio.get_running_loop()
        while (step := self._ready()) is not None:
            entry = self.steps[step]
            ranks = sorted(entry.parts)
            counts = [len(entry.parts[r][0]) for r in ranks]
            rows = np.concatenate([entry.parts[r][0] for r in ranks])
            x = np.concatenate([entry.parts[r][1] for r in ranks])
            entry.parts.clear()
            try:
                z = await loop.run_in_executor(self.executor, self._solve, step, rows, x)
            except Exception as err:  # handed to every waiting rank
                entry.error = err
                entry.event.set()
                continue
            bounds = np.cumsum([0, *counts])
            for r, lo, hi in zip(ranks, bounds[:-1], bounds[1:], strict=True):
                entry.results[r] = z[lo:hi]
            self.next_step = step + 1
            entry.event.set()

    def _solve(self, step: int, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        if isinstance(self.coupling, LoomCoupling):
            caches = self.coupling.choose_caches(len(rows), step_rng(self.spec.seed, step))
            before = self.table.seeds[rows, caches].copy()
            self.table.step = step
            z, stats = self.coupling.step_with_caches(rows, x, caches)
            self.undo.append((step, rows, caches, before))
        else:
            z, stats = self.coupling.step(rows, x, step_rng(self.spec.seed, step))
        seconds = time.perf_counter() - t0
        self.solved += 1
        n = len(rows)
        self.history.append(
            (time.time(), step, seconds, stats.swaps, stats.pre_cost / n, stats.post_cost / n)
        )
        if self.telemetry.enabled:
            t = self.telemetry
            t.solve.observe(seconds)
            if stats.swaps:
                t.swaps.inc(stats.swaps)
            t.pre.set(stats.pre_cost / n)
            t.post.set(stats.post_cost / n)
            t.step.set(step)
            t.queue.set(max(0, len(self.steps) - 1))
        if self.table is not None and (step + 1) % self.spec.snapshot_every == 0:
            self._write_snapshot()
        return z

    # ---- state --------------------------------------------------------------
    def _snapshot_path(self) -> Path | None:
        return Path(self.spec.snapshot_dir) / SNAPSHOT_NAME if self.spec.snapshot_dir else None

    def _write_snapshot(self) -> None:
        path = self._snapshot_path()
        if path is not None:
            self.table.save(path)

    async def restore(
        self, step: int, seeds: np.ndarray | None = None, fingerprint: str = ""
    ) -> None:
        """Restart the service at ``step`` with the table of that step (None: step 0's)."""
        for entry in self.steps.values():
            if not entry.event.is_set():
                entry.error = RuntimeError(f"the service was restored to step {step}")
                entry.event.set()
        if self.solver is not None:
            await asyncio.gather(self.solver, return_exceptions=True)
        self.steps.clear()
        self.last_submitted.clear()
        self.undo.clear()
        if self.spec.kind == "loom":
            if seeds is None:
                if step != 0:
                    raise ValueError(f"restoring to step {step} needs that step's table")
                table = AssignmentTable.create(self.spec.rows, self.spec.caches, self.spec.seed)
            else:
                table = AssignmentTable(np.array(seeds, np.int64), step, fingerprint)
                if table.rows != self.spec.rows or table.caches != self.spec.caches:
                    raise ValueError(
                        f"the restored table is [{table.rows}, {table.caches}], the service "
                        f"expects [{self.spec.rows}, {self.spec.caches}]"
                    )
            table.step = step
            self.table = table
            self.coupling = LoomCoupling(table, self.spec.cost)
        self.next_step = step

    async def table_at(self, step: int) -> dict[str, Any] | None:
        """Seeds of the table as training sees it at ``step`` (solves of steps < step).

        Waits (up to the timeout) for the solves before ``step`` to finish."""
        if self.table is None:
            return None
        deadline = time.monotonic() + self.spec.timeout_s
        while self.next_step is not None and self.next_step < step:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.002)
        seeds = self.table.seeds.copy()
        for undo_step, rows, caches, before in reversed(self.undo):
            if undo_step >= step:
                seeds[rows, caches] = before
        solved_to = self.next_step if self.next_step is not None else step
        oldest = min((u[0] for u in self.undo), default=solved_to)
        if step > solved_to or step < oldest:
            raise ValueError(
                f"the table of step {step} is not available (solved up to {solved_to}, "
                f"undo log from {oldest})"
            )
        return {"seeds": seeds, "step": step, "fingerprint": self.table.fingerprint}

    def stats(self) -> dict[str, Any]:
        """Live numbers for progress bars, `loomray status` and tests."""
        hist = list(self.history)
        out: dict[str, Any] = {
            "run": self.spec.run,
            "kind": self.spec.kind,
            "world": self.spec.world,
            "step": (self.next_step - 1) if self.next_step else (hist[-1][1] if hist else -1),
            "solves": self.solved,
            "restarts": self.restarts,
            "queue_depth": sum(1 for e in self.steps.values() if not e.event.is_set()),
            "loss": self.loss,
            "workers": [
                {"rank": r, "node": self.nodes.get(r), "batches": self.submits[r]}
                for r in sorted(self.submits)
            ],
        }
        if hist:
            window = hist[-100:]
            span = window[-1][0] - window[0][0]
            out["steps_per_s"] = (len(window) - 1) / span if span > 0 else None
            out["solve_ms"] = 1e3 * float(np.mean([h[2] for h in window]))
            out["swaps"] = float(np.mean([h[3] for h in window]))
            out["cost_pre"] = float(np.mean([h[4] for h in window]))
            out["cost_post"] = float(np.mean([h[5] for h in window]))
            out["cost_trend"] = [
                float(np.mean([h[4] for h in hist[i : i + 50]])) for i in range(0, len(hist), 50)
            ][-10:]
        if self.waits:
            out["wait_ms"] = 1e3 * float(np.mean(list(self.waits)[-200:]))
        return out

    def record(self, images_per_s: float) -> None:
        if self.telemetry.enabled:
            self.telemetry.images.set(images_per_s)

    def ping(self) -> bool:
        return True
