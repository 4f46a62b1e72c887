"""`loomray train` on a real local Ray: service vs replay, exact resume, faults, bad input.

One Ray per module (it costs ~2 GB and seconds to start); each run is a few
dozen steps of the digits preset with 2 CPU workers.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from loomray.cli import app
from loomray.config import load_config
from loomray.coupling import AssignmentTable, LoomCoupling, step_rng
from loomray.data import BatchPlan, build_dataset
from loomray.train.launch import launch
from loomray.train.worker import CHECKPOINT_FILE, TABLE_FILE

STEPS = 60
BASE = ["train.workers=2", "train.log_every=10", "train.ckpt_every=30", "eval.methods=[euler-1]"]


@pytest.fixture(scope="module")
def run_a(ray_session, tmp_path_factory):
    cfg = load_config("digits", [*BASE, f"train.steps={STEPS}"])
    result = launch(cfg, tmp_path_factory.mktemp("runs") / "a", progress=False)
    return cfg, result


def load_run(result):
    payload = torch.load(result.checkpoint / CHECKPOINT_FILE, weights_only=True)
    return payload, AssignmentTable.load(result.checkpoint / TABLE_FILE)


def test_two_workers_through_the_service_equal_the_sequential_algorithm(run_a):
    cfg, result = run_a
    assert result.step == STEPS
    payload, table = load_run(result)
    assert payload["step"] == STEPS and table.step == STEPS
    # replay the same steps in one process, without Ray or the service
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    replay = LoomCoupling(
        AssignmentTable.create(len(dataset), cfg.coupling.caches, seed=cfg.coupling.seed)
    )
    for step in range(STEPS):
        rows = plan.global_rows(step)
        replay.step(rows, dataset.batch(rows).numpy(), step_rng(cfg.coupling.seed, step))
    assert np.array_equal(table.seeds, replay.table.seeds)
    assert (
        table.seeds
        != AssignmentTable.create(len(dataset), cfg.coupling.caches, seed=cfg.coupling.seed).seeds
    ).any()
    assert result.service["solves"] == STEPS and result.service["world"] == 2
    # both ranks sampled a share of the final EMA model's evaluation, rank 0 reported it:
    # the same figure as one process scoring the checkpoint alone
    from loomray.checkpoint import ema_model_of, load_checkpoint
    from loomray.evaluation.evaluate import evaluate_model
    from loomray.evaluation.evaluator import make_evaluator

    ema_cfg, ema = ema_model_of(load_checkpoint(result.checkpoint / CHECKPOINT_FILE))
    (alone,) = evaluate_model(ema, ema_cfg, ["euler-1"], cfg.eval.n, make_evaluator(cfg))
    assert result.metrics["fid/euler-1"] == pytest.approx(alone.value, rel=1e-9)
    assert (result.run_dir / "eval" / f"eval-step{STEPS:07d}-train.json").is_file()
    samples = list((result.run_dir / "samples").glob("*.png"))
    assert samples and (result.run_dir / "metrics.jsonl").read_text().count("\n") == 6


def test_interrupted_and_resumed_equals_uninterrupted(run_a, tmp_path):
    _, full = run_a
    half = load_config("digits", [*BASE, f"train.steps={STEPS // 2}"])
    first = launch(half, tmp_path / "b", progress=False)
    assert first.step == STEPS // 2 and not first.resumed
    # a resume may change what cannot change the result: logging, checkpoints kept
    changed = [*BASE, "train.log_every=15", "train.keep_checkpoints=1"]
    rest = load_config("digits", [*changed, f"train.steps={STEPS}"])
    second = launch(rest, tmp_path / "b", progress=False)
    assert second.resumed and second.step == STEPS
    got, got_table = load_run(second)
    want, want_table = load_run(full)
    assert np.array_equal(got_table.seeds, want_table.seeds)
    for part in ("model", "ema"):
        for k, v in want[part].items():
            assert torch.equal(got[part][k], v), f"{part}.{k} differs after resume"
    assert got["optimizer"]["state"][0]["step"] == want["optimizer"]["state"][0]["step"]


FAULT_STEPS = 160
FAULT_CONFIG = [
    "train.workers=2",
    f"train.steps={FAULT_STEPS}",
    "train.log_every=10",
    "train.ckpt_every=20",
    "train.max_failures=2",
    "coupling.snapshot_every=25",
    "eval.methods=[euler-1]",
]


@pytest.fixture(scope="module")
def fault_reference(ray_session, tmp_path_factory):
    """The fault runs' config, never interrupted."""
    cfg = load_config("digits", FAULT_CONFIG)
    return load_run(launch(cfg, tmp_path_factory.mktemp("runs") / "reference", progress=False))


def saboteur(service, plan, events, status_output):
    """Kill the service (Ray restarts it) or a worker when the service reaches a step."""
    import ray
    from ray.util.state import list_actors

    def step():
        try:
            return ray.get(service.stats.remote(), timeout=10)["step"]
        except Exception:
            return -1

    for target, what in plan:
        deadline = time.time() + 240
        while step() < target and time.time() < deadline:
            time.sleep(0.05)
        if time.time() >= deadline:
            events.append(f"the service never reached step {target}")
            return
        if what == "service":
            if not status_output:
                status_output.append(CliRunner().invoke(app, ["status"]).output)
            ray.kill(service, no_restart=False)
        else:
            workers = list_actors(
                address=ray.get_runtime_context().gcs_address,  # never another Ray's
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            )
            os.kill(workers[-1]["pid"], signal.SIGKILL)
        events.append(f"{what} killed at {target}")


@pytest.mark.parametrize(
    "plan",
    [
        [(40, "service"), (95, "service")],
        [(30, "service"), (70, "worker"), (115, "service")],
    ],
    ids=["service-twice", "service-twice-and-a-worker"],
)
def test_killed_service_and_workers_change_nothing(fault_reference, tmp_path, plan):
    cfg = load_config("digits", FAULT_CONFIG)
    events, status_output, threads = [], [], []

    def start(service):
        threads.append(
            threading.Thread(
                target=saboteur, args=(service, plan, events, status_output), daemon=True
            )
        )
        threads[0].start()

    result = launch(cfg, tmp_path / "faults", progress=False, on_ready=start)
    threads[0].join(timeout=60)  # a kill it failed to make shows in its events
    assert events == [f"{what} killed at {target}" for target, what in plan]
    assert result.step == FAULT_STEPS and result.service["restarts"] == 1
    got, got_table = load_run(result)
    want, want_table = fault_reference
    assert np.array_equal(got_table.seeds, want_table.seeds)
    for part in ("model", "ema"):
        for k, v in want[part].items():
            assert torch.equal(got[part][k], v), f"{part}.{k} differs after the faults"
    # every checkpoint is kept (train.keep_checkpoints 0), for FID over training
    kept = sorted(p.name for p in (tmp_path / "faults" / "train").glob("step-*"))
    assert kept == [f"step-{s:07d}" for s in range(20, FAULT_STEPS + 1, 20)]
    # `loomray status` names the run by its run dir
    assert f"run {tmp_path / 'faults'}" in status_output[0]
    assert "loom, 2 workers" in status_output[0]


def write_fake_cifar(root):
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((40, 3072), np.uint8), "labels": [0] * 40}, f)


def test_bad_requests_end_in_one_sentence_and_touch_nothing(run_a, tmp_path):
    runner = CliRunner()
    write_fake_cifar(tmp_path / "cifar")
    start = time.time()
    out = runner.invoke(
        app,
        [
            "train",
            "--config",
            "cifar10",
            f"data.root={tmp_path / 'cifar'}",
            "--run-dir",
            str(tmp_path / "gpu"),
        ],
    )
    assert out.exit_code == 2 and "4 workers x 1 GPU but the cluster has 0 GPU" in out.output
    assert time.time() - start < 30 and not (tmp_path / "gpu").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    out = runner.invoke(app, ["train", "--config", "digits", "--run-dir", str(occupied)])
    assert out.exit_code == 2 and "not empty and holds no loomray run" in out.output
    assert (occupied / "notes.txt").read_text() == "mine" and len(list(occupied.iterdir())) == 1

    _, result = run_a
    before = (result.run_dir / "config.yaml").read_text()
    out = runner.invoke(
        app,
        ["train", "--config", "digits", *BASE, "train.lr=0.5", "--run-dir", str(result.run_dir)],
    )
    assert out.exit_code == 2 and "holds a run with another config (train.lr" in out.output
    assert (result.run_dir / "config.yaml").read_text() == before

    out = runner.invoke(
        app, ["train", "--config", "digits", "--resume", "--run-dir", str(tmp_path / "empty")]
    )
    assert out.exit_code == 2 and "nothing to resume" in out.output

    out = runner.invoke(app, ["train", "--config", "digits", "train.workers=3"])
    assert out.exit_code == 2 and "not divisible by train.workers 3" in out.output


def test_a_service_that_cannot_be_placed_ends_in_one_sentence(ray_session):
    import ray

    from loomray.train.service import LaunchError, wait_for_service

    @ray.remote(num_cpus=64)
    class Unplaceable:
        def ping(self):
            return True

    with pytest.raises(LaunchError, match=r"\(coupling.service_cpus 64 CPU\) could not be placed"):
        wait_for_service(Unplaceable.remote(), 64, limit_s=2)
