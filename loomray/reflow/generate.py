"""Reflow pairs from a checkpoint's EMA model, split over Ray tasks by shard.

    manifest = plan_pairs(load_checkpoint("runs/digits"), n=50_000, sampler="dopri5")
    result = generate_pairs(payload, Path("runs/digits-reflow/pairs"), manifest, workers=2)

Shard k holds pairs ``k * shard_size ..``; its noise seeds and its sampling
batches are fixed by the manifest, so a shard is a pure function of the model and
its index: one worker or several, a fresh run or a resumed one, the shards are
the same. Each task returns its shard to the driver, which writes it
atomically, so nodes need no shared file system and a finished shard is never
made twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.checkpoint import config_of, ema_model_of
from loomray.coupling import noise_from_seeds
from loomray.data.pairs import (
    PairsError,
    PairsManifest,
    pair_seeds,
    pairs_folder,
    weights_fingerprint,
    write_shard,
)
from loomray.evaluation.evaluator import to_uint8
from loomray.files.shards import Filled, fill, run_tasks
from loomray.flow.sampling import parse_method, sample

DEFAULT_SAMPLER = "dopri5"
DEFAULT_SHARD = 10_000


def plan_pairs(
    payload: dict[str, Any],
    n: int,
    sampler: str = DEFAULT_SAMPLER,
    batch: int | None = None,
    shard_size: int | None = None,
    seed: int = 0,
) -> PairsManifest:
    """The manifest of ``n`` pairs from a loaded checkpoint (``load_checkpoint``);
    PairsError says what is wrong with the request."""
    cfg, _ = ema_model_of(payload)  # a checkpoint without usable EMA weights fails here
    if cfg.data.name == "toy2d":
        raise PairsError("reflow pairs are images; a toy2d model makes 2-D points")
    if cfg.data.name == "latents":
        raise PairsError("reflow pairs are uint8 images; a latent model makes latents")
    try:
        method = parse_method(sampler).name
    except ValueError as err:
        raise PairsError(f"--sampler: {err}") from err
    for name, value in (("--n/--pairs", n), ("--batch", batch), ("--shard-size", shard_size)):
        if value is not None and value < 1:
            raise PairsError(f"{name} must be at least 1, got {value}")
    if seed < 0:
        raise PairsError(f"--seed must be at least 0, got {seed}")
    batch = batch or min(cfg.eval.batch, n)
    shard_size = shard_size or batch * max(1, DEFAULT_SHARD // batch)
    if shard_size % batch:
        raise PairsError(
            f"--shard-size {shard_size} must be a multiple of --batch {batch}: a shard is "
            "made of whole sampling batches"
        )
    return PairsManifest(
        source=str(Path(payload["path"]).resolve()),
        source_fingerprint=weights_fingerprint(payload["ema"]),
        source_step=int(payload.get("step", 0)),
        sampler=method,
        pairs=n,
        shard_size=shard_size,
        batch=batch,
        seed=seed,
        shape=cfg.sample_shape,
        rtol=cfg.eval.rtol,
        atol=cfg.eval.atol,
        source_config=cfg.to_dict(),
    )


def make_shard(
    model: torch.nn.Module, manifest: PairsManifest, index: int, device="cpu"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Shard ``index``: (seeds, uint8 images, mean NFE per pair), sampled in float32."""
    lo, hi = manifest.shard_range(index)
    seeds = pair_seeds(manifest.seed, lo, hi)
    model = model.to(device).eval()
    images, nfe = [], 0.0
    for start in range(lo, hi, manifest.batch):
        part = seeds[start - lo : min(hi, start + manifest.batch) - lo]
        z = torch.from_numpy(noise_from_seeds(part, manifest.shape)).to(device)
        result = sample(model, z, manifest.sampler, rtol=manifest.rtol, atol=manifest.atol)
        images.append(to_uint8(result.x).numpy())
        nfe += result.nfe * len(part)
    return seeds, np.concatenate(images), nfe / (hi - lo)


def _shard_task(weights, config: dict, manifest: dict, index: int, threads: int):
    from loomray.config import config_from_dict
    from loomray.models import build_model

    torch.set_num_threads(max(1, threads))
    model = build_model(config_from_dict(config))
    model.load_state_dict(weights)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return index, *make_shard(model, PairsManifest(**manifest), index, device)


Progress = Callable[[int, int], None]


def generate_pairs(
    payload: dict[str, Any],
    folder: Path,
    manifest: PairsManifest,
    workers: int = 1,
    gpus: bool = False,
    threads: int = 1,
    progress: Progress | None = None,
) -> Filled:
    """Every missing shard: in this process (``workers=0``) or on that many Ray tasks at
    a time (Ray must be connected); each is written as soon as it is made."""
    _, model = ema_model_of(payload)  # the weights load: checked before any task starts

    def on_ray(missing: list[int], done) -> None:
        import ray

        weights = ray.put(model.state_dict())
        config = config_of(payload).to_dict()
        task = ray.remote(_shard_task).options(
            num_cpus=0 if gpus else threads, num_gpus=1 if gpus else 0
        )
        spec = asdict(manifest)
        run_tasks(task, missing, workers, lambda i: (weights, config, spec, i, threads), done)

    return fill(
        pairs_folder(folder, manifest),
        lambda index, *made: write_shard(folder, manifest, index, *made),
        lambda index: make_shard(model, manifest, index),
        on_ray,
        workers,
        progress,
    )
