"""Data-noise couplings with one interface: LOOM-CFM and its two baselines.

Every coupling takes a minibatch (its table rows and data) and returns the
noise to pair with it::

    z, stats = coupling.step(rows, x, rng)   # train on (x[i], z[i])

* ``LoomCoupling``: Algorithm 1 of LOOM-CFM with K caches. One cache is drawn
  uniformly per row, the noises of those slots are regenerated from their
  seeds, an exact assignment re-pairs them with the batch, and the permuted
  seeds are written back, so the next visit of these rows starts from the
  improved pairing. Keeping the current pairing is feasible, hence the table
  cost never increases.
* ``MinibatchOTCoupling``: fresh noise, OT inside the batch only (OT-CFM).
* ``IndependentCoupling``: fresh noise, no re-pairing (I-CFM).
* ``PairsCoupling``: reflow; each row keeps the noise it was generated from
  (the seed stored with the pair), no re-pairing.

Rows: with random horizontal flips a flipped image is a data point of its own,
row ``i + n_images`` (see ``flip_rows``), as in the authors' code.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from loomray.coupling.noise import noise_from_seeds
from loomray.coupling.ot import Cost, assignment_from_cost, check_cost, cost_matrix, pair_costs
from loomray.coupling.table import AssignmentTable

KINDS: tuple[str, ...] = ("loom", "minibatch-ot", "independent", "pairs")


def flip_rows(images: np.ndarray, flipped: np.ndarray, n_images: int) -> np.ndarray:
    """Table rows of (image index, flipped?) pairs: image i flipped is row i + n_images."""
    return np.asarray(images, np.int64) + n_images * np.asarray(flipped, np.int64)


def split_rows(rows: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``flip_rows``: (image index, flipped?) of each row."""
    rows = np.asarray(rows, np.int64)
    return rows % n_images, rows >= n_images


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The coupling's randomness for one global step: the same wherever it is solved
    (the service, a single process, a replay), so results do not depend on where."""
    return np.random.default_rng([seed, step])


@dataclass
class CouplingStats:
    """What one coupling step did; costs are sums over the batch.

    ``perm`` and ``seeds`` make the step replayable: the returned noise is
    ``noise_from_seeds(seeds)``, and ``perm`` is the re-pairing the solve chose
    (identity for independent coupling), which is all a journal has to keep."""

    swaps: int
    pre_cost: float
    post_cost: float
    caches: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    perm: np.ndarray | None = None
    seeds: np.ndarray | None = None
    ahead: bool = False
    """The step used noise and costs prepared ahead (``Coupling.prepare``)."""


@dataclass
class Prepared:
    """The part of a re-pairing step that does not depend on the step before it: the
    noise of the drawn slots and (unless None) its cost matrix. Computed on another
    thread while the step before is assigned (``loomray.coupling.lookahead``); used
    only when the slots still hold the seeds it was made from (otherwise the step
    computes it anew)."""

    rows: np.ndarray
    caches: np.ndarray
    seeds: np.ndarray
    x: np.ndarray
    z: np.ndarray
    cost: np.ndarray | None
    seconds: dict[str, float]


class Coupling(ABC):
    """Maps a data minibatch to the noise minibatch it is trained against."""

    kind: str
    threads: int = 1
    """Threads for the noise and the cost matrix (the service's coupling.service_cpus);
    the same bits whatever the count."""
    solver: str = "lapjv"
    """The exact assignment solver (loomray.coupling.ot.SOLVERS)."""

    def __init__(self, cost: Cost = "l2") -> None:
        check_cost(cost)
        self.cost = cost

    @abstractmethod
    def step(
        self, rows: np.ndarray, x: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, CouplingStats]:
        """Noise float32 [B, *x.shape[1:]] aligned with ``x``, and the step's stats."""

    def solve(
        self,
        rows: np.ndarray,
        x: np.ndarray,
        rng: np.random.Generator,
        prepared: Prepared | None = None,
        assigning: Callable[[], None] | None = None,
    ) -> CouplingStats:
        """``step`` without gathering the noise it answers with: the stats alone (their
        ``seeds`` say which noise), as the coupling service answers. ``prepared``: what
        ``prepare`` computed for this very step ahead of time, if anything;
        ``assigning``: called as the assignment starts (the service then prepares the
        next step beside it)."""
        return self.step(rows, x, rng)[1]

    def prepare(
        self,
        rows: np.ndarray,
        x: np.ndarray,
        rng: np.random.Generator,
        costs: bool = True,
        threads: int | None = None,
    ) -> Prepared | None:
        """This step's noise and (``costs``) cost matrix, computed ahead on ``threads``
        (default ``self.threads``); None: nothing to gain."""
        return None

    @abstractmethod
    def replay(
        self, rows: np.ndarray, perm: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Redo a step whose re-pairing ``perm`` is known, without data or a solve.

        Returns the seeds of the noise the step answered with (``stats.seeds``)
        and the caches it drew; a table, if any, is updated exactly as ``step``
        did. Given the same state, rows and rng, ``replay(rows, stats.perm, rng)``
        is bit-identical to ``step``."""

    def _prepare(
        self,
        rows: np.ndarray,
        x: np.ndarray,
        caches: np.ndarray,
        seeds: np.ndarray,
        costs: bool = True,
        threads: int | None = None,
    ) -> Prepared:
        """The noise of ``seeds`` and (``costs``) its cost matrix against ``x``, timed."""
        t0 = time.perf_counter()
        z = noise_from_seeds(seeds, x.shape[1:], threads or self.threads)
        prepared = Prepared(rows, caches, seeds, x, z, None, {"noise": time.perf_counter() - t0})
        if costs:
            self._costs(prepared, threads)
        return prepared

    def _costs(self, prepared: Prepared, threads: int | None = None) -> None:
        t0 = time.perf_counter()
        prepared.cost = cost_matrix(prepared.x, prepared.z, self.cost, threads or self.threads)
        prepared.seconds["cost"] = time.perf_counter() - t0

    def _pair(self, prepared: Prepared, assigning=None) -> tuple[np.ndarray, CouplingStats]:
        """The optimal re-pairing of the prepared noise to the data, and its stats."""
        if prepared.cost is None:  # prepared ahead without its costs
            self._costs(prepared)
        if assigning is not None:
            assigning()
        t0 = time.perf_counter()
        c, caches = prepared.cost, prepared.caches
        perm = assignment_from_cost(c, self.solver)
        seconds = {**prepared.seconds, "assign": time.perf_counter() - t0}
        idx = np.arange(len(c))
        stats = CouplingStats(
            swaps=int((perm != idx).sum()),
            pre_cost=float(c[idx, idx].sum()),
            post_cost=float(c[idx, perm].sum()),
            caches=caches,
            seconds=seconds,
            perm=perm,
        )
        return perm, stats


def _fresh_seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)


def _unpaired(x, seeds_of, cost: Cost, threads: int = 1) -> tuple[np.ndarray, CouplingStats]:
    """A step without re-pairing: the noise of ``seeds_of(len(x))``, and its stats."""
    x = np.asarray(x, np.float32)
    t0 = time.perf_counter()
    seeds = seeds_of(len(x))
    z = noise_from_seeds(seeds, x.shape[1:], threads)
    t1 = time.perf_counter()
    c = float(pair_costs(x, z, cost).sum())
    n = len(x)
    stats = CouplingStats(0, c, c, np.zeros(n, np.int64), {"noise": t1 - t0}, np.arange(n), seeds)
    return z, stats


class _FreshNoiseCoupling(Coupling):
    """Baselines: fresh noise every step, from the step's rng; no table."""

    def replay(self, rows, perm, rng):
        n = len(perm)
        return _fresh_seeds(rng, n)[np.asarray(perm, np.int64)], np.zeros(n, np.int64)


class IndependentCoupling(_FreshNoiseCoupling):
    kind = "independent"

    def step(self, rows, x, rng):
        return _unpaired(x, lambda n: _fresh_seeds(rng, n), self.cost, self.threads)


class MinibatchOTCoupling(_FreshNoiseCoupling):
    kind = "minibatch-ot"

    def step(self, rows, x, rng):
        prepared = self.prepare(rows, x, rng)
        stats = self._solve(prepared)
        return prepared.z[stats.perm], stats

    def solve(self, rows, x, rng, prepared=None, assigning=None):
        rows = np.asarray(rows, np.int64)
        ahead = prepared is not None and np.array_equal(prepared.rows, rows)
        stats = self._solve(prepared if ahead else self.prepare(rows, x, rng), assigning)
        stats.ahead = ahead
        return stats

    def prepare(self, rows, x, rng, costs=True, threads=None):
        x = np.asarray(x, np.float32)
        seeds = _fresh_seeds(rng, len(x))
        zeros = np.zeros(len(x), np.int64)
        return self._prepare(np.asarray(rows, np.int64), x, zeros, seeds, costs, threads)

    def _solve(self, prepared: Prepared, assigning=None) -> CouplingStats:
        perm, stats = self._pair(prepared, assigning)
        stats.seeds = prepared.seeds[perm]
        return stats


class PairsCoupling(Coupling):
    """Reflow: row i of a pairs dataset is trained against the noise of its stored seed."""

    kind = "pairs"

    def __init__(self, seeds: np.ndarray, cost: Cost = "l2") -> None:
        super().__init__(cost)
        self.seeds = np.asarray(seeds, np.int64)

    def _seeds(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.seeds)):
            raise ValueError(f"row index out of range for {len(self.seeds)} pairs")
        return self.seeds[rows]

    def step(self, rows, x, rng):
        return _unpaired(x, lambda n: self._seeds(rows), self.cost, self.threads)

    def replay(self, rows, perm, rng):
        return self._seeds(rows)[np.asarray(perm, np.int64)], np.zeros(len(perm), np.int64)


class LoomCoupling(Coupling):
    """LOOM-CFM over an ``AssignmentTable`` it updates in place."""

    kind = "loom"

    def __init__(self, table: AssignmentTable, cost: Cost = "l2") -> None:
        super().__init__(cost)
        self.table = table

    def choose_caches(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """One cache per row, uniformly; the only randomness a LOOM step uses."""
        return rng.integers(0, self.table.caches, size=n, dtype=np.int64)

    def step(self, rows, x, rng):
        return self.step_with_caches(rows, x, self.choose_caches(len(rows), rng))

    def solve(self, rows, x, rng, prepared=None, assigning=None):
        rows, x, caches = self._checked(rows, x, self.choose_caches(len(rows), rng))
        current = self._current(rows, x, caches, prepared)
        stats = self._solve(current, assigning)[1]
        stats.ahead = current is prepared
        return stats

    def prepare(self, rows, x, rng, costs=True, threads=None):
        rows, x, caches = self._checked(rows, x, self.choose_caches(len(rows), rng))
        return self._prepare(rows, x, caches, self.table.seeds[rows, caches], costs, threads)

    def step_with_caches(
        self, rows: np.ndarray, x: np.ndarray, caches: np.ndarray
    ) -> tuple[np.ndarray, CouplingStats]:
        """The deterministic part of a step, given the caches already drawn."""
        rows, x, caches = self._checked(rows, x, caches)
        z, stats = self._solve(self._current(rows, x, caches, None))
        return z[stats.perm], stats

    def _checked(self, rows, x, caches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        caches = np.asarray(caches, np.int64)
        x = np.asarray(x, np.float32)
        if len(rows) != len(x) or len(caches) != len(rows):
            raise ValueError(
                f"rows ({len(rows)}), caches ({len(caches)}) and data ({len(x)}) must align"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= self.table.rows):
            raise ValueError(
                f"row index out of range for a table of {self.table.rows} rows "
                f"(got {rows.min()}..{rows.max()})"
            )
        if np.unique(rows).size != rows.size:
            # Two draws of one row could pick the same slot twice and break the
            # invariant that seeds are only permuted.
            raise ValueError("a minibatch must not repeat a table row")
        return rows, x, caches

    def _current(self, rows, x, caches, prepared: Prepared | None) -> Prepared:
        """``prepared`` if it was made for these slots and they still hold the seeds it
        was made from (the steps in between touched other rows), else made now."""
        seeds = self.table.seeds[rows, caches]
        if (
            prepared is not None
            and np.array_equal(prepared.rows, rows)
            and np.array_equal(prepared.caches, caches)
            and np.array_equal(prepared.seeds, seeds)
        ):
            return prepared
        return self._prepare(rows, x, caches, seeds)

    def _solve(self, prepared: Prepared, assigning=None) -> tuple[np.ndarray, CouplingStats]:
        """The step: the table updated, the drawn slots' noise (before the re-pairing)
        and the stats."""
        perm, stats = self._pair(prepared, assigning)
        t0 = time.perf_counter()
        stats.seeds = apply_permutation(self.table.seeds, prepared.rows, prepared.caches, perm)
        self.table.step += 1
        stats.seconds["update"] = time.perf_counter() - t0
        return prepared.z, stats

    def replay(self, rows, perm, rng):
        rows = np.asarray(rows, np.int64)
        caches = self.choose_caches(len(rows), rng)
        seeds = apply_permutation(self.table.seeds, rows, caches, np.asarray(perm, np.int64))
        self.table.step += 1
        return seeds, caches


def apply_permutation(
    seeds: np.ndarray, rows: np.ndarray, caches: np.ndarray, perm: np.ndarray
) -> np.ndarray:
    """One LOOM update in place: slot i of the batch takes the seed of slot ``perm[i]``.

    Returns the new seeds of the batch's slots (the seeds of the noise the step
    answered with)."""
    after = seeds[rows, caches][perm]
    seeds[rows, caches] = after
    return after


def undo_permutation(
    seeds: np.ndarray, rows: np.ndarray, caches: np.ndarray, perm: np.ndarray
) -> np.ndarray:
    """The inverse of ``apply_permutation`` in place; returns the seeds it undid."""
    after = seeds[rows, caches]
    before = np.empty_like(after)
    before[perm] = after
    seeds[rows, caches] = before
    return after


def make_coupling(
    kind: str,
    table: AssignmentTable | None = None,
    cost: Cost = "l2",
    seeds: np.ndarray | None = None,
) -> Coupling:
    """The coupling named ``kind``; ``loom`` needs a table, ``pairs`` the pairs' seeds."""
    if kind == "pairs":
        if seeds is None:
            raise ValueError("the pairs coupling needs the seeds of the pairs")
        return PairsCoupling(seeds, cost)
    if kind == "loom":
        if table is None:
            raise ValueError("the loom coupling needs an assignment table")
        return LoomCoupling(table, cost)
    if kind == "minibatch-ot":
        return MinibatchOTCoupling(cost)
    if kind == "independent":
        return IndependentCoupling(cost)
    raise ValueError(f"unknown coupling {kind!r}; expected one of {', '.join(KINDS)}")


def table_cost(
    table: AssignmentTable, data: np.ndarray, cost: Cost = "l2", chunk: int = 4096
) -> float:
    """Total cost of the table: sum over rows i and caches k of c(x_i, z(seed_ik))."""
    if len(data) != table.rows:
        raise ValueError(f"data has {len(data)} rows, the table {table.rows}")
    data = np.asarray(data, np.float32)
    total = 0.0
    for k in range(table.caches):
        for start in range(0, table.rows, chunk):
            x = data[start : start + chunk]
            z = noise_from_seeds(table.seeds[start : start + chunk, k], data.shape[1:])
            total += float(pair_costs(x, z, cost).sum())
    return total


def global_ot_cost(table: AssignmentTable, data: np.ndarray, cost: Cost = "l2") -> float:
    """The physical limit: the best table reachable by permuting all its seeds.

    Every noise of the table goes to exactly one slot, and row i has K slots
    of equal cost, so this is a transportation problem (supply K per row,
    demand 1 per noise) whose optimum is integral: an exact global assignment.
    Solved with POT's network simplex on the [rows, rows * K] cost matrix:
    ~30 s for the 1797 x 14376 digits table, where a square assignment of all
    slots would take far longer.
    """
    import ot

    data = np.asarray(data, np.float32)
    z = noise_from_seeds(table.seeds.reshape(-1), data.shape[1:])
    c = cost_matrix(data, z, cost)
    supply = np.full(table.rows, float(table.caches))
    demand = np.ones(table.rows * table.caches)
    _, log = ot.emd(supply, demand, c, numItermax=100_000_000, log=True)
    if log.get("warning"):
        raise RuntimeError(f"global OT did not converge: {log['warning']}")
    return float(log["cost"])
