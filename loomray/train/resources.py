"""What a training holds on a cluster, and a refusal in seconds of one the cluster
can never hold."""

from __future__ import annotations

from loomray.cluster.capacity import Capacity, cluster_capacity, trainings_that_fit
from loomray.cluster.connect import LaunchError
from loomray.config import Config


def training_need(cfg: Config) -> dict[str, float]:
    """What one training holds while it runs, in all: its workers and its service."""
    t = cfg.train
    need = {"CPU": t.workers * t.cpus_per_worker + cfg.coupling.service_cpus}
    if t.gpus_per_worker:
        need["GPU"] = t.workers * t.gpus_per_worker
    return need


def training_bundles(cfg: Config) -> tuple[int, dict[str, float], dict[str, float]]:
    """A training as Ray places it: ``workers`` bundles of one worker's resources (each
    on one node), and its coupling service's."""
    t = cfg.train
    worker = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}
    service = {"CPU": cfg.coupling.service_cpus} if cfg.coupling.service_cpus else {}
    return t.workers, worker, service


def check_resources(cfg: Config, capacity: Capacity | None = None) -> Capacity:
    """Refuse in seconds what the cluster can never schedule, instead of waiting: what
    its nodes have, or what its autoscaler may grow it to (loomray.cluster.capacity), node by
    node (a worker's bundle must fit on one)."""
    cap = capacity or cluster_capacity()
    t = cfg.train
    if trainings_that_fit(cap, *training_bundles(cfg)) != 0:
        return cap  # fits, or the autoscaler's limits are unknown
    most = cap.most or {}
    need = training_need(cfg)
    if need.get("GPU", 0) > most.get("GPU", 0):
        raise LaunchError(
            f"{cfg.name} asks for {t.workers} workers x {t.gpus_per_worker:g} GPU but "
            f"{cap.describe('GPU')}; pass --cpu, fewer --workers, or the --address of a "
            "cluster with GPUs"
        )
    if need["CPU"] > most.get("CPU", 0):
        raise LaunchError(
            f"{cfg.name} asks for {need['CPU']:g} CPUs ({t.workers} workers x "
            f"{t.cpus_per_worker:g} + {cfg.coupling.service_cpus:g} for the coupling service) "
            f"but {cap.describe('CPU')}; lower train.cpus_per_worker or --workers"
        )
    gpu = f" + {t.gpus_per_worker:g} GPU" if t.gpus_per_worker else ""
    raise LaunchError(
        f"{cfg.name}'s {t.workers} workers of {t.cpus_per_worker:g} CPU{gpu} each and its "
        f"coupling service's {cfg.coupling.service_cpus:g} CPU do not fit on the cluster's "
        "nodes (a worker must fit on one node); lower train.cpus_per_worker, or use larger "
        "nodes"
    )
