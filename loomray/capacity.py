"""What a Ray cluster can ever hold: its nodes now, or its autoscaler's maximum.

    cap = cluster_capacity()      # once connected
    cap.most["GPU"]               # 16.0 on a cluster that may grow to 4 x 4 GPUs
    cap.source                    # "autoscaler", "nodes" or "unknown"

A cluster started from the shipped launcher or KubeRay files begins with no GPU
node at all and adds them on demand, so what it has now says nothing about what a
run may ask for. Ray 2.60's autoscalers do not publish their maximum (Ray Train's
own check reads a cluster config that they never report), so loomray reads it
where it can: the cluster config in the GCS when there is one, else the
autoscaling config of this cluster's autoscaler (the ``--autoscaling-config`` file
of its monitor process, on the head node: where `ray up` and `ray exec` run
drivers). When an autoscaler runs but its config cannot be read (a driver off the
head node, KubeRay), the capacity is "unknown" and nothing is refused for want of
nodes that the autoscaler may add.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

STATUS_KEY = b"__autoscaling_status"


@dataclass(frozen=True)
class Capacity:
    now: dict[str, float]
    most: dict[str, float] | None  # None: an autoscaler may add nodes, up to unknown
    source: str

    def describe(self, resource: str) -> str:
        """``the cluster has 2 GPU(s)``, ``the cluster can grow to 16 GPU(s)``."""
        value = (self.most or self.now).get(resource, 0.0)
        verb = "can grow to" if self.source == "autoscaler" else "has"
        return f"the cluster {verb} {value:g} {resource}(s)"


def cluster_capacity() -> Capacity:
    """What the connected cluster can ever hold (see the module docstring)."""
    import ray

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:
        published = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # Ray Client, or an older GCS
        published = None
    if published:
        return Capacity(now, _at_least(now, published), "autoscaler")
    if not _autoscaler_runs():
        return Capacity(now, now, "nodes")
    config = _autoscaling_config(ray.get_runtime_context().gcs_address)
    if config is None:
        return Capacity(now, None, "unknown")
    return Capacity(now, _at_least(now, max_resources(config)), "autoscaler")


def _at_least(now: dict[str, float], most: dict[str, float]) -> dict[str, float]:
    return {k: max(float(now.get(k, 0)), float(most.get(k, 0))) for k in set(now) | set(most)}


def _autoscaler_runs() -> bool:
    """Whether the cluster has an autoscaler (it reports its status to the GCS)."""
    import ray

    try:
        return bool(ray.experimental.internal_kv._internal_kv_get(STATUS_KEY))
    except Exception:
        return False


def _autoscaling_config(gcs_address: str) -> dict | None:
    """The autoscaling config of the monitor of ``gcs_address`` on this machine."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args[:3]):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if flags.get("gcs-address") != gcs_address or "autoscaling-config" not in flags:
            continue
        try:
            text = Path(flags["autoscaling-config"]).expanduser().read_text()
            return json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            return None
    return None


def max_resources(config: dict) -> dict[str, float]:
    """The most of each resource an autoscaling config's nodes can add up to: the head,
    and up to each worker type's ``max_workers``, within the global ``max_workers``
    (the types richest in a resource first, for that resource)."""
    types = config.get("available_node_types") or {}
    head = types.get(config.get("head_node_type"), {}).get("resources", {})
    workers = [
        (int(t.get("max_workers", 0)), t.get("resources", {}))
        for name, t in types.items()
        if name != config.get("head_node_type")
    ]
    limit = int(config.get("max_workers", sum(n for n, _ in workers)))
    keys = set(head).union(*(r for _, r in workers)) if workers else set(head)
    out = {}
    for key in keys:
        left, total = limit, float(head.get(key, 0))
        for n, res in sorted(workers, key=lambda w: -float(w[1].get(key, 0))):
            take = min(n, left)
            total += take * float(res.get(key, 0))
            left -= take
        out[key] = total
    return out


def fits(need: dict[str, float], capacity: Capacity) -> list[str]:
    """The resources of ``need`` the cluster can never give (empty when all fit, or
    when an autoscaler may add nodes without a known limit)."""
    if capacity.most is None:
        return []
    return [k for k, v in need.items() if v > capacity.most.get(k, 0.0) + 1e-9]
