import math

import pytest
import torch

from loomray.flow.sampling import FIXED_SOLVERS, parse_method, sample

SOLVERS = [*FIXED_SOLVERS, "dopri5"]
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def name(solver, steps):
    return solver if solver == "dopri5" else f"{solver}-{steps}"


@pytest.mark.parametrize("solver", SOLVERS)
def test_constant_field_is_exact(solver):
    c = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.float64)
    z = torch.zeros(2, 2, dtype=torch.float64)
    result = sample(lambda x, t: c.expand_as(x), z, name(solver, 1))
    assert torch.allclose(result.x, c, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_dependent_field_3t2(solver):
    # dx/dt = 3 t^2 -> x(1) = x(0) + 1; exact for rk4/dopri5, close for the rest
    z = torch.full((3, 1), 2.0, dtype=torch.float64)
    result = sample(lambda x, t: 3 * t[:, None] ** 2 * torch.ones_like(x), z, name(solver, 64))
    tol = {"euler": 0.03, "midpoint": 1e-4, "heun": 1e-3}.get(solver, 1e-9)
    assert torch.allclose(result.x, z + 1, atol=tol)


@pytest.mark.parametrize("solver", list(FIXED_SOLVERS))
def test_order_of_accuracy_on_a_nonlinear_field(solver):
    # dx/dt = -x^2, x(0) = 1 -> x(1) = 1/2
    def err(steps):
        z = torch.ones(1, 1, dtype=torch.float64)
        return abs(float(sample(lambda x, t: -(x**2), z, f"{solver}-{steps}").x) - 0.5)

    observed = math.log2(err(8) / err(16))
    assert observed == pytest.approx(ORDER[solver], abs=0.3)


def test_dopri5_tolerance_and_nfe():
    z = torch.ones(1, 1, dtype=torch.float64)
    loose = sample(lambda x, t: -(x**2), z, "dopri5", rtol=1e-3, atol=1e-3)
    tight = sample(lambda x, t: -(x**2), z, "dopri5", rtol=1e-10, atol=1e-10)
    assert abs(float(tight.x) - 0.5) < 1e-9
    assert tight.nfe > loose.nfe > 1


@pytest.mark.parametrize(
    "method, nfe", [("euler-3", 3), ("midpoint-6", 12), ("heun-2", 4), ("rk4-1", 4)]
)
def test_nfe_is_counted(method, nfe):
    z = torch.zeros(4, 2)
    result = sample(lambda x, t: torch.ones_like(x), z, method)
    assert result.nfe == nfe == parse_method(method).nominal_nfe


@pytest.mark.parametrize("bad", ["midpoint", "midpoint-0", "euler-x", "ddim-4", ""])
def test_unknown_methods(bad):
    with pytest.raises(ValueError, match="unknown sampler"):
        parse_method(bad)
