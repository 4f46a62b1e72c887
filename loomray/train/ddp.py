"""DDP whose gradient buckets are laid out before the first step that counts.

DDP packs gradients into buckets and all-reduces them bucket by bucket. It lays
the buckets out twice: when it is built (parameters in reverse order), and again
after its first backward (in the order the gradients became ready). The
all-reduce adds each element's contributions in an order that depends on where
the element sits in its bucket (a ring reduction starts each chunk at another
rank), so with more than two ranks the first step after every (re)start adds in
another order than an uninterrupted run adds at that step, and the two runs part
in the last bits. With two ranks the order cannot matter (a + b = b + a).

One forward and backward right after DDP is built, whose gradients are dropped,
makes DDP lay out its final buckets before any step: every start, first or after
a fault, then trains with the same buckets.
"""

from __future__ import annotations

import torch
from torch import nn


def distributed(
    model: nn.Module, device: torch.device, sample_shape: tuple[int, ...]
) -> nn.parallel.DistributedDataParallel:
    """``model`` in DDP (the process group must exist), its buckets final. The dropped
    step draws dropout from the torch RNG, which each training step reseeds."""
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    x = torch.zeros(1, *sample_shape, device=device)
    ddp(x, torch.zeros(1, device=device)).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return ddp
