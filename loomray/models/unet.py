"""The ADM UNet (Dhariwal & Nichol's improved UNet) as a velocity field v(x, t).

Same block structure as the model LOOM-CFM trains (via torchcfm's wrapper of
the guided-diffusion UNet): residual blocks with a time-embedding projection,
multi-head self-attention at chosen resolutions, a Res-Attn-Res middle, skip
connections by concatenation, zero-initialised output convolutions. The
cifar10 preset (128 channels, mults 1,2,2,2, 2 blocks, attention at 16x16,
64-channel heads) has 35.75M parameters, as the authors' model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from loomray.models.embedding import timestep_embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            _norm(cout),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(cout, cout, 3, padding=1)),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {head_channels}")
        self.heads = channels // head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Tokens last-dim contiguous ([B, L, C]) so that q, k and v reach attention with
        # the head dimension at stride 1: the fused kernels (flash, memory-efficient)
        # require it, and without them a GPU falls back to the math path, which runs
        # bf16 attention as fp32 matrix products. The 1x1 convolutions are applied as
        # the same matrix products (their weights keep the checkpoint's shapes).
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # [B, L, C]
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)  # [B, L, 3C]
        q, k, v = qkv.reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, d]
        out = F.linear(
            out.transpose(1, 2).reshape(b, -1, c), self.proj.weight[..., 0], self.proj.bias
        )
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """A residual block, optionally followed by attention, or a resampler."""

    def __init__(self, res: ResBlock | None, attn: AttentionBlock | None, resample=None):
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.res is not None:
            x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.resample is not None:
            x = self.resample(x)
        return x


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        resolution: int,
        channels: int = 128,
        res_blocks: int = 2,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        attn_resolutions: tuple[int, ...] = (16,),
        head_channels: int = 64,
        dropout: float = 0.1,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.channels, self.time_scale = channels, time_scale
        emb_dim = 4 * channels
        self.time_embed = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def attn(ch: int, res: int) -> AttentionBlock | None:
            return AttentionBlock(ch, min(head_channels, ch)) if res in attn_resolutions else None

        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]
        ch, res = channels, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks):
                cout = channels * mult
                self.down.append(Level(ResBlock(ch, cout, emb_dim, dropout), attn(cout, res)))
                ch = cout
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Level(None, None, Downsample(ch)))
                skips.append(ch)
                res //= 2
        self.middle = nn.ModuleList(
            [
                Level(
                    ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, min(head_channels, ch))
                ),
                Level(ResBlock(ch, ch, emb_dim, dropout), None),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(res_blocks + 1):
                cout = channels * mult
                up = Upsample(cout) if level and i == res_blocks else None
                self.up.append(
                    Level(ResBlock(ch + skips.pop(), cout, emb_dim, dropout), attn(cout, res), up)
                )
                ch = cout
            if level:
                res *= 2
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.channels, self.time_scale).to(x.dtype))
        h = self.stem(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        for block in self.middle:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
