"""Latent shards as a dataset (``loomray.latents.store``): posterior samples per step."""

from __future__ import annotations

from pathlib import Path

from loomray.config import Config
from loomray.data.contract import DatasetError, RowDataset, register


@register("latents")
def _latents(cfg: Config, root: Path) -> RowDataset:
    from loomray.latents.store import LatentDataset

    if not root.is_dir():
        raise DatasetError(
            f"latents not found: {root} is not a folder; make it with loomray encode"
        )
    latents = LatentDataset(root, cfg.data.posterior, cfg.train.seed, cfg.data.latent_scale)
    d = cfg.data
    if latents.shape != (d.channels, d.resolution, d.resolution):
        raise DatasetError(
            f"latents folder {root} holds latents of shape {latents.shape}, the config wants "
            f"{(d.channels, d.resolution, d.resolution)} (data.channels, data.resolution)"
        )
    if d.limit is not None:
        raise DatasetError("data.limit is not for latents: encode fewer images instead")
    return latents
