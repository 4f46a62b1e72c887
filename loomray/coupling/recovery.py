"""What makes the coupling service exact under its own death: a snapshot plus a journal.

The service's state is the table after every step it has answered. On disk
that is the latest snapshot (``table-snapshot.parquet``) plus the journal of
the steps solved since (``journal.bin``, see ``loomray.coupling.journal``):

* ``begin`` starts a *lineage* when the service is restored to a step (a new
  run, a resume, a worker-group restart): the restored table is the new base
  (a snapshot, or none when it is the table's creation state, which the spec
  rebuilds), and the journal starts empty.
* ``append`` writes each solved step before its reply leaves the service.
* ``snapshot`` writes the table every ``snapshot_every`` steps and cuts the
  journal back to the last few records, which a restarted service needs to
  answer resubmitted steps and ``table_at`` of a checkpoint in flight.
* ``rebuild`` (in a restarted actor) loads the base and replays the journal,
  so the table, the step and the answers of recent steps are exactly the dead
  actor's.

A snapshot or journal of another run is refused with a ``JournalError``; a
journal of an older lineage of this run (a restore that did not finish) is
ignored, since its restore was never acknowledged and will be sent again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from loomray.coupling.couplings import (
    LoomCoupling,
    make_coupling,
    step_rng,
    undo_permutation,
)
from loomray.coupling.journal import Journal, JournalError, Record, check_header, read_journal
from loomray.coupling.table import AssignmentTable

SNAPSHOT_NAME = "table-snapshot.parquet"
JOURNAL_NAME = "journal.bin"


@dataclass(frozen=True)
class Solved:
    """A solved step as the service keeps it: its record, the caches it drew and
    the seeds of the noise it answered with (batch order)."""

    record: Record
    caches: np.ndarray
    seeds: np.ndarray


@dataclass
class Rebuilt:
    table: AssignmentTable | None
    solved: list[Solved]
    next_step: int


class DurableState:
    """The service's snapshot and journal in ``folder``; used by the solver thread only."""

    def __init__(
        self, folder: str | Path, identity: dict[str, Any], pair_seeds: np.ndarray | None = None
    ) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.pair_seeds = pair_seeds  # the pairs coupling's stored seeds (reflow)
        self.journal: Journal | None = None
        self.lineage = ""
        self.bytes = 0
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        """Half-written snapshots and journal cuts of a service that died while writing
        them (the run dir is locked to this run, whose one service writes here)."""
        for name in (SNAPSHOT_NAME, JOURNAL_NAME):
            for tmp in self.folder.glob(f".{name}.tmp-*"):
                tmp.unlink(missing_ok=True)

    @property
    def snapshot_path(self) -> Path:
        return self.folder / SNAPSHOT_NAME

    @property
    def journal_path(self) -> Path:
        return self.folder / JOURNAL_NAME

    def _header(self, base: str, start: int) -> dict[str, Any]:
        return {**self.identity, "lineage": self.lineage, "base": base, "start": start}

    def _save_snapshot(self, table: AssignmentTable) -> None:
        labeled = table.copy()
        labeled.labels = {"run": self.identity["run"], "lineage": self.lineage}
        labeled.save(self.snapshot_path)

    # ---- writing --------------------------------------------------------------
    def begin(self, table: AssignmentTable | None, step: int, creation: bool) -> None:
        """A new lineage at ``step``: the table as restored (``creation``: as created)."""
        self.close()
        self.lineage = uuid.uuid4().hex
        if table is None:
            base = "none"
        elif creation:
            base = "creation"
            self.snapshot_path.unlink(missing_ok=True)
        else:
            base = "snapshot"
            self._save_snapshot(table)
        self.journal = Journal(self.journal_path, self._header(base, step))

    def append(self, record: Record) -> None:
        if self.journal is not None:
            self.bytes += self.journal.append(record)

    def snapshot(self, table: AssignmentTable | None, step: int, recent: Iterable[Record]) -> None:
        """Write the table of ``step`` (if any), then restart the journal with only the
        ``recent`` records, so it never grows past ``snapshot_every`` steps."""
        if self.journal is None:
            return
        if table is not None:
            self._save_snapshot(table)
        header = self._header("none" if table is None else "snapshot", step)
        cut = Journal(self.journal_path, header, list(recent))  # replaces the file atomically
        self.journal.close()
        self.journal = cut

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # ---- reading --------------------------------------------------------------
    def _load_snapshot(self, creation: AssignmentTable) -> AssignmentTable:
        path = self.snapshot_path
        snap = AssignmentTable.load(path)
        theirs = (snap.labels.get("run"), snap.fingerprint[:12])
        ours = (self.identity["run"], creation.fingerprint[:12])
        if theirs != ours:
            raise JournalError(
                f"coupling snapshot {path} belongs to another run (run {theirs[0]!r}, seeds "
                f"{theirs[1]}; this run is {ours[0]!r}, seeds {ours[1]}); refusing to load it"
            )
        return snap

    def rebuild(self, creation: AssignmentTable | None) -> Rebuilt:
        """The state of the service that wrote this folder (``creation``: the table
        the spec creates, None for the baselines).

        ``next_step`` is None when there is no journal or it cannot be chained to a
        base (a restore that never finished, lost or deleted files): the state is
        lost and the service must be restored from a checkpoint. Every restore
        writes a journal, so a service that was ever restored has one."""
        base = None
        if creation is not None and self.snapshot_path.is_file():
            base = self._load_snapshot(creation)
        table = base if base is not None else (creation.copy() if creation else None)
        if not self.journal_path.is_file():
            return Rebuilt(table, [], None)
        header, records, valid = read_journal(self.journal_path)
        check_header(self.journal_path, header, self.identity)
        if base is not None:
            usable = header.get("lineage") == base.labels.get("lineage")
        else:
            usable = header.get("base") in ("creation", "none")
        if not usable:
            return Rebuilt(table, [], None)
        start = table.step if base is not None else int(header["start"])
        solved, next_step = self._replay(table, records, start)
        self.lineage = header["lineage"]
        self.journal = Journal.reopen(self.journal_path, valid)
        return Rebuilt(table, solved, next_step)

    def _replay(
        self, table: AssignmentTable | None, records: list[Record], start: int
    ) -> tuple[list[Solved], int]:
        """Apply the records from ``start`` on; learn what the earlier ones answered."""
        if any(b.step != a.step + 1 for a, b in pairwise(records)):
            raise JournalError(f"coupling journal {self.journal_path} skips steps")
        past = [r for r in records if r.step < start]
        ahead = [r for r in records if r.step >= start]
        if ahead and ahead[0].step != start:
            raise JournalError(
                f"coupling journal {self.journal_path} starts at step {ahead[0].step} but its "
                f"base table is at step {start}"
            )
        seed, cost = self.identity["seed"], self.identity["cost"]
        solved: list[Solved] = []
        if table is not None:
            # The past records are in the base already: undo them on a copy to
            # learn the seeds each one answered with.
            seeds_then = table.seeds.copy()
            coupling = LoomCoupling(table, cost)
            for r in reversed(past):
                caches = coupling.choose_caches(len(r.rows), step_rng(seed, r.step))
                answered = undo_permutation(seeds_then, r.rows, caches, r.perm)
                solved.insert(0, Solved(r, caches, answered))
            past = []
        else:
            coupling = make_coupling(self.identity["kind"], None, cost, self.pair_seeds)
        for r in past + ahead:  # the baselines' answers depend on the step alone
            answered, caches = coupling.replay(r.rows, r.perm, step_rng(seed, r.step))
            solved.append(Solved(r, caches, answered))
        return solved, start + len(ahead)
