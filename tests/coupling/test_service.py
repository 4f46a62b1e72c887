"""The coupling service's logic, driven directly with asyncio (no Ray needed)."""

import asyncio

import numpy as np
import pytest

from loomray.coupling import AssignmentTable, LoomCoupling, step_rng
from loomray.coupling.service import CouplingService, ServiceSpec

ROWS, DIM, WORLD, PER_RANK = 96, 5, 2, 8


def data():
    return np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)


def rows_of(step):
    return np.random.default_rng([7, step]).permutation(ROWS)[: WORLD * PER_RANK]


def spec(**kw):
    base = dict(kind="loom", rows=ROWS, caches=3, cost="l2", seed=11, world=WORLD, timeout_s=5)
    base.update(kw)
    return ServiceSpec(**base)


def noise(seeds, x):
    """The noise a rank regenerates from the service's answer (the seeds of its rows)."""
    from loomray.coupling import noise_from_seeds

    assert seeds.dtype == np.int64 and seeds.shape == (len(x),)
    return noise_from_seeds(seeds, np.asarray(x).shape[1:])


async def run_ranks(service, steps, x_all, start=0):
    """Each rank submits step k+1 before awaiting step k, like the workers; returns the
    noise each rank regenerates from the answers."""

    async def rank(r):
        out = {}
        local = {s: rows_of(s)[r * PER_RANK : (r + 1) * PER_RANK] for s in range(start, steps)}
        pending = {
            start: asyncio.create_task(service.submit(start, r, local[start], x_all[local[start]]))
        }
        for s in range(start, steps):
            if s + 1 < steps:
                pending[s + 1] = asyncio.create_task(
                    service.submit(s + 1, r, local[s + 1], x_all[local[s + 1]])
                )
            out[s] = noise(await pending.pop(s), x_all[local[s]])
            await asyncio.sleep(0.001 * r)  # ranks run at different speeds
        return out

    return await asyncio.gather(*(rank(r) for r in range(WORLD)))


def replay(steps, x_all, seed=11):
    table = AssignmentTable.create(ROWS, 3, seed=seed)
    coupling = LoomCoupling(table)
    noises = {}
    for s in range(steps):
        rows = rows_of(s)
        noises[s], _ = coupling.step(rows, x_all[rows], step_rng(seed, s))
    return table, noises


@pytest.mark.parametrize("threads", [1, 2])
def test_service_equals_the_sequential_algorithm(threads):
    x_all = data()
    service = CouplingService(spec(threads=threads))
    assert service.coupling.threads == threads
    outs = asyncio.run(run_ranks(service, 40, x_all))
    table, noises = replay(40, x_all)
    assert np.array_equal(service.table.seeds, table.seeds)
    for s in range(40):
        assert np.array_equal(np.concatenate([outs[0][s], outs[1][s]]), noises[s])
    stats = service.stats()
    assert stats["solves"] == 40 and stats["step"] == 39 and stats["cost_post"] <= stats["cost_pre"]


def test_table_at_undoes_prefetched_solves():
    x_all = data()
    service = CouplingService(spec())
    asyncio.run(run_ranks(service, 10, x_all))
    for k in (7, 8, 10):
        expected, _ = replay(k, x_all)
        got = asyncio.run(service.table_at(k))
        assert np.array_equal(got["seeds"], expected.seeds)
    service.spec.timeout_s = 0.05
    with pytest.raises(ValueError, match="not available"):
        asyncio.run(service.table_at(11))


def test_restore_continues_exactly_from_a_checkpointed_table():
    x_all = data()
    service = CouplingService(spec())
    asyncio.run(run_ranks(service, 12, x_all))
    at6 = asyncio.run(service.table_at(6))

    async def resumed():
        fresh = CouplingService(spec())
        await fresh.restore(6, at6["seeds"], at6["fingerprint"])
        await run_ranks(fresh, 12, x_all, start=6)
        return fresh

    fresh = asyncio.run(resumed())
    assert np.array_equal(fresh.table.seeds, service.table.seeds)
    assert fresh.table.is_permutation_of_origin()


def test_a_checkpoint_without_a_table_restores_to_a_fresh_one():
    x_all = data()
    service = CouplingService(spec())
    with pytest.raises(ValueError, match="restoring to step 9 needs that step's table"):
        asyncio.run(service.restore(9))
    asyncio.run(service.restore(9, fresh=True))  # an imported release: LOOM starts over
    asyncio.run(run_ranks(service, 12, x_all, start=9))
    assert service.next_step == 12 and service.table.is_permutation_of_origin()


def test_a_rank_that_never_submits_times_out_with_its_number():
    service = CouplingService(spec(timeout_s=0.3))
    x = np.zeros((PER_RANK, DIM), np.float32)
    with pytest.raises(TimeoutError, match=r"step 0 still lacks rank\(s\) 1 after 0.3 s"):
        asyncio.run(service.submit(0, 0, np.arange(PER_RANK), x))


def test_the_phase_says_what_the_run_is_doing():
    x_all = data()
    service = CouplingService(spec())
    assert service.stats()["phase"] == "starting the workers" and service.stats()["step"] == -1
    asyncio.run(service.restore(0))
    assert service.stats()["phase"] == "restored to step 0, loading the first batches"
    asyncio.run(run_ranks(service, 2, x_all))
    assert service.stats()["phase"] == "training" and service.stats()["step"] == 1


def test_bad_submissions():
    service = CouplingService(spec())
    x = np.zeros((2, DIM), np.float32)
    with pytest.raises(ValueError, match="outside a world"):
        asyncio.run(service.submit(0, 5, np.arange(2), x))


@pytest.mark.parametrize("kind", ["independent", "minibatch-ot"])
def test_baselines_through_the_same_service(kind):
    x_all = data()
    service = CouplingService(spec(kind=kind))
    outs = asyncio.run(run_ranks(service, 5, x_all))
    assert service.table is None and asyncio.run(service.table_at(3)) is None
    assert outs[0][4].shape == (PER_RANK, DIM)


def epoch_rows(step):
    """Rows as training draws them: one permutation per epoch, consecutive batches of it
    (so consecutive steps of an epoch share no row)."""
    per_epoch = ROWS // (WORLD * PER_RANK)
    epoch, i = divmod(step, per_epoch)
    return np.random.default_rng([7, epoch]).permutation(ROWS)[i * 16 : (i + 1) * 16]


@pytest.mark.parametrize("ratio", [0.0, 1e9], ids=["noise-and-costs", "noise"])
def test_steps_prepared_ahead_change_nothing(monkeypatch, ratio):
    """Within an epoch the next step's noise (and costs) are prepared while this one is
    assigned; the tables and answers are the sequential algorithm's."""
    monkeypatch.setitem(globals(), "rows_of", epoch_rows)
    monkeypatch.setattr("loomray.coupling.lookahead.RATIO", ratio)
    x_all = data()
    service = CouplingService(spec(threads=2))
    outs = asyncio.run(run_ranks(service, 30, x_all))
    table, noises = replay(30, x_all)
    assert np.array_equal(service.table.seeds, table.seeds)
    for s in range(30):
        assert np.array_equal(np.concatenate([outs[0][s], outs[1][s]]), noises[s])
    # every step but an epoch's first (rows shared with the step before) could be
    assert 0 < service.stats()["prepared_ahead"] <= 30 - 30 // 6


def test_a_prepared_step_whose_slots_changed_is_computed_again():
    """What was prepared is used only while its slots hold the seeds it was made from."""
    x_all = data()
    coupling, reference = (LoomCoupling(AssignmentTable.create(ROWS, 1, seed=3)) for _ in "ab")
    a, b = np.arange(0, 16), np.arange(8, 24)  # b shares rows 8..15 with a
    c = np.arange(40, 56)  # c shares none
    early_b = coupling.prepare(b, x_all[b], step_rng(0, 1))
    early_c = coupling.prepare(c, x_all[c], step_rng(0, 2))
    coupling.solve(a, x_all[a], step_rng(0, 0))
    stale = coupling.solve(b, x_all[b], step_rng(0, 1), early_b)
    fresh = coupling.solve(c, x_all[c], step_rng(0, 2), early_c)
    assert not stale.ahead and fresh.ahead
    for s, rows in enumerate((a, b, c)):
        reference.solve(rows, x_all[rows], step_rng(0, s))
    assert np.array_equal(coupling.table.seeds, reference.table.seeds)


def test_steps_are_prepared_ahead_only_with_cores_to_spare_and_time_to_gain():
    from loomray.coupling.couplings import CouplingStats
    from loomray.coupling.lookahead import Lookahead

    x_all = data()
    coupling = LoomCoupling(AssignmentTable.create(ROWS, 1, seed=3))
    a, b = np.arange(0, 16), np.arange(40, 56)
    assert not Lookahead(1).start(coupling, 1, b, x_all[b], step_rng(0, 1), a)
    two = Lookahead(2)
    assert not two.start(coupling, 1, a, x_all[a], step_rng(0, 1), a)  # shares rows
    two.observe(CouplingStats(0, 0, 0, a, {"noise": 1.0, "cost": 3.0, "assign": 1.0}))
    assert two.start(coupling, 1, b, x_all[b], step_rng(0, 1), a)
    assert two.take(1).cost is None  # the assignment is short: the noise alone
    two.observe(CouplingStats(0, 0, 0, a, {"noise": 1.0, "cost": 3.0, "assign": 2.0}))
    assert two.start(coupling, 1, b, x_all[b], step_rng(0, 1), a)
    assert two.take(1).cost is not None and two.take(1) is None
    stats = coupling.solve(a, x_all[a], step_rng(0, 0))
    assert not stats.ahead
