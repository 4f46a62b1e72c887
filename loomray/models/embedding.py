"""Sinusoidal time embedding shared by the velocity networks."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] sin/cos features (t is scaled by ``scale`` first,
    so the frequencies span the unit interval as they span 1000 diffusion steps)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = (scale * t.float())[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
