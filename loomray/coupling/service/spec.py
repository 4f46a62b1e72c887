"""What the coupling service is built from (``ServiceSpec``), the errors it raises,
and how it knows it is a restarted actor."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

# Solved steps kept in memory (and in the journal after a snapshot): more than
# any rank can be behind the service (coupling.prefetch + 1 <= 9).
UNDO_DEPTH = 16


@dataclass
class ServiceSpec:
    """Everything the service needs to (re)build itself, e.g. after a restart."""

    kind: str
    rows: int
    caches: int
    cost: str
    seed: int
    world: int
    snapshot_dir: str | None = None
    snapshot_every: int = 500
    timeout_s: float = 300.0
    run: str = "loomray"
    run_id: str = ""
    """Identifies the run's training config: a snapshot or journal of another is refused."""
    pairs: str | None = None
    """The pairs coupling (reflow): the pairs folder whose rows' noise seeds it serves
    (read by the service itself, so a restarted actor needs no arguments kept alive)."""
    run_dir: str | None = None
    """The run dir's absolute path, for `loomray status`."""
    threads: int = 1
    """Threads for noise and costs (coupling.service_cpus, at least 1)."""
    driver: dict[str, Any] | None = None
    """The driver that started it (pid, host, Ray job): a second driver of the same run
    is refused while this one lives (``loomray.train.service.claim_service_name``)."""


def reconstructed() -> bool:
    """True inside a Ray actor that Ray restarted after it died. (Ray's own
    ``was_current_actor_reconstructed`` reads a deprecated property and warns.)"""
    try:
        import ray
        from ray._private.state import actors

        if not ray.is_initialized():
            return False
        actor = ray.get_runtime_context().get_actor_id()
        info = actors(actor_id=actor) if actor else None
        return bool(info) and info["NumRestarts"] != 0
    except (ImportError, AttributeError, RuntimeError, KeyError):
        return False


class LostStateError(RuntimeError):
    """A restarted service could not rebuild its state; restore it from a checkpoint."""


class DurabilityError(RuntimeError):
    """The service could not make a step durable; it solves nothing more."""


def write_failure(err: OSError, what: str) -> str:
    """One sentence for a failed write: what, where and why (disk full, quota, I/O)."""
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EIO: "an I/O error",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
    }.get(err.errno, err.strerror or type(err).__name__)
    where = f" {err.filename}" if err.filename else ""
    return f"{what}{where} failed: {why}"
