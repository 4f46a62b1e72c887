"""Latents back to images: what samples, grids and FID of a latent model are made of.

    decode = output_decoder(cfg, device)     # None unless cfg trains on latents
    images = decode(samples)                 # [B, 3, 256, 256] in [-1, 1]

The autoencoder and the scale are the config's (``data.autoencoder``,
``data.latent_scale``, set e.g. for an imported ffhq256 model) or else those of
the latents folder ``data.root`` the model was trained on.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from loomray.config import Config


class LatentDecoder:
    """``vae.decode(z / scale)`` clamped to [-1, 1], in batches, without gradients."""

    def __init__(self, vae, scale: float, device="cpu", batch: int = 64) -> None:
        self.vae = vae.to(device).eval()
        self.scale, self.device, self.batch = scale, torch.device(device), batch

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for part in z.split(self.batch):
                x = self.vae.decode(part.to(self.device).float() / self.scale).sample
                out.append(x.clamp(-1, 1))
        return torch.cat(out) if out else z


def autoencoder_of(cfg: Config) -> tuple[str, float]:
    """(autoencoder spec, latent scale) of a latent config; ValueError when unknown."""
    from loomray.data import DatasetError
    from loomray.data.latents import latents_info

    d = cfg.data
    if d.autoencoder and d.latent_scale:
        return d.autoencoder, d.latent_scale
    if not d.root or not Path(d.root).expanduser().is_dir():
        raise DatasetError(
            "a latent model needs its autoencoder to make images: set data.autoencoder and "
            "data.latent_scale, or data.root to the latents folder it was trained on"
        )
    manifest, scale = latents_info(d.root)
    return d.autoencoder or manifest.autoencoder, d.latent_scale or scale


@functools.lru_cache(maxsize=4)
def _decoder(spec: str, scale: float, device: str) -> LatentDecoder:
    from loomray.latents.autoencoder import load_autoencoder

    return LatentDecoder(load_autoencoder(spec), scale, device)


def output_decoder(cfg: Config, device="cpu"):
    """The function from a model's samples to images: None for pixel models."""
    if cfg.data.name != "latents":
        return None
    spec, scale = autoencoder_of(cfg)
    return _decoder(spec, float(scale), str(torch.device(device)))


def to_images(cfg: Config, x: torch.Tensor, device="cpu") -> torch.Tensor:
    """A model's samples as images (decoded when the model is a latent one)."""
    decode = output_decoder(cfg, device)
    return x if decode is None else decode(x)
