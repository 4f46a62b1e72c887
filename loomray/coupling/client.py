"""The workers' side of the coupling service: a ``NoiseSource`` over an actor handle.

``submit`` sends the batch (packed: loomray.coupling.wire) and returns at once
(the reply is an ObjectRef); ``receive`` waits for the seeds and regenerates the
noise from them. If the service actor dies and Ray restarts it, every
request still in flight is sent again, oldest first, and training carries on:
the restarted service rebuilt its table from its journal, so the answers are
the ones the dead service gave or would have given.
"""

from __future__ import annotations

import time

import numpy as np

from loomray.coupling.noise import noise_from_seeds
from loomray.coupling.wire import pack

RETRIES = 20


def _service_gone() -> tuple[type[BaseException], ...]:
    """What a call raises when the service actor (or the node holding its reply) died;
    the call is sent again, which a restarted service answers as the dead one would."""
    from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

    return (RayActorError, ActorUnavailableError, ObjectLostError)


def _backoff(attempt: int) -> None:
    time.sleep(min(5.0, 0.2 * 2**attempt))


def call_service(method, *args, timeout_s: float = 300.0):
    """``ray.get(method.remote(*args))``, sent again while Ray restarts the actor
    (a restarted service rebuilds its state, so the answer is the same)."""
    import ray

    for attempt in range(RETRIES):
        try:
            return ray.get(method.remote(*args), timeout=timeout_s)
        except _service_gone():
            if attempt == RETRIES - 1:
                raise
            _backoff(attempt)
    raise AssertionError("unreachable")


class ServiceNoise:
    """NoiseSource backed by the CouplingService actor."""

    def __init__(
        self, service, rank: int, timeout_s: float = 300.0, node: str | None = None
    ) -> None:
        self.service = service
        self.rank = rank
        self.timeout_s = timeout_s
        self.inflight: dict[int, tuple[object, np.ndarray, np.ndarray]] = {}
        # the first submission tells the service which node this rank runs on
        self.info: dict[str, float | str] = {"node": node} if node else {}
        self.resubmits = 0
        self.threads = 1  # for regenerating the noise: the rank's CPUs, set by the worker

    def submit(self, step: int, rows: np.ndarray, x: np.ndarray) -> None:
        x = pack(x)  # uint8 where that is exact: loomray.coupling.wire
        ref = self.service.submit.remote(step, self.rank, rows, x, self.info or None)
        self.info = {}
        self.inflight[step] = (ref, rows, x)

    def note(self, **info: float) -> None:
        """Numbers to piggyback on the next submission (wait time, loss)."""
        self.info.update(info)

    def receive(self, step: int) -> np.ndarray:
        import ray
        from ray.exceptions import GetTimeoutError

        attempt = 0
        while attempt < RETRIES:
            ref = self.inflight[step][0]
            try:
                # The service raises its own TimeoutError (later while a rank is busy);
                # this bound is a backstop that asks whether the service still answers.
                seeds = ray.get(ref, timeout=self.timeout_s + 60)
            except GetTimeoutError:
                if self._answers():
                    continue
                raise
            except _service_gone():
                if attempt == RETRIES - 1:
                    raise
                _backoff(attempt)
                attempt += 1
                self._resubmit()
                continue
            shape = self.inflight.pop(step)[2].shape[1:]
            return noise_from_seeds(seeds, shape, self.threads)
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.service.ping.remote(), timeout=60))
        except Exception:  # gone, or not answering either
            return False

    def _resubmit(self) -> None:
        """The actor restarted: send every unanswered request again, in step order."""
        self.resubmits += 1
        for step in sorted(self.inflight):
            _, rows, x = self.inflight[step]
            self.inflight[step] = (self.service.submit.remote(step, self.rank, rows, x), rows, x)
