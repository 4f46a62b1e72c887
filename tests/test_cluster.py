"""The shipped cluster files: the launcher YAML against Ray's own JSON schema, the
KubeRay manifests' structure, and the commands they run against loomray's CLI."""

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from loomray.config import load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def _train_args(command: str):
    """``loomray train --config X --opt v a.b=c`` -> (config, options, overrides)."""
    words = shlex.split(command)
    assert words[:2] == ["loomray", "train"], command
    options, overrides, i = {}, [], 2
    while i < len(words):
        if words[i].startswith("--"):
            options[words[i]] = words[i + 1]
            i += 2
        else:
            overrides.append(words[i])
            i += 1
    return options.pop("--config"), options, overrides


def test_launcher_yaml_is_valid_for_ray():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    # a schema check passes on nonsense too: make sure it does fail on a broken file
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "available_node_types": {"x": {"resources": {}}}}, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t.get("max_workers", 0) >= 1 for n, t in types.items() if n != "head")
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ~/loomray" in setup and config["file_mounts"]["~/loomray"] == "."
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all(
        "RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "start" in c
    )
    assert "~/.ray/auth_token" in config["file_mounts"]


def _docs(name):
    return list(yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()))


def _token_env(container):
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_raycluster_manifest():
    cluster, pvc = _docs("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    head = cluster["spec"]["headGroupSpec"]
    groups = cluster["spec"]["workerGroupSpecs"]
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in groups]
    # token auth through KubeRay's authOptions: the operator puts the Secret's token
    # on every container and uses it itself (polling RayJobs), so no pod sets its own
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "loomray-ray-token"}
    for p in pods:
        for c in p["containers"]:
            assert not {e["name"] for e in c.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    for p in pods:
        assert {v["persistentVolumeClaim"]["claimName"] for v in p["volumes"]} == {
            pvc["metadata"]["name"]
        }
        assert p["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/shared"
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node reads snapshots
    (gpu,) = groups
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "4"
    assert head["rayStartParams"]["num-gpus"] == "0"
    for spec in [head, *groups]:
        for key, value in spec["rayStartParams"].items():
            assert isinstance(value, str), f"rayStartParams.{key} must be a string"
    # the preset the job runs fits one GPU group
    cfg = load_config("cifar10")
    assert cfg.train.workers * cfg.train.gpus_per_worker <= int(limits["nvidia.com/gpu"])
    assert cfg.train.workers * cfg.train.cpus_per_worker <= float(limits["cpu"])


def test_rayjob_runs_loomray_train_on_that_cluster():
    (cluster, _), (job,) = _docs("raycluster.yaml"), _docs("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    config, options, overrides = _train_args(job["spec"]["entrypoint"])
    cfg = load_config(config, overrides)  # the command's config is valid
    assert cfg.name == "cifar10" and options["--address"] == "auto"
    assert options["--run-dir"].startswith("/mnt/shared/")
    assert parse_overrides(overrides)["data"]["root"].startswith("/mnt/shared/")
    (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert _token_env(submitter) == ("loomray-ray-token", "auth_token")


def test_dockerfile_installs_loomray_on_the_matching_ray_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in text
    assert "pip install" in text


def test_grafana_dashboard_uses_loomrays_metrics():
    dash = json.loads((CLUSTER / "grafana" / "loomray-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    service = (ROOT / "loomray" / "coupling" / "telemetry.py").read_text()
    worker = (ROOT / "loomray" / "train" / "evaluation.py").read_text()
    for name in (
        "loomray_coupling_solve_seconds",
        "loomray_worker_wait_seconds",
        "loomray_coupling_swaps",
        "loomray_coupling_cost_pre",
        "loomray_coupling_cost_post",
        "loomray_coupling_queue_depth",
        "loomray_coupling_step",
        "loomray_train_loss",
        "loomray_train_images_per_second",
        "loomray_eval_quality",
    ):
        assert f'"{name}"' in service + worker, name  # still a metric the code defines
        assert f"ray_{name}" in exprs, name  # and on a panel, as Prometheus names it
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
