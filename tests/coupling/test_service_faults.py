"""The coupling service under its own death, resubmits and racing readers (no Ray).

A "restarted actor" is a new ``CouplingService`` built on the same snapshot dir
while ``reconstructed()`` says True, which is what Ray's restart looks like
from inside the actor.
"""

import asyncio
import threading

import numpy as np
import pytest
from test_service import PER_RANK, WORLD, data, noise, replay, rows_of, run_ranks, spec

from loomray.coupling import AssignmentTable
from loomray.coupling.recovery import JOURNAL_NAME, SNAPSHOT_NAME
from loomray.coupling.service import CouplingService, LostStateError
from loomray.coupling.service import actor as service_module


def durable(tmp_path, **kw):
    return spec(snapshot_dir=str(tmp_path), run_id="run-a", **kw)


def restarted(monkeypatch, the_spec):
    monkeypatch.setattr(service_module, "reconstructed", lambda: True)
    service = CouplingService(the_spec)
    monkeypatch.setattr(service_module, "reconstructed", lambda: False)
    return service


def part(step, rank):
    r = rows_of(step)[rank * PER_RANK : (rank + 1) * PER_RANK]
    return r, data()[r]


def hold_a_solve(monkeypatch, service, step):
    """Hold the solve of ``step`` right after it has written the table: ``written`` is
    set then, and the solver thread waits until ``release`` is set."""
    written, release = threading.Event(), threading.Event()
    original = service.coupling._solve  # what applies a step to the table

    def held(prepared, assigning=None):
        out = original(prepared, assigning)
        if service.table.step == step + 1:  # the step has just been applied
            written.set()
            release.wait(10)
        return out

    monkeypatch.setattr(service.coupling, "_solve", held)
    return written, release


def merged(outs, steps):
    return {s: np.concatenate([outs[r][s] for r in range(WORLD)]) for s in steps}


def pairs_folder(tmp_path):
    """A folder of reflow pairs with one stored seed per row of ``data()``."""
    from loomray.data.pairs import PairsManifest, open_folder, write_shard

    rows = len(data())
    manifest = PairsManifest("src", "f" * 16, 0, "euler-1", rows, rows, rows, 0, (5,))
    folder = tmp_path / "pairs"
    open_folder(folder, manifest)
    seeds = 10**6 + np.arange(rows)[::-1]
    write_shard(folder, manifest, 0, seeds, np.zeros((rows, 5), np.uint8), 1.0)
    return str(folder)


@pytest.mark.parametrize("kind", ["loom", "minibatch-ot", "independent", "pairs"])
def test_a_restarted_service_is_exactly_where_the_dead_one_was(tmp_path, monkeypatch, kind):
    x_all = data()
    pairs = {"pairs": pairs_folder(tmp_path)} if kind == "pairs" else {}
    uninterrupted = CouplingService(spec(kind=kind, **pairs))
    reference = merged(asyncio.run(run_ranks(uninterrupted, 30, x_all)), range(30))
    if kind == "pairs":  # every row keeps the noise of its stored seed
        from loomray.coupling import noise_from_seeds

        want = noise_from_seeds(10**6 + np.arange(len(x_all))[::-1][rows_of(3)], (5,))
        assert np.array_equal(reference[3], want)

    the_spec = durable(tmp_path / "service", kind=kind, snapshot_every=5, **pairs)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(0))
    before = merged(asyncio.run(run_ranks(dead, 18, x_all)), range(18))
    # steps 15..17 are journaled after the snapshot of step 15, 10..14 are its tail
    alive = restarted(monkeypatch, the_spec)
    assert alive.next_step == 18 and alive.restarts == 1
    if kind == "loom":
        assert np.array_equal(alive.table.seeds, dead.table.seeds)
        assert (tmp_path / "service" / SNAPSHOT_NAME).is_file()
    for step in (9, 14, 17):  # resubmits of answered steps get the same noise
        rows, x = part(step, 1)
        got = noise(asyncio.run(alive.submit(step, 1, rows, x)), x)
        assert np.array_equal(got, reference[step][PER_RANK:])
    after = merged(asyncio.run(run_ranks(alive, 30, x_all, start=18)), range(18, 30))
    for step in range(30):
        assert np.array_equal({**before, **after}[step], reference[step]), step
    if kind == "loom":
        table, _ = replay(30, x_all)
        assert np.array_equal(alive.table.seeds, table.seeds)


def test_a_restart_with_no_snapshot_rejoins_at_the_workers_step(tmp_path, monkeypatch):
    x_all = data()
    the_spec = durable(tmp_path, timeout_s=30)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(0))  # a new run: its base is the table's creation
    asyncio.run(run_ranks(dead, 12, x_all))
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    alive = restarted(monkeypatch, the_spec)
    assert alive.next_step == 12
    asyncio.run(run_ranks(alive, 20, x_all, start=12))  # times out if it waits for step 0
    table, _ = replay(20, x_all)
    assert np.array_equal(alive.table.seeds, table.seeds)


def test_a_restart_after_a_checkpoint_restore_rebuilds_from_that_table(tmp_path, monkeypatch):
    x_all = data()
    at6, _ = replay(6, x_all)
    the_spec = durable(tmp_path)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(6, at6.seeds, at6.fingerprint))
    asyncio.run(run_ranks(dead, 11, x_all, start=6))
    alive = restarted(monkeypatch, the_spec)
    want, _ = replay(11, x_all)
    assert alive.next_step == 11 and np.array_equal(alive.table.seeds, want.seeds)
    got = asyncio.run(alive.table_at(8))  # a checkpoint in flight still finds its table
    assert np.array_equal(got["seeds"], replay(8, x_all)[0].seeds)


def test_a_torn_last_record_is_a_step_never_answered_and_is_solved_again(tmp_path, monkeypatch):
    x_all = data()
    the_spec = durable(tmp_path)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(0))
    outs = merged(asyncio.run(run_ranks(dead, 8, x_all)), range(8))
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(journal.read_bytes()[:-10])
    alive = restarted(monkeypatch, the_spec)
    assert alive.next_step == 7
    again = merged(asyncio.run(run_ranks(alive, 8, x_all, start=7)), [7])
    assert np.array_equal(again[7], outs[7])
    assert np.array_equal(alive.table.seeds, dead.table.seeds)


def test_files_of_another_run_are_refused(tmp_path, monkeypatch):
    x_all = data()
    the_spec = durable(tmp_path, snapshot_every=4)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(0))
    asyncio.run(run_ranks(dead, 6, x_all))
    other = durable(tmp_path, snapshot_every=4)
    other.run_id = "run-b"
    rows, x = part(6, 0)

    def refused(service, match):
        # never loaded: the service waits for a restore and says why to every rank
        assert service.next_step is None
        with pytest.raises(LostStateError, match=match):
            asyncio.run(service.submit(6, 0, rows, x))

    refused(restarted(monkeypatch, other), r"snapshot .* belongs to another run \(run 'run-a'")
    (tmp_path / SNAPSHOT_NAME).unlink()
    refused(restarted(monkeypatch, other), r"journal .* belongs to another run \(run 'run-a'")
    refused(restarted(monkeypatch, durable(tmp_path, seed=12)), "belongs to another run")
    (tmp_path / JOURNAL_NAME).unlink()  # lost files: not a fresh start at step 0
    refused(restarted(monkeypatch, the_spec), "do not hold a restorable state")
    foreign = AssignmentTable.create(96, 3, seed=99)
    with pytest.raises(ValueError, match="other seeds than this run's table"):
        asyncio.run(dead.restore(4, foreign.seeds, foreign.fingerprint))


def test_an_unfinished_restore_leaves_a_service_that_waits_to_be_restored(tmp_path, monkeypatch):
    x_all = data()
    the_spec = durable(tmp_path, snapshot_every=4)
    dead = CouplingService(the_spec)
    asyncio.run(dead.restore(0))
    asyncio.run(run_ranks(dead, 6, x_all))
    # the restore to step 2 wrote its snapshot and died before its journal
    at2, _ = replay(2, x_all)
    table = AssignmentTable(at2.seeds, 2, at2.fingerprint, {"run": "run-a", "lineage": "new"})
    table.save(tmp_path / SNAPSHOT_NAME)
    alive = restarted(monkeypatch, the_spec)
    assert alive.next_step is None
    rows, x = part(6, 0)
    with pytest.raises(LostStateError, match="restart from the last checkpoint"):
        asyncio.run(alive.submit(6, 0, rows, x))
    asyncio.run(alive.restore(2, at2.seeds, at2.fingerprint))  # the retried restore
    asyncio.run(run_ranks(alive, 9, x_all, start=2))
    assert np.array_equal(alive.table.seeds, replay(9, x_all)[0].seeds)


def test_duplicate_submits_get_the_same_answer():
    x_all = data()
    service = CouplingService(spec())

    async def scenario():
        r0, x0 = part(0, 0)
        r1, x1 = part(0, 1)
        first = asyncio.create_task(service.submit(0, 0, r0, x0))
        again = asyncio.create_task(service.submit(0, 0, r0, x0))  # resent while pending
        await asyncio.sleep(0.01)
        other = asyncio.create_task(service.submit(0, 1, r1, x1))
        a, b, c = await asyncio.gather(first, again, other)
        late = await service.submit(0, 0, r0, x0)  # resent after it was answered
        return noise(a, x0), noise(b, x0), noise(c, x1), noise(late, x0)

    a, b, c, late = asyncio.run(scenario())
    _, noises = replay(1, x_all)
    assert np.array_equal(a, noises[0][:PER_RANK]) and np.array_equal(c, noises[0][PER_RANK:])
    assert np.array_equal(a, b) and np.array_equal(a, late)
    assert not service.steps  # nothing left behind
    r1, x1 = part(0, 1)
    with pytest.raises(ValueError, match="rank 0 resubmitted step 0 with other rows"):
        asyncio.run(service.submit(0, 0, r1, x1))


def test_table_at_never_copies_a_solve_in_progress(monkeypatch):
    """Force the interleaving: the solve of step 5 has written the table and is held
    before it returns; table_at(5) asked meanwhile must still give step 5's table."""
    x_all = data()
    service = CouplingService(spec())
    written, release = hold_a_solve(monkeypatch, service, step=5)

    async def scenario():
        ranks = asyncio.create_task(run_ranks(service, 6, x_all))
        while not written.is_set():
            await asyncio.sleep(0.001)
        asked = asyncio.create_task(service.table_at(5))
        await asyncio.sleep(0.05)  # a racing copy would be taken now
        release.set()
        got = await asked
        await ranks
        return got

    got = asyncio.run(scenario())
    want, _ = replay(5, x_all)
    assert np.array_equal(got["seeds"], want.seeds)
    assert AssignmentTable(got["seeds"]).is_permutation_of_origin()


def test_a_submit_during_a_restore_is_refused(monkeypatch):
    """A late submit of the old worker group, arriving while a restore waits for the
    solve in progress, is refused instead of being solved against the new table."""
    x_all = data()
    service = CouplingService(spec())
    written, release = hold_a_solve(monkeypatch, service, step=0)

    async def scenario():
        ranks = asyncio.create_task(run_ranks(service, 3, x_all))
        while not written.is_set():
            await asyncio.sleep(0.001)
        restoring = asyncio.create_task(service.restore(0))
        await asyncio.sleep(0.01)
        rows, x = part(1, 1)
        with pytest.raises(RuntimeError, match="being restored to step 0"):
            await service.submit(1, 1, rows, x)
        release.set()
        await restoring
        await asyncio.gather(ranks, return_exceptions=True)

    asyncio.run(scenario())
    assert service.next_step == 0 and not service.steps and not service.recent
    assert np.array_equal(service.table.seeds, replay(0, x_all)[0].seeds)
