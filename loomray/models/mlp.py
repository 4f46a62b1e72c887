"""A small MLP velocity field for 2-D toys and tiny flattened images."""

from __future__ import annotations

import math

import torch
from torch import nn

from loomray.models.embedding import timestep_embedding


class MLPVelocity(nn.Module):
    """v(x, t): concat(x, emb(t)) -> [Linear, SiLU] x layers -> Linear."""

    def __init__(
        self,
        shape: tuple[int, ...],
        hidden: int = 256,
        layers: int = 3,
        time_dim: int = 64,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.time_dim, self.time_scale = time_dim, time_scale
        dim = math.prod(self.shape)
        blocks: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            if dropout:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        blocks.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.time_dim, self.time_scale).to(x.dtype)
        out = self.net(torch.cat([x.reshape(x.shape[0], -1), emb], dim=1))
        return out.reshape(x.shape)
