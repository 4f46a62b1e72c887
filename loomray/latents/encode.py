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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.config import Config, config_from_dict
from loomray.data import build_dataset
from loomray.latents.store import LatentsManifest, latents_folder, shard_sums
from loomray.pairs import weights_fingerprint
from loomray.shards import run_tasks

DEFAULT_SHARD = 2048


def plan_latents(
    images: Config, autoencoder: str, vae, batch: int = 32, shard_size: int | None = None
) -> LatentsManifest:
    """The manifest of the latents of ``images``'s data set under ``vae``."""
    from loomray.latents.autoencoder import AutoencoderError
    from loomray.shards import ShardsError

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


@dataclass
class Encoded:
    folder: Path
    manifest: LatentsManifest
    made: int
    rows_made: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_made / self.seconds if self.rows_made and self.seconds > 0 else 0.0


def _write(folder: Path, manifest: LatentsManifest, index: int, mean, std, sums) -> None:
    lo, hi = manifest.shard_range(index)
    columns = {"mean": mean, "std": std}
    latents_folder(folder, manifest).write(index, columns, lo=lo, hi=hi, sums=sums)


def encode_latents(
    vae,
    images: Config,
    folder: Path,
    manifest: LatentsManifest,
    workers: int = 0,
    gpus: bool = False,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Encoded:
    """Every missing shard: in this process (``workers=0``) or on that many Ray tasks at
    a time (Ray must be connected); each is written as soon as it is made."""
    shards = latents_folder(folder, manifest)
    shards.open()
    missing = [i for i in range(manifest.shards) if i not in shards.finished(manifest.shards)]
    left, start = list(missing), time.perf_counter()

    def done(index: int, *made: Any) -> None:
        _write(folder, manifest, index, *made)
        left.remove(index)
        if progress is not None:
            rows = sum(hi - lo for lo, hi in map(manifest.shard_range, left))
            progress(manifest.rows - rows, manifest.rows)

    if workers == 0:
        dataset = build_dataset(images)
        for index in missing:
            done(index, *make_latent_shard(vae, dataset, manifest, index))
    elif missing:
        _on_ray(vae, images, manifest, missing, workers, gpus, threads, done)
    rows = sum(hi - lo for lo, hi in map(manifest.shard_range, missing))
    return Encoded(folder, manifest, len(missing), rows, time.perf_counter() - start)


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
