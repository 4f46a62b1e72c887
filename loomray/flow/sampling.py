"""ODE samplers for the learned flow, all with one signature.

A velocity field ``v(x, t)`` (``t`` a tensor of shape [B]) moves noise at t=0
to data at t=1. Every fixed-grid solver is ``solver(v, x0, steps) -> x1`` on a
uniform grid; samplers are named ``<solver>-<steps>`` (``midpoint-6`` is 6 steps
= 12 function evaluations) or ``dopri5`` (adaptive, tolerances as options), so a
sweep can swap them by name::

    result = sample(model_velocity, z, "midpoint-2")
    result.x, result.nfe   # samples, and the evaluations actually spent
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _t(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def euler(v: Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
    """First order, 1 evaluation per step."""
    h = 1.0 / steps
    for i in range(steps):
        x = x + h * v(x, _t(x, i * h))
    return x


def midpoint(v: Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Explicit midpoint (the paper's sampler), second order, 2 evaluations per step."""
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        x_mid = x + 0.5 * h * v(x, _t(x, t))
        x = x + h * v(x_mid, _t(x, t + 0.5 * h))
    return x


def heun(v: Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Heun's method (explicit trapezoid), second order, 2 evaluations per step."""
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = v(x, _t(x, t))
        k2 = v(x + h * k1, _t(x, t + h))
        x = x + 0.5 * h * (k1 + k2)
    return x


def rk4(v: Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Classic Runge-Kutta, fourth order, 4 evaluations per step."""
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = v(x, _t(x, t))
        k2 = v(x + 0.5 * h * k1, _t(x, t + 0.5 * h))
        k3 = v(x + 0.5 * h * k2, _t(x, t + 0.5 * h))
        k4 = v(x + h * k3, _t(x, t + h))
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


# Dormand-Prince 5(4) tableau.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dopri5(
    v: Velocity,
    x: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float = 0.05,
    max_steps: int = 10_000,
) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) with FSAL; one error norm for the whole batch."""
    t, h = 0.0, first_step
    k1 = v(x, _t(x, t))
    for _ in range(max_steps):
        if t >= 1.0 - 1e-12:
            return x
        h = min(h, 1.0 - t)
        ks = [k1]
        for stage in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_DP_A[stage], ks, strict=False))
            ks.append(v(xi, _t(x, t + _DP_C[stage] * h)))
        x5 = x + h * sum(b * k for b, k in zip(_DP_B5, ks, strict=True))
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_DP_B5, _DP_B4, ks, strict=True))
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        ratio = float(torch.sqrt(torch.mean((err / scale) ** 2)))
        if ratio <= 1.0:
            t, x, k1 = t + h, x5, ks[-1]  # FSAL: the 7th stage is the next first
        factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** (-1 / 5)))
        h = h * factor
    raise RuntimeError(f"dopri5 did not reach t=1 in {max_steps} steps")


FIXED_SOLVERS: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "euler": (euler, 1),
    "midpoint": (midpoint, 2),
    "heun": (heun, 2),
    "rk4": (rk4, 4),
}
_NAME = re.compile(r"^([a-z0-9]+)-(\d+)$")


@dataclass(frozen=True)
class Method:
    solver: str
    steps: int | None

    @property
    def name(self) -> str:
        return self.solver if self.steps is None else f"{self.solver}-{self.steps}"

    @property
    def nominal_nfe(self) -> int | None:
        """Evaluations a fixed-grid method spends; None for adaptive ones."""
        return None if self.steps is None else FIXED_SOLVERS[self.solver][1] * self.steps


def parse_method(name: str) -> Method:
    """``"midpoint-2"`` -> Method("midpoint", 2); ``"dopri5"`` -> Method("dopri5", None)."""
    name = name.strip().lower()
    if name == "dopri5":
        return Method("dopri5", None)
    m = _NAME.match(name)
    if m and m.group(1) in FIXED_SOLVERS and int(m.group(2)) >= 1:
        return Method(m.group(1), int(m.group(2)))
    raise ValueError(
        f"unknown sampler {name!r}; use {', '.join(f'{s}-N' for s in FIXED_SOLVERS)} "
        "(N >= 1 steps) or dopri5"
    )


@dataclass
class SampleResult:
    x: torch.Tensor
    nfe: int
    method: str


def sample(
    v: Velocity, z: torch.Tensor, method: str, rtol: float = 1e-5, atol: float = 1e-5
) -> SampleResult:
    """Integrate ``v`` from noise ``z`` at t=0 to t=1; counts the evaluations spent."""
    m = parse_method(method)
    calls = 0

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        # The solver's state and sums stay in the samples' precision (float32) even
        # when the network runs under bf16 autocast: dopri5's error control needs it.
        return v(x, t).to(x.dtype)

    with torch.no_grad():
        if m.steps is None:
            x = dopri5(counted, z, rtol=rtol, atol=atol)
        else:
            x = FIXED_SOLVERS[m.solver][0](counted, z, m.steps)
    return SampleResult(x, calls, m.name)
