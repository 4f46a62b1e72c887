"""Velocity networks v(x, t): the ADM UNet for images, an MLP for toys."""

from __future__ import annotations

from torch import nn

from loomray.config import Config
from loomray.models.mlp import MLPVelocity
from loomray.models.unet import UNet


def build_model(cfg: Config) -> nn.Module:
    m = cfg.model
    if m.kind == "mlp":
        return MLPVelocity(
            cfg.sample_shape, m.hidden, m.layers, dropout=m.dropout, time_scale=m.time_scale
        )
    return UNet(
        in_channels=cfg.data.channels,
        resolution=cfg.data.resolution,
        channels=m.channels,
        res_blocks=m.res_blocks,
        channel_mult=m.channel_mult,
        attn_resolutions=m.attn_resolutions,
        head_channels=m.head_channels,
        dropout=m.dropout,
        time_scale=m.time_scale,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MLPVelocity", "UNet", "build_model", "count_parameters"]
