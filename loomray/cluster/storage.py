"""Storage every node shares: checked before a run or a sweep writes into it.

A run dir is written by the driver (its config), rank 0 (checkpoints, metrics) and
the coupling service (its journal, appended and synced every step), which may all
run on different nodes, so it must be one POSIX filesystem mounted at the same
path on every node (NFS, EFS, Filestore, Lustre). Object stores are not: their
FUSE mounts (mountpoint-s3, gcsfuse) lack the appends, renames and locks that the
journal, the atomic writes and the locks need. A folder that only some nodes see
fails late and far from its cause (rank 0 cannot open metrics.jsonl at step 100);
``check_shared`` finds it in seconds, on the nodes the cluster has now.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

MARK = ".loomray-shared-"


class StorageError(ValueError):
    """The storage is not shared by every node; the message names one that lacks it."""


def _sees(path: str) -> tuple[str, bool]:
    """On a node: its address, and whether ``path`` is there."""
    import ray

    return ray.util.get_node_ip_address(), os.path.isfile(path)


def check_shared(folder: Path, what: str) -> None:
    """Every node the cluster has now sees a file this driver writes into ``folder``;
    StorageError naming one that does not. One node: nothing to check."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    mark = Path(folder).resolve() / f"{MARK}{uuid.uuid4().hex[:12]}"
    mark.write_text("")
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(mark))
            for n in nodes
        ]
        for ref in refs:
            try:
                ip, seen = ray.get(ref, timeout=120)
            except Exception:  # a node going away (an idle one the autoscaler ends)
                continue  # cannot be asked, and will hold no worker either
            if not seen:
                raise StorageError(
                    f"{what} {folder} is not shared: the node at {ip} does not see it; put "
                    "it on a filesystem that every node mounts at the same path (NFS, EFS, "
                    "Filestore, Lustre; docs/cluster.md)"
                )
    finally:
        mark.unlink(missing_ok=True)
