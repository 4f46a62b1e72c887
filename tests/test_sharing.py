"""Runs and commands that share a machine or a cluster do not touch each other.

The module's own Ray is held by the test process (``ray_session``); beside it runs
another loomray command's local Ray (``other_loomray_cluster``), as a second
`loomray train` or `evaluate` would on a workstation.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from conftest import loomray_cli

from loomray.cluster.connect import NAMESPACE, LaunchError
from loomray.config import load_config
from loomray.files.locks import lock_folder
from loomray.train.launch import launch
from loomray.train.service import claim_service_name, service_name

QUICK = [
    "train.workers=1",
    "train.cpus_per_worker=1",
    "train.log_every=20",
    "eval.methods=[euler-1]",
    "eval.n=100",
]


# the commands' environment: no RAY_ADDRESS, so each command finds its cluster itself
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "COLUMNS": "300"}


def _loomray(*args: str) -> subprocess.CompletedProcess:
    return loomray_cli(*args, stdin=subprocess.DEVNULL)


def _alive_groups() -> list[dict]:
    return [
        pg
        for pg in ray.util.placement_group_table().values()
        if pg["state"] in ("PENDING", "CREATED", "RESCHEDULING", "PREPARED")
    ]


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} after {timeout_s:.0f} s")


@ray.remote(num_cpus=0)
class _Probe:
    """Asks the State API about itself, as Ray Train's PlacementGroupCleaner does about
    the Train controller (a detached actor with a runtime env of its own)."""

    def look(self):
        from ray.util.state import get_actor

        me = ray.get_runtime_context().get_actor_id()
        try:
            state = get_actor(me, timeout=30).state
        except Exception as err:  # "Found multiple active Ray instances", say
            state = f"{type(err).__name__}: {err}"
        return os.environ.get("RAY_ADDRESS"), state


@ray.remote(num_cpus=0)
class _Parent:
    def probe(self):
        child = _Probe.options(lifetime="detached", runtime_env={"env_vars": {"X": "1"}}).remote()
        try:
            return ray.get(child.look.remote())
        finally:
            ray.kill(child)


def test_a_jobs_processes_use_their_own_cluster_beside_another(
    ray_session, other_loomray_cluster
):
    mine = ray.get_runtime_context().gcs_address
    assert other_loomray_cluster != mine
    parent = _Parent.options(runtime_env={"env_vars": {"Y": "1"}}).remote()
    address, state = ray.get(parent.probe.remote())
    assert address == mine
    assert state == "ALIVE"


def _cleaner_story() -> str:
    """The Train actors' states and the PlacementGroupCleaner's own log lines."""
    from ray.util.state import list_actors

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    mine = ray.get_runtime_context().gcs_address
    actors = list_actors(address=mine, raise_on_missing_output=False)
    lines = [f"{a.class_name}: {a.state}" for a in actors]
    for path in sorted(logs.glob("worker-*.err")):
        text = path.read_text(errors="replace")
        if ":actor_name:PlacementGroupCleaner" in text:
            lines.append(f"{path.name}:\n{text[-4000:]}")
    return "\n".join(lines)


@ray.remote(num_cpus=0)
class _Trial:
    """Stands in for a Tune trial: it runs a training, and is killed as ASHA stops it."""

    def train(self, cfg, run_dir):
        launch(cfg, run_dir, progress=False)


def test_a_stopped_trials_training_gives_its_resources_back(
    ray_session, other_loomray_cluster, tmp_path
):
    """Killing the process that runs a training (Tune stopping a trial) ends the Train
    run, and its placement group is removed (by Ray Train's PlacementGroupCleaner, which
    finds its own cluster through the State API), so other trainings can be placed."""
    assert not _alive_groups()
    cfg = load_config("digits", [*QUICK, "train.steps=100000", "train.ckpt_every=100000"])
    run = tmp_path / "run"
    trial = _Trial.remote()
    trial.train.remote(cfg, str(run))
    _wait(lambda: (run / "metrics.jsonl").is_file(), 180, "the training never started")
    assert [pg["bundles"] for pg in _alive_groups()] == [{0: {"CPU": 1.0}}]
    ray.kill(trial)
    try:
        _wait(lambda: not _alive_groups(), 180, "the killed trial's placement group is there")
    except AssertionError as err:  # what Ray's cleaner and the controller were doing
        raise AssertionError(f"{err}\n{_cleaner_story()}") from None
    with lock_folder(run, "run dir"):  # and the dead trial's lock on its run dir is gone
        pass


def test_two_runs_whose_folders_share_a_name_both_finish(ray_session, tmp_path):
    cfg = load_config("digits", [*QUICK, "train.steps=60", "train.ckpt_every=60"])
    runs = [tmp_path / "alice" / "runs" / "digits", tmp_path / "bob" / "runs" / "digits"]
    assert service_name(cfg, runs[0]) != service_name(cfg, runs[1])
    results, errors = {}, []

    def train(run):
        try:
            results[run] = launch(cfg, run, progress=False)
        except Exception as err:  # handed to the test's thread
            errors.append(err)

    threads = [threading.Thread(target=train, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a run did not finish in 600 s"
    assert not errors, errors
    for run in runs:
        r = results[run]
        assert r.step == 60 and r.service["step"] == 59
        assert r.service["run_dir"] == str(run.resolve())
        assert r.service["restarts"] == 0


@ray.remote(num_cpus=0)
class _Keeper:
    """Stands in for a coupling service: it says which driver started it."""

    def __init__(self, holder):
        self.who = holder

    def holder(self):
        return self.who


def _gone(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def test_a_service_another_live_driver_holds_is_never_killed(
    ray_session, tmp_path, monkeypatch
):
    """What a second driver of one run dir meets where the run-dir lock cannot reach it
    (node-local disks on a cluster): a service that stays is another live driver's,
    so the run is busy and the service untouched; one whose driver died goes with it
    and its name is taken; this process's own leftover is ended."""
    from loomray.train import service as service_module

    monkeypatch.setattr(service_module, "SERVICE_GONE_S", 3.0)
    cfg = load_config("digits")
    run = tmp_path / "run"
    name = service_name(cfg, run)
    job = ray.get_runtime_context().get_job_id()
    other = {"pid": 4711, "host": "node-3", "job": job}
    keeper = _Keeper.options(name=name, namespace=NAMESPACE).remote(other)
    assert ray.get(keeper.holder.remote()) == other
    with pytest.raises(LaunchError) as err:
        claim_service_name(name, run)
    assert str(err.value) == (
        f"run dir {run} is in use: its coupling service belongs to the loomray driver with "
        "pid 4711 on node-3; wait for that run to end, or pass another --run-dir"
    )
    assert ray.get(keeper.holder.remote()) == other  # untouched
    # its driver dies: the service goes with it (here: ended a second from now)
    threading.Timer(1.0, ray.kill, args=(keeper,)).start()
    claim_service_name(name, run)
    assert _gone(name)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "job": job}
    keeper = _Keeper.options(name=name, namespace=NAMESPACE).remote(mine)
    ray.get(keeper.holder.remote())
    claim_service_name(name, run)  # an earlier launch of this process left it: ended
    assert _gone(name)


def test_status_lists_the_local_loomray_clusters_and_asks_which(
    ray_session, other_loomray_cluster
):
    mine = ray.get_runtime_context().gcs_address
    run = _loomray("status")
    assert run.returncode == 2, run.stdout + run.stderr
    assert mine in run.stdout and other_loomray_cluster in run.stdout
    assert "Ray clusters run on this machine; pass --address with one of them" in " ".join(
        run.stdout.split()
    )
    picked = _loomray("status", "--address", other_loomray_cluster)
    assert picked.returncode == 1, picked.stdout + picked.stderr
    assert f"no loomray run is active on the cluster at {other_loomray_cluster}" in picked.stdout


def test_a_second_train_into_a_run_dir_is_refused_and_status_finds_the_first(tmp_path):
    """Two `loomray train` into one run dir: the second is refused in one sentence that
    names the first; the first prints the `loomray status` command that shows it, which
    works; its metrics are one run's."""
    run = tmp_path / "run"
    args = ["train", "--config", "digits", "--run-dir", str(run)]
    args += [*QUICK, "train.steps=100000", "train.ckpt_every=400"]
    first = subprocess.Popen(
        [sys.executable, "-m", "loomray", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        # as in a terminal: a test run started in the background (``cmd &``) inherits
        # SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(first.stdout), daemon=True)
    reader.start()
    try:
        _wait(lambda: (run / "metrics.jsonl").is_file(), 240, "the first train never trained")
        second = _loomray(*args)
        text = " ".join(second.stdout.split())
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"error: run dir {run} is in use by loomray train --config digits" in text
        assert f"(pid {first.pid} on {socket.gethostname()}" in text
        assert "starting a local Ray" not in text and "Traceback" not in second.stderr
        hint = _wait(
            lambda: next((x for x in lines if x.startswith("live numbers: ")), None),
            60,
            "train printed no status command",
        )
        command = hint.removeprefix("live numbers: ").split()
        assert command[:3] == ["loomray", "status", "--address"]
        assert command[3:] == [command[3], "--run-dir", str(run.resolve())]
        status = _loomray(*command[1:])
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"run {run.resolve()}" in status.stdout
        other = _loomray(*command[1:4], "--run-dir", str(tmp_path / "not-running"))
        assert other.returncode == 1 and "is not active on this cluster" in other.stdout
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: it saves nothing more, says how to go on
        try:
            first.wait(timeout=180)
        except subprocess.TimeoutExpired:
            first.kill()
            reader.join(timeout=10)
            printed = "".join(lines)[-3000:]
            raise AssertionError(f"Ctrl-C did not end the first train:\n{printed}") from None
        reader.join(timeout=10)
    assert first.returncode == 130, "".join(lines)[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's lines, none twice
