"""`loomray bench latents`: what encoding once saves over encoding every batch.

The same network, optimizer and batches train on latents two ways, in one
process: from latent shards encoded beforehand (`loomray encode`; the one-off
encoding time is reported apart), and as the LOOM-CFM authors' code does it,
through the autoencoder's encoder on every step (a posterior sample of each
image, scaled). Independent noise in both, so the difference is the encoding.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from loomray.config import Config
from loomray.data import build_dataset
from loomray.data.latents import LatentDataset
from loomray.flow.objective import cfm_loss
from loomray.latents.encode import encode_latents, plan_latents
from loomray.models import build_model


@dataclass
class LatentBench:
    mode: str
    steps: int
    seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def tiny_autoencoder(levels: int = 4, channels: int = 32):
    """A random ``AutoencoderKL`` with SD's shape of factor 2^(levels-1) (f8 at 4 levels)
    and 4 latent channels, small enough for a CPU."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(channels,) * levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, channels),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
    ).eval()


def _train(cfg: Config, batches, steps: int) -> float:
    """Seconds for ``steps`` training steps on what ``batches(step)`` yields."""
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    for warm in (True, False):
        start = time.perf_counter()
        for step in range(2 if warm else steps):
            x = batches(step)
            loss = cfm_loss(model, x, torch.randn_like(x), cfg.train.sigma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def bench_latents(
    latent: Config, images: Config, vae, steps: int, batch: int
) -> tuple[list[LatentBench], float, float]:
    """(the two modes' timings, seconds of the one-off encode, the latent scale)."""
    pixels = build_dataset(images)
    rows_of = lambda step: np.random.default_rng(step).choice(len(pixels), batch, replace=False)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="loomray-bench-latents-") as tmp:
        manifest = plan_latents(images, "bench", vae, batch=min(batch, 64))
        start = time.perf_counter()
        encode_latents(vae, images, Path(tmp), manifest, workers=0)
        encode_s = time.perf_counter() - start
        latents = LatentDataset(tmp, "sample", seed=0)
        cfg = replace(
            latent,
            data=replace(latent.data, resolution=latents.shape[-1], channels=latents.shape[0]),
        )
        pre = _train(cfg, lambda step: latents.batch_at(rows_of(step), step), steps)

        def encoded_now(step: int) -> torch.Tensor:
            with torch.no_grad():
                posterior = vae.encode(pixels.batch(rows_of(step))).latent_dist
                return posterior.sample() * latents.scale

        every = _train(cfg, encoded_now, steps)
    runs = [LatentBench("pre-encoded", steps, pre), LatentBench("encode every batch", steps, every)]
    return runs, encode_s, latents.scale
