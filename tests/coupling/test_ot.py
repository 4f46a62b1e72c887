import itertools

import numpy as np
import pytest

from loomray.coupling import cost_matrix, pair_costs, solve_assignment


def brute_force(x, z, cost):
    c = cost_matrix(x, z, cost)
    best = min(itertools.permutations(range(len(x))), key=lambda p: c[np.arange(len(x)), p].sum())
    return np.array(best), c


@pytest.mark.parametrize("cost", ["l2", "sql2"])
@pytest.mark.parametrize("b", [1, 2, 3, 5, 7])
def test_equals_brute_force(b, cost):
    rng = np.random.default_rng(b)
    for _ in range(5):
        x = rng.standard_normal((b, 3, 2)).astype(np.float32)
        z = rng.standard_normal((b, 3, 2)).astype(np.float32)
        perm = solve_assignment(x, z, cost)
        best, c = brute_force(x, z, cost)
        assert sorted(perm) == list(range(b))
        idx = np.arange(b)
        assert c[idx, perm].sum() == pytest.approx(c[idx, best].sum(), rel=1e-9)
        # the returned cost is what pairing x[i] with z[perm[i]] really costs
        assert pair_costs(x, z[perm], cost).sum() == pytest.approx(c[idx, perm].sum(), rel=1e-5)


def test_direction_noise_side():
    """z[perm] must align with x: a wrong-side permutation (torchcfm #178) fails here."""
    rng = np.random.default_rng(0)
    x = np.arange(6, dtype=np.float32)[:, None] * 10.0  # far apart points on a line
    shuffle = np.array([3, 0, 5, 1, 4, 2])
    z = x[shuffle] + rng.normal(0, 0.1, size=(6, 1)).astype(np.float32)
    perm = solve_assignment(x, z)
    assert np.array_equal(z[perm].round(), x.round())
    inverse = np.argsort(perm)
    assert not np.array_equal(z[inverse].round(), x.round())  # the other side is wrong


def test_cost_switch_changes_the_plan():
    """l2 and squared l2 disagree on some batches; each answer is optimal for its cost."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = rng.standard_normal((4, 2)).astype(np.float32)
        z = rng.standard_normal((4, 2)).astype(np.float32)
        p_l2, p_sq = solve_assignment(x, z, "l2"), solve_assignment(x, z, "sql2")
        if not np.array_equal(p_l2, p_sq):
            break
    else:
        pytest.fail("l2 and sql2 gave the same plan on 200 random batches")
    idx = np.arange(4)
    c_l2, c_sq = cost_matrix(x, z, "l2"), cost_matrix(x, z, "sql2")
    assert c_l2[idx, p_l2].sum() < c_l2[idx, p_sq].sum()
    assert c_sq[idx, p_sq].sum() < c_sq[idx, p_l2].sum()


def test_errors():
    with pytest.raises(ValueError, match="batch size"):
        solve_assignment(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown cost"):
        solve_assignment(np.zeros((2, 3)), np.zeros((2, 3)), cost="l1")
    with pytest.raises(ValueError, match="size per sample"):
        solve_assignment(np.zeros((2, 3)), np.zeros((2, 4)))


def _matrices():
    """Random, tie-heavy and LOOM-like cost matrices."""
    rng = np.random.default_rng(3)
    for b in (1, 2, 16, 64, 200):
        yield rng.random((b, b))
        yield rng.integers(0, 3, (b, b)).astype(np.float64)  # ties everywhere
        yield np.ones((b, b))  # every permutation is optimal
        x = rng.standard_normal((b, 48)).astype(np.float32)
        yield cost_matrix(x, rng.standard_normal((b, 48)).astype(np.float32))
        # a settled table: each row's own noise is nearly its best, duplicated rows tie
        x[b // 2 :] = x[: b - b // 2]
        yield cost_matrix(x, x + 0.01 * rng.standard_normal(x.shape).astype(np.float32))


def test_lapjv_finds_scipys_optimal_cost_ties_included():
    from loomray.coupling import assignment_from_cost

    for c in _matrices():
        fast, reference = assignment_from_cost(c, "lapjv"), assignment_from_cost(c, "scipy")
        assert fast.dtype == np.int64 and sorted(fast) == list(range(len(c)))
        idx = np.arange(len(c))
        assert c[idx, fast].sum() == pytest.approx(c[idx, reference].sum(), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="unknown solver"):
        assignment_from_cost(np.ones((2, 2)), "hungarian")


def test_loomrays_lapjv_returns_laps_very_permutation():
    """The GIL-free copy follows lap's algorithm to the tie: a run does not depend on
    which of the two solved it."""
    from loomray.coupling import assignment_from_cost

    rng = np.random.default_rng(11)
    extra = [rng.integers(0, 4, (n, n)) * 0.25 for n in rng.integers(1, 60, 300)]
    for c in [*_matrices(), *extra]:
        assert np.array_equal(assignment_from_cost(c, "lapjv"), assignment_from_cost(c, "lap"))


def test_lapjv_lets_other_threads_run_and_refuses_what_it_cannot_solve():
    import threading
    import time

    from loomray.coupling.jv import lapjv

    c = np.random.default_rng(0).random((700, 700))
    lapjv(c[:3, :3])  # compiled
    counts, stop = [], threading.Event()

    def count():
        n = 0
        while not stop.is_set():
            n += 1
        counts.append(n)

    def rate(solve) -> float:  # the other thread's loop iterations per second
        stop.clear()
        thread = threading.Thread(target=count)
        thread.start()
        t0 = time.perf_counter()
        solve()
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        return counts.pop() / seconds

    sleeping = rate(lambda: time.sleep(0.05))
    assert rate(lambda: [lapjv(c) for _ in range(3)]) > sleeping / 4
    for bad in (np.ones((2, 3)), np.array([[np.inf, 1.0], [1.0, 1.0]]), np.full((2, 2), 2e6)):
        with pytest.raises(ValueError):
            lapjv(bad)


def test_threads_give_the_same_bits():
    from loomray.coupling import noise_from_seeds

    seeds = np.arange(300, dtype=np.int64) * 7919
    one = noise_from_seeds(seeds, (3, 8, 8))
    assert np.array_equal(noise_from_seeds(seeds, (3, 8, 8), threads=3), one)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((333, 3072)).astype(np.float32)
    z = rng.standard_normal((333, 3072)).astype(np.float32)
    for cost in ("l2", "sql2"):
        # the unfused numpy expression the fused, blocked kernel replaces
        dot = (x @ z.T).astype(np.float64)
        xx = np.einsum("ij,ij->i", x, x).astype(np.float64)
        zz = np.einsum("ij,ij->i", z, z).astype(np.float64)
        sq = np.maximum(xx[:, None] + zz[None, :] - 2.0 * dot, 0.0)
        want = np.sqrt(sq) if cost == "l2" else sq
        for threads in (1, 2, 3):
            assert np.array_equal(cost_matrix(x, z, cost, threads=threads), want), threads
