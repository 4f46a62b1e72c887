"""How much of the cluster a sweep kept busy: the share of its GPU (or CPU) time that
trials held, sampled from Ray once a second while the sweep runs.

    with Occupancy("GPU", most=8) as busy:
        tuner.fit()
    busy.share   # 0.71: 71% of 8 GPUs x the sweep's wall clock were held

A trial that waits in a concurrency slot for another trial's training holds no
GPU, so idle slots show here as GPU time nobody held.
"""

from __future__ import annotations

import threading
import time


class Occupancy:
    def __init__(self, resource: str, most: float, interval_s: float = 1.0) -> None:
        self.resource, self.most, self.interval_s = resource, most, interval_s
        self.held_s = 0.0  # resource-seconds held
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loomray-occupancy", daemon=True)

    def __enter__(self) -> Occupancy:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.seconds = time.monotonic() - self._started

    def _held(self) -> float:
        import ray

        total = ray.cluster_resources().get(self.resource, 0.0)
        return max(0.0, total - ray.available_resources().get(self.resource, 0.0))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                held = self._held()
            except Exception:  # the cluster is going away with the sweep
                break
            now = time.monotonic()
            self.held_s += held * (now - last)
            last = now

    @property
    def share(self) -> float:
        """Held resource-seconds over what the cluster could give in the wall clock."""
        return self.held_s / (self.most * self.seconds) if self.most and self.seconds else 0.0
