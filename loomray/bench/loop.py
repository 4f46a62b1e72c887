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


@dataclass
class LoopProfile:
    """Where ``steps`` steps of one mode spend their time (torch.profiler)."""

    mode: str
    steps: int
    wall_ms: float
    """Wall time per step, device synchronised at the end."""
    cpu_ms: float
    """Host time per step in PyTorch's operators and the CUDA runtime (self time)."""
    device_ms: float
    """Time per step of the GPU's kernels and copies (0 on a CPU; kernel tracing slows
    short kernels, so it can exceed an unprofiled step's wall time)."""
    launches: float
    """Kernel and graph launches per step."""
    blocking: dict[str, float]
    """Host ms per step in CUDA runtime calls that can wait for the device or stall it
    (synchronisations, allocations of device or pinned memory, blocking copies)."""
    top: list[tuple[str, float]]
    """The costliest operators or kernels: (name, self ms per step), device time on a GPU."""
    table: str
    """torch.profiler's tables of them, for the record: by device time (on a GPU) and
    by host time (what a launch-bound step spends its CPU on)."""


BLOCKING = ("Synchronize", "cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaHostRegister",
            "cudaMemcpy", "cudaStreamWaitEvent")
"""Parts of the names of CUDA runtime calls that can make the host wait (cudaMemcpyAsync
too: from pageable memory it blocks)."""
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch",
            "cuLaunchKernelEx")


def profile_steps(
    cfg: Config, state, dataset, plan, noise, device: torch.device, steps: int, mode: str
) -> LoopProfile:
    """Profile the next ``steps`` steps of a warmed-up loop (CPU, and CUDA on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = state.step
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        train_steps(cfg, state, dataset, plan, noise, start + steps, device)
        sync()
        wall = time.perf_counter() - began
    events = prof.key_averages()
    # Device time of kernels and copies; the ranges of user annotations on the device
    # (a compiled graph's call, the optimizer's step) span them and would count twice.
    kernels = [e for e in events if cuda and not getattr(e, "is_user_annotation", False)]
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)
    per_step = 1e-3 / steps  # profiler times are microseconds
    return LoopProfile(
        mode,
        steps,
        1e3 * wall / steps,
        per_step * sum(e.self_cpu_time_total for e in events),
        per_step * sum(e.self_device_time_total for e in kernels),
        sum(e.count for e in events if e.key in LAUNCHES) / steps,
        {
            e.key: per_step * e.self_cpu_time_total
            for e in events
            if any(part in e.key for part in BLOCKING) and e.self_cpu_time_total > 0
        },
        [(e.key, per_step * getattr(e, key)) for e in ranked[:15]],
        "\n\n".join(
            events.table(sort_by=k, row_limit=30)
            for k in dict.fromkeys([key, "self_cpu_time_total"])
        ),
    )


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
        profiled = profile_steps(cfg, state, dataset, plan, noise, device, profile, mode)
    if isinstance(noise, ThreadedNoise):
        noise.close()
    return LoopBenchRun(
        mode,
        device.type == "cuda" and cfg.train.bf16,
        steps / seconds,
        1e3 * float(np.mean([log.wait for log in history.logs])),
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
