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
