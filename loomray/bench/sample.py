"""`loomray bench sample`: images/s of each sampler on a checkpoint's EMA model.

Sampling as `loomray evaluate` does it (the fixed evaluation noise in
``eval.batch`` batches, no grad, bf16 autocast on CUDA when the config trains in
bf16, a latent model's samples decoded), timed per sampler with the device
synchronised around each one; one batch of each batch size runs untimed first
(kernel selection, allocator). No FID: the figure is the sampler's speed alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from loomray.config import Config
from loomray.evaluation.evaluate import eval_batches, eval_noise, sample_eval
from loomray.flow.sampling import parse_method


@dataclass
class SampleBenchRow:
    method: str
    nfe: float
    """Network evaluations per sample (dopri5's mean over the batches)."""
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def bench_sample(
    model: nn.Module,
    cfg: Config,
    methods: list[str],
    n: int,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[SampleBenchRow]:
    """Each sampler over the same ``n`` noise samples, one after another."""
    from loomray.latents.decode import output_decoder

    for m in methods:
        parse_method(m)
    device = torch.device(device)
    model = model.to(device).eval()
    decode = output_decoder(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = eval_batches(n, cfg.eval.batch)

    def run(method: str, lo: int, hi: int) -> int:
        result = sample_eval(model, cfg, eval_noise(cfg, lo, hi, device), method)
        if decode is not None:  # outside autocast, as evaluation decodes
            decode(result.x)
        return result.nfe

    for size in {hi - lo: (lo, hi) for lo, hi in batches}.values():
        run(methods[0], *size)  # untimed, each batch shape: kernel selection, allocator
    rows = []
    for method in methods:
        sync()
        start, nfe = time.perf_counter(), 0
        for lo, hi in batches:
            nfe += run(method, lo, hi) * (hi - lo)
        sync()
        row = SampleBenchRow(method, nfe / n, n, time.perf_counter() - start)
        rows.append(row)
        if progress is not None:
            progress(f"{method}: {row.images_per_s:,.0f} images/s ({row.nfe:.0f} NFE)")
    return rows
