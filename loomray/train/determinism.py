"""Deterministic kernels on GPUs, so that a run gives the same weights bit for bit.

A run that loses a worker, the coupling service or its driver replays steps from
a checkpoint and must end where an uninterrupted run ends. On the CPU the step is
deterministic as it is. On a GPU several kernels are not by default: the backward
of flash attention and some of cuDNN's convolution backward algorithms add
partial results with atomics, in whatever order the threads finish; cuDNN may
time algorithms and keep the fastest; the compiler may time kernel variants that
reduce in different orders. Two runs of the same config then drift apart from
the first step, and so does a replay.

``train.deterministic`` (the default) turns all of that off in a CUDA process:
deterministic algorithms (an operation without one raises instead of running),
cuDNN's deterministic algorithms without timing, a cuBLAS workspace that makes
cuBLAS reproducible, and no timing-driven choice in the compiler. That may cost
speed (the GPU check in docs/results.md times it; not yet measured);
``train.deterministic=false`` trades exact replays for it.

Deterministic kernels give the same bits on the same GPU model with the same
driver, CUDA, cuDNN and torch, not across them. The gradient all-reduce of more
than two ranks is made to add in the same order on every start by
``loomray.train.ddp``.
"""

from __future__ import annotations

import os

import torch

# One of the two settings cuBLAS documents as reproducible; read when cuBLAS starts.
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_kernels(on: bool) -> None:
    """Set this process's kernel choice for CUDA training: deterministic or fastest."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
    # Deterministic mode also fills every tensor made by empty() with NaN, to catch
    # reads of uninitialised memory; that is a kernel per such tensor, and loomray's
    # step reads none.
    torch.utils.deterministic.fill_uninitialized_memory = not on
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    import torch._inductor.config as inductor

    if hasattr(inductor, "deterministic"):
        inductor.deterministic = on


def kernels_for(deterministic: bool, device: torch.device) -> None:
    """The kernel choice a training process on ``device`` runs with; a CPU process is
    left as it is (its step is deterministic without any of this)."""
    if device.type == "cuda":
        use_deterministic_kernels(deterministic)
