"""The coupling service when its files cannot be written (no Ray): a step is applied
only once it is durable, a failed snapshot is said, restores keep their fence."""

import asyncio
import errno
import threading

import numpy as np
import pytest
from test_service import data, replay, run_ranks
from test_service_faults import durable, part

from loomray.coupling.journal import Journal
from loomray.coupling.recovery import DurableState
from loomray.coupling.service import CouplingService, DurabilityError


def test_a_full_disk_under_the_journal_stops_at_the_last_durable_step(tmp_path, monkeypatch):
    x_all = data()
    service = CouplingService(durable(tmp_path))
    asyncio.run(service.restore(0))
    asyncio.run(run_ranks(service, 5, x_all))
    journal = str(tmp_path / "journal.bin")

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", journal)

    monkeypatch.setattr(Journal, "append", full)
    with pytest.raises(DurabilityError) as err:
        asyncio.run(run_ranks(service, 6, x_all, start=5))
    assert str(err.value) == (
        f"loomray: the coupling service stopped at step 5: writing its journal {journal} "
        "failed: the disk is full; the table stays at the last durable step; free space "
        "and resume the run"
    )
    want, _ = replay(5, x_all)  # step 5 solved in memory, then taken back
    assert np.array_equal(service.table.seeds, want.seeds) and service.table.step == 5
    rows, x = part(5, 0)
    for call in (service.submit(5, 0, rows, x), service.table_at(6)):  # nothing more
        with pytest.raises(DurabilityError, match="disk is full"):
            asyncio.run(call)
    assert "the disk is full" in service.stats()["problem"]
    monkeypatch.undo()  # space freed: a restore from the checkpoint goes on
    asyncio.run(service.restore(5, want.seeds, want.fingerprint))
    asyncio.run(run_ranks(service, 9, x_all, start=5))
    assert np.array_equal(service.table.seeds, replay(9, x_all)[0].seeds)
    assert "problem" not in service.stats()


def test_a_failed_snapshot_is_said_and_training_goes_on(tmp_path, monkeypatch, capsys):
    x_all = data()
    service = CouplingService(durable(tmp_path, snapshot_every=4))
    asyncio.run(service.restore(0))
    real = DurableState.snapshot

    def failing(self, table, step, recent):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(DurableState, "snapshot", failing)
    asyncio.run(run_ranks(service, 6, x_all))
    problem = service.stats()["problem"]
    assert problem.startswith("the coupling snapshot at step 4") and "journal grows" in problem
    assert "loomray: warning: the coupling snapshot at step 4" in capsys.readouterr().out
    monkeypatch.setattr(DurableState, "snapshot", real)
    asyncio.run(run_ranks(service, 9, x_all, start=6))
    assert "problem" not in service.stats()
    assert np.array_equal(service.table.seeds, replay(9, x_all)[0].seeds)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_overlapping_restores_keep_the_fence_up_until_the_last(monkeypatch):
    from test_service import spec

    service = CouplingService(spec())
    gates = [threading.Event(), threading.Event()]
    real = service._restart_at
    calls = []

    def held(step, table, creation):
        calls.append(step)
        gates[len(calls) - 1].wait(10)
        return real(step, table, creation)

    monkeypatch.setattr(service, "_restart_at", held)
    rows, x = part(0, 0)

    async def main():
        first = asyncio.create_task(service.restore(0))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(service.restore(0))
        await asyncio.sleep(0.05)
        gates[0].set()
        await first
        assert service.restoring_to == 0  # the second restore is still under way
        with pytest.raises(RuntimeError, match="being restored"):
            await service.submit(0, 0, rows, x)
        gates[1].set()
        await second
        assert service.restoring_to is None

    asyncio.run(main())
    assert calls == [0, 0]


def test_steps_wait_longer_for_a_rank_that_said_it_is_busy():
    """Rank 0 writing sample images past coupling.timeout_s does not time out the other
    ranks' steps, as long as it said so; without a word they time out."""
    from test_service import spec

    async def late_rank_0(service, declare):
        if declare:
            service.busy(0, 30)
        waiting = asyncio.create_task(service.submit(0, 1, *part(0, 1)))
        await asyncio.sleep(1.5)  # longer than timeout_s
        service.busy(0, 0)
        await service.submit(0, 0, *part(0, 0))
        return await waiting

    got = asyncio.run(late_rank_0(CouplingService(spec(timeout_s=0.5)), True))
    assert got.shape == (len(part(0, 1)[1]),)  # the seeds of its rows
    with pytest.raises(TimeoutError, match=r"step 0 still lacks rank\(s\) 0"):
        asyncio.run(late_rank_0(CouplingService(spec(timeout_s=0.5)), False))


def test_a_new_service_removes_the_half_written_files_of_a_dead_one(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    torn = [tmp_path / ".journal.bin.tmp-123-abcd", tmp_path / ".table-snapshot.parquet.tmp-9"]
    for path in torn:
        path.write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("mine")
    CouplingService(durable(tmp_path))
    assert not any(p.exists() for p in torn) and (tmp_path / "notes.txt").exists()
