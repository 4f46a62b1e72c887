"""Where a step's host time goes, by phase of the training loop, without a profiler.

torch.profiler (`loomray bench loop --profile`) times torch's operators. The Python
around them (the optimizer's and the CUDA graphs' bookkeeping, the noise, the
batches) it does not see, and its own overhead slows the host it measures. This
times a few more steps with a wall clock around each call the loop makes: the batch
iterator, the noise source, seeding, the copy of the noise to the device, forward and
loss, backward, clipping, the optimizer, the scheduler, the EMA. What is left is
"other". Nothing here waits for the device, so a long phase either works on the host
or blocks in it (an allocation, a copy from pageable memory, a read of a tensor).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch import nn

from loomray.train import loop


@contextlib.contextmanager
def _patched(owner, name: str, new) -> Iterator[None]:
    """``owner.name`` is ``new`` inside; an instance attribute that was not there
    before is removed again (the class's method shows through as before)."""
    had = name in vars(owner)
    old = vars(owner).get(name)
    setattr(owner, name, new)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, old)
        else:
            delattr(owner, name)


def time_phases(run_steps: Callable[[int], None], steps: int, state, noise) -> dict[str, float]:
    """Host ms per step of each phase of ``run_steps(steps)`` (the next steps of a
    warmed-up loop with this ``state`` and ``noise`` source), with "other" for the rest
    and "wall" for the whole."""
    seconds: dict[str, float] = defaultdict(float)

    def timed(phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)  # keeps markers such as the LR scheduler's on optimizer.step
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - began

        return wrapper

    iterate = loop.iterate_batches

    def batches(*args, **kwargs):
        draw = timed("batches", next)
        items = iterate(*args, **kwargs)
        while (item := draw(items, None)) is not None:
            yield item

    calls = [
        (loop, "cfm_loss", "forward"),
        (torch.Tensor, "backward", "backward"),
        (nn.utils, "clip_grad_norm_", "clip"),
        (state.optimizer, "step", "optimizer"),
        (state.optimizer, "zero_grad", "zero grad"),
        (state.scheduler, "step", "scheduler"),
        (state.ema, "update", "ema"),
        (noise, "submit", "noise"),
        (noise, "receive", "noise"),
        (loop, "to_device", "to device"),
        (loop, "seed_step", "seed"),
        (torch.compiler, "cudagraph_mark_step_begin", "graph step"),
    ]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(loop, "iterate_batches", batches))
        for owner, name, phase in calls:
            stack.enter_context(_patched(owner, name, timed(phase, getattr(owner, name))))
        began = time.perf_counter()
        run_steps(steps)
        wall = time.perf_counter() - began
    ms = {k: 1e3 * v / steps for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}
    wall_ms = 1e3 * wall / steps
    return {**ms, "other": wall_ms - sum(ms.values()), "wall": wall_ms}
