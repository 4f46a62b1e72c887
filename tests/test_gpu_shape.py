"""The GPU presets' shape, on the CPU: GPU workers, a coupling service with a CPU of its
own, several trials at once, and GPU nodes that an autoscaler adds from none.

The cluster is a private autoscaling Ray of fake GPU nodes (Ray's fake node
provider; loomray.bench.fake_cluster): a 2-CPU head, and up to 2 nodes of 4 GPUs
and 5 CPUs that exist only once something asks for them. ``LOOMRAY_FAKE_GPUS=1``
runs the "GPU" workers on the CPU. The sweep is the shipped caches.yaml at tiny
sizes (loomray.bench.sweep.caches_shape).
"""

import json
import os
import subprocess

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import loomray_cli

from loomray.bench.fake_cluster import fake_gpu_cluster
from loomray.bench.sweep import caches_shape

ENV = {
    **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    "LOOMRAY_FAKE_GPUS": "1",
    "RAY_AUTH_MODE": "token",
    "COLUMNS": "200",
}


@pytest.fixture(scope="module")
def cluster():
    with fake_gpu_cluster(gpu_nodes=2, gpus_per_node=4, cpus_per_node=5) as address:
        yield address


def _loomray(*args, cwd=None, timeout=600):
    return loomray_cli(*args, cwd=cwd, timeout=timeout, env=ENV, stdin=subprocess.DEVNULL)


def test_train_in_the_gpu_shape_on_a_cluster_with_no_gpu_node_yet(cluster, tmp_path):
    """What the cluster has now (no GPU) is not what it can have: the autoscaler's
    maximum decides, and the GPU nodes come when the workers ask for them."""
    run = _loomray(
        "train", "--config", "digits", "--address", cluster, "--run-dir", str(tmp_path / "r"),
        "train.workers=4", "train.gpus_per_worker=1", "train.cpus_per_worker=1",
        "coupling.service_cpus=1", "train.steps=40", "train.log_every=20",
        "train.ckpt_every=40", "eval.methods=[euler-1]", "eval.n=100",
    )
    text = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "trained digits to step 40" in text
    assert "the coupling service served 4 workers" in text


def test_a_concurrency_the_cluster_can_never_hold_is_refused_before_any_trial(
    cluster, tmp_path
):
    """The shipped 4 trials of 4 GPUs need 16 GPUs; this cluster can grow to 8. Once
    every running trial had its service, no training could be placed: deadlock."""
    spec = {**caches_shape(trials=4, steps=30), "concurrency": 4}
    (tmp_path / "shape.yaml").write_text(yaml.safe_dump(spec))
    run = _loomray(
        "sweep", str(tmp_path / "shape.yaml"), "--address", cluster,
        "--storage", str(tmp_path / "sweeps"),
    )
    text = " ".join(run.stdout.split())
    assert run.returncode == 2, run.stdout + run.stderr
    assert text.count("error:") == 1 and "Traceback" not in run.stderr
    assert (
        "asks for 4 trials at once, each 4 workers x (1 CPU + 1 GPU) + 1 CPU for its coupling "
        "service: 16 GPUs and 20 CPUs, but the cluster can grow to 8 GPU(s); lower "
        "concurrency to 2, or concurrency: auto"
    ) in text
    assert not (tmp_path / "sweeps" / "caches-shape" / "tune").exists()


def test_caches_shape_sweeps_to_the_end_and_no_trial_waits_in_a_slot(cluster, tmp_path):
    spec = caches_shape(trials=6, steps=30)
    (tmp_path / "shape.yaml").write_text(yaml.safe_dump(spec))
    run = _loomray(
        "sweep", str(tmp_path / "shape.yaml"), "--address", cluster,
        "--storage", str(tmp_path / "sweeps"), timeout=900,
    )
    text = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "GPU time held by trials: " in text and "of 8 GPUs" in text
    assert "2 trials at once" in text  # concurrency: auto, on 8 GPUs of 4 per trial
    sweep = tmp_path / "sweeps" / "caches-shape"
    rows = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} <= {"done", "pruned"}
    assert any(r["status"] == "done" for r in rows)
    # a trial that only scored a trained model started after that model was trained:
    # it never sat in a slot waiting for another trial's training
    for path in (sweep / "trials").glob("*.json"):
        r = json.loads(path.read_text())
        if r.get("final") and not r["trained"]:
            started = path.stat().st_mtime - r["trial_seconds"]
            done = sweep / "models" / r["model"] / "done.json"
            assert started >= done.stat().st_mtime - 1.0, r
    # equal images: batch 256 trained half the steps of batch 128
    for model in (sweep / "models").glob("*/config.yaml"):
        cfg = yaml.safe_load(model.read_text())
        assert cfg["train"]["steps"] * cfg["train"]["batch"] == 30 * 128
