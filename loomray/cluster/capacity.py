"""What a Ray cluster can ever hold: its nodes now, or its autoscaler's largest cluster.

    cap = cluster_capacity()           # once connected
    cap.most["GPU"]                    # 16.0 on a cluster that may grow to 4 x 4 GPUs
    trainings_that_fit(cap, workers=4, worker={"CPU": 4, "GPU": 1}, service={"CPU": 1})

A cluster started from the shipped launcher or KubeRay files begins with no GPU
node at all and adds them on demand, so what it has now says nothing about what a
run may ask for. Ray 2.60's autoscalers do not publish their maximum (Ray Train's
own check reads a cluster config that they never report), so loomray reads it
where it can: the cluster config in the GCS when there is one, else the
autoscaling config of this cluster's autoscaler (the ``--autoscaling-config`` file
of its monitor process, on the head node: where `ray up` and `ray exec` run
drivers). When an autoscaler runs but its config cannot be read (a driver off the
head node, KubeRay), or its node groups are unbounded, the capacity is "unknown"
and nothing is refused for want of nodes that the autoscaler may add.

Capacity is counted node by node, because a worker's bundle must fit on one node:
whether trainings fit is checked by placing them (``trainings_that_fit``), each
training's coupling service where it hurts most.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

STATUS_KEY = b"__autoscaling_status"
UNBOUNDED = 10**9  # a node group without a limit


@dataclass(frozen=True)
class Capacity:
    now: dict[str, float]
    nodes: list[dict[str, float]] | None  # the largest cluster, node by node; None: unknown
    source: str  # "nodes", "autoscaler" or "unknown"

    @property
    def most(self) -> dict[str, float] | None:
        """The largest cluster's resources in all (None: unknown)."""
        if self.nodes is None:
            return None
        out: dict[str, float] = {}
        for node in self.nodes:
            for k, v in node.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def describe(self, resource: str) -> str:
        """``the cluster has 2 GPU(s)``, ``the cluster can grow to 16 GPU(s)``."""
        value = (self.most or self.now).get(resource, 0.0)
        verb = "can grow to" if self.source == "autoscaler" else "has"
        return f"the cluster {verb} {value:g} {resource}(s)"


def cluster_capacity() -> Capacity:
    """What the connected cluster can ever hold (see the module docstring)."""
    import ray

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    alive = [
        {k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n["Alive"]
    ]
    published = _published_nodes()
    if published is not None:
        return _grown(now, alive, published)
    if not _autoscaler_runs():
        return Capacity(now, alive, "nodes")
    flags = _monitor_flags(ray.get_runtime_context().gcs_address)
    if flags is not None and "autoscaling-config" not in flags:
        return Capacity(now, alive, "nodes")  # a local Ray's monitor: nothing to scale
    config = _autoscaling_config(flags) if flags is not None else None
    nodes = largest_cluster(config) if isinstance(config, dict) else None
    return _grown(now, alive, nodes)


def _grown(now, alive, nodes) -> Capacity:
    if nodes is None or any(n.get("__unbounded__") for n in nodes):
        return Capacity(now, None, "unknown")
    return Capacity(now, nodes if len(nodes) >= len(alive) else alive, "autoscaler")


def _published_nodes() -> list[dict[str, float]] | None:
    """The cluster config's node groups in the GCS (where an autoscaler reports it)."""
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # Ray Client, or an older GCS
        return None
    if config is None or not config.node_group_configs:
        return None
    nodes: list[dict[str, float]] = []
    for group in config.node_group_configs:
        count = group.max_count
        resources = {k: float(v) for k, v in group.resources.items()}
        if count < 0 or count >= UNBOUNDED:
            return [{"__unbounded__": 1.0}]
        nodes += [dict(resources) for _ in range(count)]
    return nodes


def _autoscaler_runs() -> bool:
    """Whether the cluster has an autoscaler (it reports its status to the GCS)."""
    import ray

    try:
        return bool(ray.experimental.internal_kv._internal_kv_get(STATUS_KEY))
    except Exception:
        return False


def _monitor_flags(gcs_address: str) -> dict[str, str] | None:
    """The ``--flag=value`` arguments of the monitor (autoscaler) of ``gcs_address`` on
    this machine; None when it runs elsewhere. Every head runs one, a local Ray's
    without an ``--autoscaling-config``."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args[:3]):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if flags.get("gcs-address") == gcs_address:
            return flags
    return None


def _autoscaling_config(flags: dict[str, str]) -> dict | None:
    """The autoscaling config a monitor was started with (None: unreadable)."""
    try:
        text = Path(flags["autoscaling-config"]).expanduser().read_text()
        return json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (KeyError, OSError, ValueError, yaml.YAMLError):
        return None


def _count(value, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def largest_cluster(config: dict) -> list[dict[str, float]] | None:
    """The nodes of the largest cluster an autoscaling config allows: the head and, up
    to the global ``max_workers``, each worker type's ``max_workers`` (a type without
    one: the global limit, as Ray fills it in), GPU-richest types first. None when
    the config cannot be read."""
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        return None
    head_name = config.get("head_node_type")
    kinds = [
        (name, t if isinstance(t, dict) else {}) for name, t in types.items() if name != head_name
    ]
    cap = _count(config.get("max_workers"), sum(_count(t.get("max_workers"), 0) for _, t in kinds))
    nodes = [_resources(types.get(head_name, {}))] if head_name in types else []
    kinds.sort(key=lambda kt: (-_resources(kt[1]).get("GPU", 0), -_resources(kt[1]).get("CPU", 0)))
    for _, t in kinds:
        take = min(_count(t.get("max_workers"), cap), cap)
        nodes += [_resources(t) for _ in range(max(0, take))]
        cap -= max(0, take)
    return nodes


def _resources(node_type: dict) -> dict[str, float]:
    res = node_type.get("resources") if isinstance(node_type, dict) else None
    return {k: float(v) for k, v in (res or {}).items() if isinstance(v, (int, float))}


def _bundles(node: dict[str, float], worker: dict[str, float]) -> int:
    """How many worker bundles fit on a node."""
    fits = [int(node.get(k, 0.0) // v) for k, v in worker.items() if v > 0]
    return max(0, min(fits)) if fits else UNBOUNDED


def trainings_that_fit(
    capacity: Capacity,
    workers: int,
    worker: dict[str, float],
    service: dict[str, float],
    most: int = 64,
) -> int | None:
    """How many trainings (``workers`` bundles of ``worker`` each, and a coupling
    service) the largest cluster holds at once, node by node, each service placed
    where it leaves the fewest worker bundles; None when the capacity is unknown."""
    if capacity.nodes is None:
        return None
    free = [dict(n) for n in capacity.nodes]
    for k in range(1, most + 1):
        if not _place_service(free, worker, service):
            return k - 1
        if sum(min(_bundles(n, worker), UNBOUNDED) for n in free) < k * workers:
            return k - 1
    return most


def _place_service(free: list[dict[str, float]], worker, service) -> bool:
    """Put one service on the node where it costs the most worker bundles."""
    best, cost = None, -1
    for node in free:
        if all(node.get(k, 0.0) >= v for k, v in service.items()):
            after = {**node, **{k: node.get(k, 0.0) - v for k, v in service.items()}}
            lost = _bundles(node, worker) - _bundles(after, worker)
            if lost > cost:
                best, cost = node, lost
    if best is None:
        return False
    for k, v in service.items():
        best[k] = best.get(k, 0.0) - v
    return True
