"""Two Ray nodes on one machine (`ray start --head` + `ray start --address`, each with
its own ports and one CPU); `loomray train --address` puts one worker on each, and
the coupling service must serve both."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import free_ports, ray_node, stop_private, wait_for_nodes, wait_for_port


def _ray(*args, env):
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    return subprocess.run([ray_bin, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node, each `ray start --block` in a session of its own and
    ended by it: no other Ray on the machine is touched."""
    # The nodes never see loomray's settings: only the driver has them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOMRAY_")}
    env["RAY_AUTH_MODE"] = "token"
    out = _ray("get-auth-token", "--generate", env=env)  # token auth stays on
    assert out.returncode == 0, out.stderr
    gcs, dash, client, *head_ports = free_ports(7)

    def node(ports):
        """What every node gets of its own: one CPU, no GPU, its own agent ports."""
        metrics, listen, grpc, runtime_env = ports
        return [
            "--num-cpus=1",
            "--num-gpus=0",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={listen}",
            f"--dashboard-agent-grpc-port={grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            "--disable-usage-stats",
        ]

    nodes = [
        ray_node(
            "--head",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            *node(head_ports),
            env=env,
        )
    ]
    try:
        wait_for_port(gcs)
        # chosen only now: the head's start binds many ports of its own
        nodes.append(ray_node(f"--address=127.0.0.1:{gcs}", *node(free_ports(4)), env=env))
        wait_for_nodes(f"127.0.0.1:{gcs}", 2, env)
        yield f"127.0.0.1:{gcs}", env
    finally:
        for proc in reversed(nodes):
            stop_private(proc)


def test_train_spreads_over_two_nodes_and_the_service_serves_both(two_nodes, tmp_path):
    """Also: a setting only the driver has (LOOMRAY_CACHE) reaches the workers."""
    address, env = two_nodes
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loomray",
            "train",
            "--config",
            "digits",
            "--address",
            address,
            "--run-dir",
            str(tmp_path / "run"),
            "train.workers=2",
            "train.cpus_per_worker=1",
            "train.steps=60",
            "train.log_every=10",
            "train.ckpt_every=30",
            "eval.methods=[euler-1]",
            "eval.n=200",
        ],
        # a relative cache path, set for the driver only
        env={**env, "COLUMNS": "200", "LOOMRAY_CACHE": "driver-cache"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "trained digits to step 60" in text
    # 2 CPUs in all, one per node, 1 CPU per worker: one rank per node
    assert "the coupling service served 2 workers on 2 nodes" in text, text[-2000:]
    assert "rank 0: " in text and "rank 1: " in text
    assert (tmp_path / "run" / "train").is_dir()
    # rank 0's final FID read and wrote the driver's cache: the setting reached it
    assert (tmp_path / "driver-cache" / "digits-classifier.pt").is_file()
    assert any((tmp_path / "driver-cache" / "fid").iterdir())


def test_driver_settings_carry_every_loomray_variable_with_absolute_paths(
    monkeypatch, tmp_path
):
    from loomray.cluster.connect import driver_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOOMRAY_FID_WEIGHTS", "weights/pt_inception.pth")
    monkeypatch.setenv("LOOMRAY_CACHE", "~/somewhere")
    monkeypatch.setenv("LOOMRAY_SOMETHING_NEW", "as is")
    monkeypatch.setenv("UNRELATED", "no")
    monkeypatch.setenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    got = driver_settings()
    assert got["LOOMRAY_FID_WEIGHTS"] == str(tmp_path / "weights" / "pt_inception.pth")
    assert got["LOOMRAY_CACHE"] == os.path.expanduser("~/somewhere")
    assert got["LOOMRAY_SOMETHING_NEW"] == "as is" and "UNRELATED" not in got
    assert got["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25"
    assert got["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"  # a sweep's Tuner may run remotely
