"""Evaluating a checkpoint with several Ray workers: `loomray evaluate --workers N`.

Each worker (a Ray task with one GPU, or one CPU) loads the checkpoint's EMA
model and computes its share of every sampler's evaluation (global batches k
with k % N == its index; see ``loomray.evaluation.evaluate.sample_shares``); the driver
adds the shares and scores them. The figures equal one worker's to float64
rounding, since every sample and its noise depend on its index only.
"""

from __future__ import annotations

from typing import Any

from loomray.evaluation.evaluate import (
    EvalRow,
    MethodShare,
    combine_shares,
    sample_shares,
    with_precision,
)
from loomray.evaluation.evaluator import Evaluator, make_evaluator


def _share_task(
    checkpoint: str,
    methods: list[str],
    n: int,
    fid_weights: str | None,
    rank: int,
    world: int,
    threads: int,
    protocol: str,
    precision: str | None = None,
) -> dict[str, MethodShare]:
    import torch

    from loomray.checkpoint import ema_model_of, load_checkpoint

    torch.set_num_threads(max(1, threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = ema_model_of(load_checkpoint(checkpoint))
    cfg = with_precision(cfg, precision)
    evaluator = make_evaluator(
        cfg, "train", fid_weights, device, with_reference=False, protocol=protocol
    )
    return sample_shares(model, cfg, methods, n, evaluator, device, rank, world)


def evaluate_with_workers(
    checkpoint: str,
    methods: list[str],
    n: int,
    evaluator: Evaluator,
    workers: int,
    gpus: bool = False,
    threads: int = 1,
    precision: str | None = None,
) -> list[EvalRow]:
    """Sample and featurize on ``workers`` Ray tasks (Ray must be connected); score here."""
    import ray

    task = ray.remote(_share_task).options(
        num_cpus=0 if gpus else threads, num_gpus=1 if gpus else 0
    )
    refs = [
        # the driver's weights file, not each node's own setting: one feature space
        task.remote(
            checkpoint,
            list(methods),
            n,
            evaluator.weights,
            r,
            workers,
            threads,
            evaluator.protocol,
            precision,
        )
        for r in range(workers)
    ]
    parts: list[dict[str, Any]] = ray.get(refs)
    return combine_shares(evaluator, methods, n, parts)
