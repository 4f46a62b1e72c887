"""Where a training step's time goes: torch.profiler over a few steps, summarised.

Used by `loomray bench loop --profile`. On a GPU the summary separates the
device's kernel time from the host's time, counts launches and lists the host
time in CUDA calls that can wait for the device: what tells a launch-bound step
from a GPU-bound one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

BLOCKING = ("Synchronize", "cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaHostRegister",
            "cudaMemcpy", "cudaStreamWaitEvent")
"""Parts of the names of CUDA runtime calls that can make the host wait (cudaMemcpyAsync
too: from pageable memory it blocks)."""
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "__cudaLaunchKernel", "cudaGraphLaunch",
            "cuGraphLaunch")
"""Prefixes of the runtime and driver calls that launch kernels or graphs."""


@dataclass
class LoopProfile:
    """Where ``steps`` steps of one mode spend their time (torch.profiler)."""

    mode: str
    steps: int
    wall_ms: float
    """Profiled wall time per step (the device synchronised once at the end)."""
    cpu_ms: float
    """Host time per step in PyTorch's operators and the CUDA runtime (self time,
    summed over threads)."""
    device_ms: float
    """Time per step of the GPU's kernels and copies (0 on a CPU)."""
    launches: float
    """Kernel and graph launches per step."""
    blocking: dict[str, float]
    """Host ms per step in CUDA runtime calls that can wait for the device or stall it
    (synchronisations, allocations of device or pinned memory, blocking copies); the
    one synchronisation at the end of the profiled steps is in it."""
    top: list[tuple[str, float]]
    """The costliest kernels on a GPU (self device ms per step), operators on a CPU
    (self host ms per step)."""
    table: str
    """torch.profiler's tables, for the record: by device time (on a GPU) and by host
    time (what a launch-bound step spends its CPU on)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Host ms per step by phase of the loop (forward, backward, optimizer, ...,
    "other", "wall"), timed without the profiler over as many further steps
    (loomray.bench.phases)."""


def is_kernel(event) -> bool:
    """A kernel or copy on the device; not a host operator, which carries the time of
    the kernels it launched, nor an annotation's range on the device, which spans them:
    either would count that time twice."""
    from torch.autograd import DeviceType

    return event.device_type == DeviceType.CUDA and not getattr(
        event, "is_user_annotation", False
    )


def summarize(events, steps: int, wall_s: float, cuda: bool, mode: str, table: str):
    """A LoopProfile of profiler events (``key_averages()``) over ``steps`` steps."""
    per_step = 1e-3 / steps  # profiler times are microseconds
    kernels = [e for e in events if cuda and is_kernel(e)]
    if cuda:
        ranked = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)
        top = [(e.key, per_step * e.self_device_time_total) for e in ranked[:15]]
    else:
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        top = [(e.key, per_step * e.self_cpu_time_total) for e in ranked[:15]]
    return LoopProfile(
        mode,
        steps,
        1e3 * wall_s / steps,
        per_step * sum(e.self_cpu_time_total for e in events),
        per_step * sum(e.self_device_time_total for e in kernels),
        sum(e.count for e in events if e.key.startswith(LAUNCHES)) / steps,
        {
            e.key: per_step * e.self_cpu_time_total
            for e in events
            if any(part in e.key for part in BLOCKING) and e.self_cpu_time_total > 0
        },
        top,
        table,
    )


def profile_steps(run_steps, steps: int, device: torch.device, mode: str) -> LoopProfile:
    """Profile ``run_steps(steps)`` (the next steps of a warmed-up loop) on the CPU, and
    on CUDA too on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        run_steps(steps)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - began
    events = prof.key_averages()
    keys = ["self_device_time_total"] if cuda else []
    table = "\n\n".join(
        events.table(sort_by=k, row_limit=30) for k in [*keys, "self_cpu_time_total"]
    )
    return summarize(events, steps, wall, cuda, mode, table)
