"""A private autoscaling Ray cluster of fake GPU nodes on this machine.

    with fake_gpu_cluster(gpu_nodes=2, gpus_per_node=4) as address:
        ...  # LOOMRAY_FAKE_GPUS=1 loomray sweep ... --address <address>

Ray's resources are logical: Ray's fake node provider starts nodes (processes on
this machine) that declare GPUs they do not have, and its autoscaler adds them on
demand, from none, up to ``gpu_nodes``, as a cloud cluster's would. loomray's
"GPU" workers then train on the CPU (``LOOMRAY_FAKE_GPUS=1``,
``loomray.cluster.connect.fake_gpus``). The GPU presets' shape (GPU workers, a
service CPU, several trials, autoscaling from zero GPU nodes) so runs in CI and
in `loomray bench sweep`.

Everything it starts lives in one process session of its own and is ended by it
(never `ray stop`, which would end every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAKE_TYPE = "gpu-node"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_private(args: list[str], env: dict | None = None, log=None) -> subprocess.Popen:
    """A process (and all it starts) in a session of its own, for ``stop_private``."""
    return subprocess.Popen(
        args,
        env=env,
        start_new_session=True,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _session_members(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) != sid:
                    continue
                with open(f"/proc/{name}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(int(name))
    return out


def stop_private(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """End ``proc``'s session: it and every process it started (Ray's GCS, raylets,
    dashboard, workers, the autoscaler's nodes), and nothing else on the machine."""
    deadline = time.monotonic() + timeout_s
    sig = signal.SIGTERM
    while time.monotonic() < deadline:
        proc.poll()  # reaps it once it has ended
        members = _session_members(proc.pid)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(1)
        sig = signal.SIGKILL  # Ray's processes may ignore the polite one
    proc.wait(timeout=10)
    for folder in getattr(proc, "private_dirs", ()):
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def autoscaling_config(
    gcs_address: str, head_cpus: int, gpu_nodes: int, gpus_per_node: int, cpus_per_node: int
) -> dict:
    """Ray's fake-provider autoscaling config: a CPU head, up to ``gpu_nodes`` GPU nodes."""
    return {
        "cluster_name": "loomray-fake",
        "max_workers": gpu_nodes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus},
                "node_config": {},
                "max_workers": 0,
            },
            FAKE_TYPE: {
                "resources": {"CPU": cpus_per_node, "GPU": gpus_per_node},
                "node_config": {},
                "min_workers": 0,
                "max_workers": gpu_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1.0,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@contextmanager
def fake_gpu_cluster(
    gpu_nodes: int = 2, gpus_per_node: int = 4, cpus_per_node: int = 4, head_cpus: int = 2
) -> Iterator[str]:
    """Start the cluster (no GPU node yet) and yield its address; end it after."""
    from ray._private.services import get_node_ip_address

    gcs, dashboard = free_ports(2)
    address = f"{get_node_ip_address()}:{gcs}"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths: 107 bytes at most
    config = Path(temp) / "autoscaling.json"
    config.write_text(
        json.dumps(autoscaling_config(address, head_cpus, gpu_nodes, gpus_per_node, cpus_per_node))
    )
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.setdefault("RAY_AUTH_MODE", "token")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    args = [ray_bin, "start", "--head", "--block", f"--port={gcs}", f"--temp-dir={temp}"]
    args += [f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1"]
    args += [f"--num-cpus={head_cpus}", "--num-gpus=0", f"--autoscaling-config={config}"]
    args += ["--disable-usage-stats"]
    with open(Path(temp) / "head.log", "w") as log:
        proc = start_private(args, env=env, log=log)
    proc.private_dirs = [temp]
    try:
        wait_for_port(gcs)
        yield address
    finally:
        stop_private(proc)
