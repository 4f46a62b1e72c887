"""`loomray encode`: an image data set through the autoencoder into latent shards.

    manifest = plan_latents(images_cfg, "models/sd-vae-ft-mse", vae)
    encode_latents(vae, images_cfg, Path("latents/ffhq256"), manifest, workers=4, gpus=True)

Shard k holds rows ``k * shard_size ..`` (row N + i: image i mirrored, when the
image config flips). A shard is a pure function of the autoencoder, the images
and its index: the posterior's mean and std, in fixed batches. Ray tasks make
shards (GPUs when asked), the driver writes each as it arrives, so a rerun
makes only the missing ones and nodes need no shared file system for the
output (they read the images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from loomray.config import Config, config_from_dict
from loomray.data import build_dataset
from loomray.data.latents import LatentsManifest, latents_folder, shard_sums
from loomray.data.pairs import weights_fingerprint
from loomray.files.shards import Filled, fill, run_tasks

DEFAULT_SHARD = 2048


def plan_latents(
    images: Config, autoencoder: str, vae, batch: int = 32, shard_size: int | None = None
) -> LatentsManifest:
    """The manifest of the latents of ``images``'s data set under ``vae``."""
    from loomray.files.shards import ShardsError
    from loomray.latents.autoencoder import AutoencoderError

    for name, value in (("--batch", batch), ("--shard-size", shard_size)):
        if value is not None and value < 1:
            raise ShardsError(f"{name} must be at least 1, got {value}")
    shard_size = shard_size or batch * max(1, DEFAULT_SHARD // batch)
    if shard_size % batch:
        raise ShardsError(f"--shard-size {shard_size} must be a multiple of --batch {batch}")
    dataset = build_dataset(images)
    d = images.data
    try:
        with torch.no_grad():
            probe = torch.zeros(1, d.channels, d.resolution, d.resolution)
            shape = tuple(vae.encode(probe).latent_dist.mean.shape[1:])
    except RuntimeError as err:
        raise AutoencoderError(
            f"the autoencoder cannot encode {d.channels}x{d.resolution}x{d.resolution} images "
            f"(it takes {vae.config.in_channels} channels): {str(err).splitlines()[0]}"
        ) from err
    return LatentsManifest(
        autoencoder=autoencoder,
        autoencoder_fingerprint=weights_fingerprint(vae.state_dict()),
        images=asdict(d),
        items=dataset.n_items,
        rows=len(dataset),
        latent_shape=shape,
        shard_size=shard_size,
        batch=batch,
    )


def make_latent_shard(vae, dataset, manifest: LatentsManifest, index: int, device="cpu"):
    """Shard ``index``: (mean float16, std float16, sums for the scale)."""
    lo, hi = manifest.shard_range(index)
    vae = vae.to(device).eval()
    means, stds = [], []
    with torch.no_grad():
        for start in range(lo, hi, manifest.batch):
            rows = np.arange(start, min(hi, start + manifest.batch))
            posterior = vae.encode(dataset.batch(rows).to(device)).latent_dist
            means.append(posterior.mean.half().cpu().numpy())
            stds.append(posterior.std.half().cpu().numpy())
    mean, std = np.concatenate(means), np.concatenate(stds)
    return mean, std, shard_sums(mean, std)


def _shard_task(vae_config: dict, weights, images: dict, manifest: dict, index: int, threads: int):
    from diffusers import AutoencoderKL

    torch.set_num_threads(max(1, threads))
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(weights)
    dataset = build_dataset(config_from_dict(images))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return index, *make_latent_shard(vae, dataset, LatentsManifest(**manifest), index, device)


def encode_latents(
    vae,
    images: Config,
    folder: Path,
    manifest: LatentsManifest,
    workers: int = 0,
    gpus: bool = False,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Filled:
    """Every missing shard: in this process (``workers=0``) or on that many Ray tasks at
    a time (Ray must be connected); each is written as soon as it is made."""
    shards = latents_folder(folder, manifest)
    dataset = build_dataset(images) if workers == 0 else None

    def write(index: int, mean, std, sums) -> None:
        lo, hi = manifest.shard_range(index)
        shards.write(index, {"mean": mean, "std": std}, lo=lo, hi=hi, sums=sums)

    return fill(
        shards,
        write,
        lambda index: make_latent_shard(vae, dataset, manifest, index),
        lambda missing, done: _on_ray(vae, images, manifest, missing, workers, gpus, threads, done),
        workers,
        progress,
    )


def _on_ray(vae, images, manifest, missing, workers, gpus, threads, done) -> None:
    import ray

    weights = ray.put(vae.state_dict())
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    task = ray.remote(_shard_task).options(
        num_cpus=0 if gpus else threads, num_gpus=1 if gpus else 0
    )
    spec, images = asdict(manifest), images.to_dict()
    run_tasks(
        task, missing, workers, lambda i: (config, weights, images, spec, i, threads), done
    )
