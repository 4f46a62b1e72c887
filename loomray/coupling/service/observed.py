"""What the coupling service has seen: its solves, the workers' waits and losses,
who submitted from where; for `loomray status`, progress bars and Ray metrics."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from loomray.coupling.telemetry import ServiceTelemetry


class Observed:
    """The service's live numbers, kept in memory and mirrored to Ray metrics."""

    def __init__(self, run: str) -> None:
        self.history: collections.deque = collections.deque(maxlen=1000)
        self.waits: collections.deque = collections.deque(maxlen=1000)
        self.loss: float | None = None
        self.submits: dict[int, int] = {}  # batches received per rank
        self.nodes: dict[int, str] = {}  # the Ray node of each rank
        self.telemetry = ServiceTelemetry(run)

    def submitted(self, rank: int, info: dict | None) -> None:
        """A batch from ``rank``, with what the rank says about itself (node, wait, loss)."""
        self.submits[rank] = self.submits.get(rank, 0) + 1
        if not info:
            return
        if isinstance(info.get("node"), str):
            self.nodes[rank] = info["node"]
        if "wait" in info:
            self.waits.append(float(info["wait"]))
            if self.telemetry.enabled:
                self.telemetry.wait.observe(float(info["wait"]))
        if rank == 0 and "loss" in info:
            self.loss = float(info["loss"])
            if self.telemetry.enabled:
                self.telemetry.loss.set(self.loss)

    def solved(self, step: int, seconds: float, stats, n: int, queue: int) -> None:
        """A solved step of ``n`` rows that took ``seconds``; ``queue`` steps wait."""
        self.history.append(
            (time.time(), step, seconds, stats.swaps, stats.pre_cost / n, stats.post_cost / n)
        )
        if self.telemetry.enabled:
            t = self.telemetry
            t.solve.observe(seconds)
            if stats.swaps:
                t.swaps.inc(stats.swaps)
            t.pre.set(stats.pre_cost / n)
            t.post.set(stats.post_cost / n)
            t.step.set(step)
            t.queue.set(queue)

    def snapshot_failed(self, failed: bool) -> None:
        if self.telemetry.enabled:
            self.telemetry.snapshot_failed.set(1.0 if failed else 0.0)

    def images(self, images_per_s: float) -> None:
        if self.telemetry.enabled:
            self.telemetry.images.set(images_per_s)

    def figures(self) -> dict[str, Any]:
        """The loss, the workers, and the recent solves' and waits' means."""
        hist = list(self.history)
        out: dict[str, Any] = {
            "loss": self.loss,
            "workers": [
                {"rank": r, "node": self.nodes.get(r), "batches": self.submits[r]}
                for r in sorted(self.submits)
            ],
        }
        if hist:
            window = hist[-100:]
            span = window[-1][0] - window[0][0]
            out["steps_per_s"] = (len(window) - 1) / span if span > 0 else None
            out["solve_ms"] = 1e3 * float(np.mean([h[2] for h in window]))
            out["swaps"] = float(np.mean([h[3] for h in window]))
            out["cost_pre"] = float(np.mean([h[4] for h in window]))
            out["cost_post"] = float(np.mean([h[5] for h in window]))
            out["cost_trend"] = [
                float(np.mean([h[4] for h in hist[i : i + 50]])) for i in range(0, len(hist), 50)
            ][-10:]
        if self.waits:
            out["wait_ms"] = 1e3 * float(np.mean(list(self.waits)[-200:]))
        return out
