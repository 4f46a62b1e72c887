"""What a cluster can hold, node by node, without a Ray: the largest cluster an
autoscaling config allows, and how many trainings (worker bundles + a service)
fit on it with each service where it hurts most."""

import yaml

from loomray.cluster.capacity import Capacity, largest_cluster, trainings_that_fit

GPU_WORKER = {"CPU": 4.0, "GPU": 1.0}
SERVICE = {"CPU": 1.0}


def _cap(nodes):
    return Capacity({}, nodes, "autoscaler")


def test_the_shipped_launcher_config_grows_to_four_4gpu_nodes():
    config = yaml.safe_load(open("cluster/aws-gpu.yaml"))
    nodes = largest_cluster(config)
    gpus = sorted(n.get("GPU", 0) for n in nodes)
    assert gpus.count(4.0) == 4 and sum(gpus) == 16
    # the caches.yaml training (4 workers x (4 CPU + 1 GPU) + 1 CPU) fits 4 at once
    assert trainings_that_fit(_cap(nodes), 4, GPU_WORKER, SERVICE) == 4


def test_the_global_worker_limit_and_types_without_a_limit():
    config = {
        "max_workers": 4,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8}},
            "gpu4": {"resources": {"CPU": 16, "GPU": 4}},  # no max_workers: the global one
            "cpu64": {"resources": {"CPU": 64}, "max_workers": 4},
        },
    }
    nodes = largest_cluster(config)
    assert len(nodes) == 5 and sum(n.get("GPU", 0) for n in nodes) == 16  # GPU nodes first
    assert largest_cluster({"available_node_types": "nonsense"}) is None


def test_a_service_can_take_the_cpu_a_gpu_worker_needed():
    """One 4-GPU node of 16 CPUs beside an 8-CPU head: the totals (24 CPUs, 4 GPUs)
    hold a training of 4 x (4 CPU + 1 GPU) + 1 CPU, but if its service lands on the
    GPU node only three workers fit there: no training can ever start."""
    head, gpu_node = {"CPU": 8.0}, {"CPU": 16.0, "GPU": 4.0}
    assert trainings_that_fit(_cap([head, gpu_node]), 4, GPU_WORKER, SERVICE) == 0
    roomy = {"CPU": 48.0, "GPU": 4.0}  # the shipped g5.12xlarge
    assert trainings_that_fit(_cap([head, roomy, roomy]), 4, GPU_WORKER, SERVICE) == 2
    assert trainings_that_fit(_cap([head, roomy]), 4, GPU_WORKER, {}) == 1
    assert trainings_that_fit(Capacity({}, None, "unknown"), 4, GPU_WORKER, SERVICE) is None


def test_a_local_ray_is_as_large_as_its_nodes(monkeypatch):
    """Every head runs a monitor; a local Ray's has no autoscaling config, so its
    capacity is its nodes (not "unknown", which would let a GPU run wait forever)."""
    from loomray.cluster import capacity as capacity

    now = {"CPU": 2.0}
    fake = type("Ctx", (), {"gcs_address": "10.0.0.1:6379"})()
    monkeypatch.setattr("ray.cluster_resources", lambda: now)
    monkeypatch.setattr("ray.nodes", lambda: [{"Alive": True, "Resources": now}])
    monkeypatch.setattr("ray.get_runtime_context", lambda: fake)
    monkeypatch.setattr(capacity, "_published_nodes", lambda: None)
    monkeypatch.setattr(capacity, "_autoscaler_runs", lambda: True)
    flags = {"gcs-address": "10.0.0.1:6379"}
    monkeypatch.setattr(capacity, "_monitor_flags", lambda address: flags)
    cap = capacity.cluster_capacity()
    assert cap.source == "nodes" and cap.most == {"CPU": 2.0}
    assert trainings_that_fit(cap, 1, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.0}) == 0

    monkeypatch.setattr(capacity, "_monitor_flags", lambda address: None)  # head elsewhere
    assert capacity.cluster_capacity().source == "unknown"
