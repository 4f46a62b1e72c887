"""A run's coupling service on the cluster: its name, who holds it, starting it and
waiting for Ray to place it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from loomray.cluster.connect import NAMESPACE, LaunchError
from loomray.config import Config, run_id, run_label
from loomray.coupling.service import CouplingService, ServiceSpec

SERVICE_PREFIX = "coupling:"


def service_step(service) -> int | None:
    """The step the coupling service last solved, if it still answers."""
    import ray

    try:
        return int(ray.get(service.stats.remote(), timeout=5)["step"])
    except Exception:  # the service may be gone with the cluster
        return None


def service_name(cfg: Config, run_dir: Path) -> str:
    """The coupling service's actor name: ``coupling:`` and the run's label (its run
    dir's name for people, and a digest of its identity, ``loomray.config.run_label``)."""
    return f"{SERVICE_PREFIX}{run_label(cfg, run_dir)}"


def _driver() -> dict[str, Any]:
    """Who starts a service: this process and its Ray job."""
    import ray

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job": ray.get_runtime_context().get_job_id(),
    }


SERVICE_GONE_S = 30.0  # how long a service whose driver died may take to go with it


def claim_service_name(name: str, run_dir: Path) -> None:
    """Free ``name`` for this driver. A service of this run that this process left (an
    earlier launch in it) is ended. Any other goes with its driver when that dies
    (the service is owned by it), so it is waited for; one still there after
    ``SERVICE_GONE_S`` belongs to a live driver: the run is busy, and it is left alone."""
    import ray

    try:
        old = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return
    try:
        holder = ray.get(old.holder.remote(), timeout=10)
    except ray.exceptions.RayActorError:  # dead already, the name about to be free
        holder = None
    except Exception:  # restarting, or busy: somebody's live service all the same
        holder = {}
    me = _driver()
    if holder and (holder.get("pid"), holder.get("host")) == (me["pid"], me["host"]):
        ray.kill(old)
    if _name_freed(name, SERVICE_GONE_S):
        return
    who = (
        f"the loomray driver with pid {holder['pid']} on {holder['host']}"
        if holder
        else "another loomray driver"
    )
    raise LaunchError(
        f"run dir {run_dir} is in use: its coupling service belongs to {who}; wait for "
        "that run to end, or pass another --run-dir"
    )


def _name_freed(name: str, timeout_s: float) -> bool:
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def start_service(cfg: Config, rows: int, run_dir: Path):
    """The CouplingService actor, created here on the driver and never in a worker."""
    import ray

    name = service_name(cfg, run_dir)
    pairs_root = None  # the pairs coupling reads its rows' seeds from the pairs folder
    if cfg.coupling.kind == "pairs":
        pairs_root = str(Path(cfg.data.root).expanduser().resolve())
    claim_service_name(name, run_dir)
    spec = ServiceSpec(
        kind=cfg.coupling.kind,
        rows=rows,
        caches=cfg.coupling.caches,
        cost=cfg.coupling.cost,
        seed=cfg.coupling.seed,
        world=cfg.train.workers,
        snapshot_dir=str((run_dir / "coupling").resolve()),
        snapshot_every=cfg.coupling.snapshot_every,
        timeout_s=cfg.coupling.timeout_s,
        run=run_label(cfg, run_dir),
        run_id=run_id(cfg),
        pairs=pairs_root,
        run_dir=str(run_dir.resolve()),
        driver=_driver(),
        threads=max(1, int(cfg.coupling.service_cpus)),
    )
    actor = ray.remote(CouplingService).options(
        name=name,
        namespace=NAMESPACE,
        max_restarts=3,
        num_cpus=cfg.coupling.service_cpus,
    )
    try:
        handle = actor.remote(spec)
    except ValueError as err:  # another driver took the name since it was claimed
        raise LaunchError(
            f"run dir {run_dir} is in use: another loomray driver started its coupling "
            "service just now; wait for that run to end, or pass another --run-dir"
        ) from err
    wait_for_service(handle, cfg.coupling.service_cpus)
    return handle


SERVICE_PLACED_S = 600.0  # an autoscaler may need minutes to add a node


def wait_for_service(handle, cpus: float, limit_s: float = SERVICE_PLACED_S) -> None:
    """Wait for the service actor to start, saying so every minute; LaunchError when
    it cannot be placed in ``limit_s`` (its CPUs are taken, or no node has them)."""
    import ray
    from ray.exceptions import GetTimeoutError

    ping, started = handle.ping.remote(), time.time()
    while True:
        try:
            ray.get(ping, timeout=min(60.0, max(0.1, limit_s - (time.time() - started))))
            return
        except GetTimeoutError:
            waited = time.time() - started
            if waited >= limit_s:
                ray.kill(handle)
                raise LaunchError(
                    f"the coupling service (coupling.service_cpus {cpus:g} CPU) could not "
                    f"be placed in {waited:.0f} s: the cluster's CPUs are taken by other "
                    "runs, or no node has them free; wait for them, or lower "
                    "coupling.service_cpus"
                ) from None
            print(f"waiting {waited:.0f} s for the coupling service to be placed", flush=True)
