"""Conditional flow matching: the loss, the EMA and the learning-rate schedule.

Convention: t=0 is noise, t=1 is data. For a pair (x, z) the probability path
is ``x_t = (1 - t) z + t x + sigma * eps`` and the regression target is the
straight-line velocity ``x - z``::

    loss = cfm_loss(model, x, z, sigma=1e-7)   # E_t || v(x_t, t) - (x - z) ||^2
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def cfm_loss(
    model: nn.Module,
    x: torch.Tensor,
    z: torch.Tensor,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE between v(x_t, t) and x - z, t ~ U[0, 1] per sample."""
    t = torch.rand(x.shape[0], device=x.device, generator=generator)
    tb = t.view(-1, *([1] * (x.dim() - 1)))
    xt = (1 - tb) * z + tb * x
    if sigma > 0:
        xt = xt + sigma * torch.randn(x.shape, device=x.device, generator=generator)
    v = model(xt, t)
    return torch.mean((v.float() - (x - z).float()) ** 2)


def ema_decay(decay: float, step: int | None, warmup: bool = True) -> float:
    """The EMA decay at update ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    With the warm-up the average spans about the last tenth of the steps taken
    until it reaches ``decay`` (step 9,000 for 0.999, 90,000 for 0.9999), so a
    run of any length has a usable EMA model; a run far longer than that ends
    as with a fixed decay (what the first steps contribute has decayed away).
    The same rule as the TensorFlow EMA with ``num_updates`` and latent
    diffusion's ``LitEma``."""
    if not warmup or step is None:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA(nn.Module):
    """Exponential moving average of a model's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs: tuple = ()
        """(model, its parameters, ours, the modules that hold buffers): walking a
        UNet's modules for them costs the host more than the update's kernel."""

    def _pairs_of(self, model: nn.Module) -> tuple:
        # Rebuilt for another model, or one whose parameters were replaced (not copied
        # into, as load_state_dict does): the first parameter tells, walking one module.
        if (
            not self._pairs
            or self._pairs[0] is not model
            or next(iter(self._pairs[1]), None) is not next(model.parameters(), None)
        ):
            ema, new = list(self.model.parameters()), list(model.parameters())
            if len(ema) != len(new):
                raise ValueError(f"EMA holds {len(ema)} parameters, the model {len(new)}")
            holders = [
                (mine, theirs, list(theirs._buffers))
                for mine, theirs in zip(self.model.modules(), model.modules(), strict=True)
                if theirs._buffers
            ]
            self._pairs = (model, new, ema, holders)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Average in ``model``'s weights; ``step`` (0-based) sets the warm-up."""
        # One multi-tensor kernel rather than a launch per tensor: on a GPU the
        # training loop is bound by the CPU launching kernels.
        _, new, ema, holders = self._pairs_of(model)
        decay = ema_decay(self.decay, step, self.warmup)
        torch._foreach_lerp_(ema, new, 1.0 - decay)
        for mine, theirs, names in holders:  # buffers by name: .to() replaces them
            for name in names:
                if theirs._buffers[name] is not None:
                    mine._buffers[name].copy_(theirs._buffers[name])


def warmup_constant(warmup: int):
    """LR multiplier: linear from 1/warmup to 1 over ``warmup`` steps, then constant."""

    def factor(step: int) -> float:
        return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)

    return factor
