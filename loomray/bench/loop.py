"""`loomray bench loop`: the training loop alone (one process, no Ray), e.g. on a GPU.

It measures steps/s of the same config and steps under four noise sources:

* ``independent``: fresh Gaussian noise, no solve (the I-CFM floor);
* ``loom-inline``: the LOOM solve on the step's critical path (no overlap);
* ``loom-overlap``: the LOOM solve in a background thread, ``coupling.prefetch``
  steps ahead, which is the overlap the coupling service gives, without Ray's RPC;
* and, on CUDA, ``independent`` in fp32 (``train.bf16=false``) as the bf16 reference.

The service's own RPC cost is measured by `loomray bench train` (Ray, CPU).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch

from loomray.bench.phases import time_phases
from loomray.bench.profile import LoopProfile, profile_steps
from loomray.config import Config
from loomray.coupling import Coupling, make_coupling, step_rng
from loomray.data import BatchPlan, build_dataset
from loomray.train.loop import LocalNoise, build_state, make_table, train_steps

MODES = ("independent", "loom-inline", "loom-overlap", "independent-fp32")


class ThreadedNoise:
    """A coupling solved in one background thread, in step order, like the service."""

    def __init__(self, coupling: Coupling, seed: int) -> None:
        self.coupling, self.seed = coupling, seed
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-solve")
        self.pending: dict[int, Future] = {}

    def submit(self, step: int, rows: np.ndarray, x: np.ndarray) -> None:
        self.pending[step] = self.executor.submit(
            lambda: self.coupling.step(rows, x, step_rng(self.seed, step))[0]
        )

    def receive(self, step: int) -> np.ndarray:
        return self.pending.pop(step).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class LoopBenchRun:
    mode: str
    bf16: bool
    """bf16 autocast was on (CUDA only)."""
    steps_per_s: float
    wait_ms: float
    """Mean time a step blocked on its noise."""
    loss: float
    profile: LoopProfile | None = None
    """Set when asked for: the profile of steps after the timed ones."""


def _run(
    cfg: Config, mode: str, device: torch.device, steps: int, warmup: int, profile: int = 0
) -> LoopBenchRun:
    kind = "independent" if mode.startswith("independent") else "loom"
    cfg = replace(
        cfg,
        coupling=replace(cfg.coupling, kind=kind),
        train=replace(cfg.train, bf16=cfg.train.bf16 and mode != "independent-fp32"),
    )
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    coupling = make_coupling(kind, make_table(cfg, len(dataset)), cfg.coupling.cost)
    noise = (
        ThreadedNoise(coupling, cfg.coupling.seed)
        if mode == "loom-overlap"
        else LocalNoise(coupling, cfg.coupling.seed)
    )
    state = build_state(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_steps(cfg, state, dataset, plan, noise, warmup, device)  # kernels, caches, allocator
    sync()
    start = time.perf_counter()
    history = train_steps(cfg, state, dataset, plan, noise, warmup + steps, device)
    sync()
    seconds = time.perf_counter() - start
    profiled = None
    if profile:

        def more(n: int) -> None:
            train_steps(cfg, state, dataset, plan, noise, state.step + n, device)

        profiled = profile_steps(more, profile, device, mode)
        profiled.phases = time_phases(more, profile, state, noise)
    if isinstance(noise, ThreadedNoise):
        noise.close()
    return LoopBenchRun(
        mode,
        device.type == "cuda" and cfg.train.bf16,
        steps / seconds,
        1e3 * float(np.mean(history.waits)),
        float(np.mean(history.losses[-10:])),
        profiled,
    )


def bench_loop(
    cfg: Config,
    device: str = "cuda",
    steps: int = 50,
    warmup: int = 10,
    modes=MODES,
    profile: int = 0,
) -> list[LoopBenchRun]:
    """Each mode on a fresh model, same config, same steps, one after another;
    ``profile`` > 0 profiles that many further steps of each mode.

    All modes run with one BLAS thread, as the coupling service's process does: a
    BLAS pool of every core, spinning beside the training loop, slowed an H100's
    loop (which is bound by the CPU launching kernels) from 12 to 7 steps/s."""
    from threadpoolctl import threadpool_limits

    dev = torch.device(device)
    if dev.type != "cuda":
        modes = [m for m in modes if m != "independent-fp32"]  # bf16 is CUDA-only here
    with threadpool_limits(limits=1, user_api="blas"):
        return [_run(cfg, mode, dev, steps, warmup, profile) for mode in modes]
