"""`loomray bench sweep`: how busy a sweep keeps a GPU cluster, in the shipped shape.

The shipped caches.yaml (its space, objective, ASHA, equal images per model and
4-GPU trainings with a service CPU) runs at tiny sizes (the digits MLP, a few
steps) on a private autoscaling cluster of fake GPU nodes (loomray.bench.
fake_cluster), twice: with trials waiting in their slot for another trial's
training (as loomray did) and with such proposals put aside (loomray.sweep.
search). Each run reports the share of the cluster's GPU time that trials held.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass
class SweepRun:
    put_aside: bool
    seconds: float
    busy: float  # share of the GPUs x wall clock held by trials
    trained: int
    finished: int
    pruned: int
    concurrency: int
    waited_s: float  # trial-seconds in a slot waiting for another trial's training


def caches_shape(trials: int, steps: int) -> dict:
    """caches.yaml at tiny sizes: its space, objective, scheduler, equal images and
    resources (4 GPU workers of 1 CPU, a service CPU), on the digits MLP."""
    raw = yaml.safe_load(resources.files("loomray.sweeps").joinpath("caches.yaml").read_text())
    every = max(1, steps // 3)
    raw.update(
        name="caches-shape",
        base="digits",
        trials=trials,
        concurrency="auto",
        overrides={
            "coupling.service_cpus": 1,
            "train.steps": steps,
            "train.ckpt_every": steps,
            "train.log_every": every,
            "eval.n": 100,
            "eval.every": every,
        },
        resources={**raw["resources"], "cpus_per_worker": 1},
        scheduler={**raw["scheduler"], "grace_steps": every},
    )
    raw.pop("storage", None)
    return raw


def bench_sweep(
    trials: int, steps: int, gpu_nodes: int, gpus_per_node: int, log=print
) -> list[SweepRun]:
    """The two runs on one fake cluster of ``gpu_nodes`` x ``gpus_per_node`` GPUs."""
    import ray

    from loomray.bench.fake_cluster import fake_gpu_cluster
    from loomray.cluster.connect import connect
    from loomray.sweep import run_sweep, spec_from_dict

    before = os.environ.get("LOOMRAY_FAKE_GPUS")
    os.environ["LOOMRAY_FAKE_GPUS"] = "1"  # sent to every process of the sweeps
    raw = caches_shape(trials, steps)
    runs = []
    cpus = gpus_per_node + 1  # each node: its GPU workers (1 CPU each) and a service
    with tempfile.TemporaryDirectory() as tmp, fake_gpu_cluster(
        gpu_nodes, gpus_per_node, cpus_per_node=cpus
    ) as address:
        connect(address, quiet=True)
        try:
            for put_aside in (False, True):
                spec = spec_from_dict(raw, "caches-shape.yaml", storage=f"{tmp}/{put_aside}")
                spec.put_aside = put_aside
                log(f"sweep with put-aside {'on' if put_aside else 'off'}...")
                r = run_sweep(spec, verbose=0)
                pruned = sum(row["status"] == "pruned" for row in r.rows)
                busy = r.busy[2] if r.busy else 0.0
                runs.append(
                    SweepRun(
                        put_aside,
                        r.seconds,
                        busy,
                        r.trained,
                        r.finished,
                        pruned,
                        r.concurrency,
                        r.waited_s,
                    )
                )
        finally:
            ray.shutdown()
            if before is None:
                os.environ.pop("LOOMRAY_FAKE_GPUS", None)
            else:
                os.environ["LOOMRAY_FAKE_GPUS"] = before
    return runs
