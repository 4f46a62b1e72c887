"""The driver of `loomray train`: check, connect, start the service, run Ray Train.

    result = launch(cfg, run_dir="runs/digits")

A run directory holds ``config.yaml``, the Ray Train storage (``train/``, one
folder per checkpoint with ``checkpoint.pt`` and ``table.parquet``), the coupling
service's snapshots (``coupling/``), ``metrics.jsonl`` and ``samples/``.
Launching into a directory that holds the same run resumes it from its latest
checkpoint (Ray Train V2 restores a run of the same storage path and name); a
directory holding another run, or anything else, is refused untouched, and so is a
run dir that another process writes into (``loomray.files.locks``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loomray.checkpoint import CheckpointError, check_loom_table, init_weights, latest_step
from loomray.cluster.capacity import Capacity, cluster_capacity, trainings_that_fit
from loomray.cluster.connect import NAMESPACE, LaunchError, connect, fake_gpus
from loomray.cluster.storage import StorageError, check_shared
from loomray.config import (
    Config,
    ConfigError,
    config_from_dict,
    dump_config,
    run_id,
    run_identity,
    run_label,
)
from loomray.coupling.service import CouplingService, ServiceSpec
from loomray.data import build_dataset
from loomray.files.durable import write_text
from loomray.files.locks import holds_anything, lock_folder
from loomray.latents.autoencoder import AutoencoderError
from loomray.paths import PathError, folder_to_write

SERVICE_PREFIX = "coupling:"


class Interrupted(Exception):
    """Ctrl-C stopped training: where it was, and the step its last checkpoint holds."""

    def __init__(self, step: int | None, checkpoint_step: int | None, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint_step, self.run_dir = step, checkpoint_step, run_dir


def _service_step(service) -> int | None:
    """The step the coupling service last solved, if it still answers."""
    import ray

    try:
        return int(ray.get(service.stats.remote(), timeout=5)["step"])
    except Exception:  # the service may be gone with the cluster
        return None


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    seconds: float
    metrics: dict[str, Any]
    service: dict[str, Any]
    resumed: bool


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, write: bool = True) -> bool:
    """Create the run dir, or check it holds this run; True when resuming.

    ``write=False`` only checks (the driver checks before starting Ray, and
    writes once the cluster has been found able to run it)."""
    try:
        folder_to_write(run_dir, "run dir")
    except PathError as err:
        raise LaunchError(str(err)) from err
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            raw = yaml.safe_load(config_path.read_text())
            if isinstance(raw, dict) and isinstance(raw.get("train"), dict):
                # Runs begun before the EMA warm-up existed go on with a fixed decay.
                raw["train"].setdefault("ema_warmup", False)
            old = config_from_dict(raw)
        except (ConfigError, yaml.YAMLError) as err:
            raise LaunchError(f"run dir {run_dir} has an unreadable config.yaml: {err}") from err
        # Extending a run, or scoring it with other samplers, is the same run.
        changes = _diff(run_identity(old), run_identity(cfg))
        if not changes and write and old.train.workers != cfg.train.workers:
            print(
                f"resuming with {cfg.train.workers} worker"
                f"{'s' if cfg.train.workers != 1 else ''} instead of "
                f"{old.train.workers}: the global batch stays {cfg.train.batch} and every "
                "step trains on the same images and noise, but the gradients are summed in "
                "another order, so the run is no longer bit-identical to one that kept "
                f"{old.train.workers}",
                flush=True,
            )
        if changes:
            raise LaunchError(
                f"run dir {run_dir} holds a run with another config ({changes[0]}"
                f"{f' and {len(changes) - 1} more' if len(changes) > 1 else ''}); "
                "pass another --run-dir"
            )
        if write:
            write_text(config_path, dump_config(cfg))
        return True
    if resume:
        raise LaunchError(f"nothing to resume: {run_dir} holds no loomray run")
    if holds_anything(run_dir):
        raise LaunchError(
            f"run dir {run_dir} is not empty and holds no loomray run; pass another --run-dir"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(config_path, dump_config(cfg))
    return False


def training_need(cfg: Config) -> dict[str, float]:
    """What one training holds while it runs, in all: its workers and its service."""
    t = cfg.train
    need = {"CPU": t.workers * t.cpus_per_worker + cfg.coupling.service_cpus}
    if t.gpus_per_worker:
        need["GPU"] = t.workers * t.gpus_per_worker
    return need


def training_bundles(cfg: Config) -> tuple[int, dict[str, float], dict[str, float]]:
    """A training as Ray places it: ``workers`` bundles of one worker's resources (each
    on one node), and its coupling service's."""
    t = cfg.train
    worker = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}
    service = {"CPU": cfg.coupling.service_cpus} if cfg.coupling.service_cpus else {}
    return t.workers, worker, service


def check_resources(cfg: Config, capacity: Capacity | None = None) -> Capacity:
    """Refuse in seconds what the cluster can never schedule, instead of waiting: what
    its nodes have, or what its autoscaler may grow it to (loomray.cluster.capacity), node by
    node (a worker's bundle must fit on one)."""
    cap = capacity or cluster_capacity()
    t = cfg.train
    if trainings_that_fit(cap, *training_bundles(cfg)) != 0:
        return cap  # fits, or the autoscaler's limits are unknown
    most = cap.most or {}
    need = training_need(cfg)
    if need.get("GPU", 0) > most.get("GPU", 0):
        raise LaunchError(
            f"{cfg.name} asks for {t.workers} workers x {t.gpus_per_worker:g} GPU but "
            f"{cap.describe('GPU')}; pass --cpu, fewer --workers, or the --address of a "
            "cluster with GPUs"
        )
    if need["CPU"] > most.get("CPU", 0):
        raise LaunchError(
            f"{cfg.name} asks for {need['CPU']:g} CPUs ({t.workers} workers x "
            f"{t.cpus_per_worker:g} + {cfg.coupling.service_cpus:g} for the coupling service) "
            f"but {cap.describe('CPU')}; lower train.cpus_per_worker or --workers"
        )
    gpu = f" + {t.gpus_per_worker:g} GPU" if t.gpus_per_worker else ""
    raise LaunchError(
        f"{cfg.name}'s {t.workers} workers of {t.cpus_per_worker:g} CPU{gpu} each and its "
        f"coupling service's {cfg.coupling.service_cpus:g} CPU do not fit on the cluster's "
        "nodes (a worker must fit on one node); lower train.cpus_per_worker, or use larger "
        "nodes"
    )


def service_name(cfg: Config, run_dir: Path) -> str:
    """The coupling service's actor name: ``coupling:`` and the run's label (its run
    dir's name for people, and a digest of its identity, ``loomray.config.run_label``)."""
    return f"{SERVICE_PREFIX}{run_label(cfg, run_dir)}"


def _driver() -> dict[str, Any]:
    """Who starts a service: this process and its Ray job."""
    import ray

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job": ray.get_runtime_context().get_job_id(),
    }


SERVICE_GONE_S = 30.0  # how long a service whose driver died may take to go with it


def claim_service_name(name: str, run_dir: Path) -> None:
    """Free ``name`` for this driver. A service of this run that this process left (an
    earlier launch in it) is ended. Any other goes with its driver when that dies
    (the service is owned by it), so it is waited for; one still there after
    ``SERVICE_GONE_S`` belongs to a live driver: the run is busy, and it is left alone."""
    import ray

    try:
        old = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return
    try:
        holder = ray.get(old.holder.remote(), timeout=10)
    except ray.exceptions.RayActorError:  # dead already, the name about to be free
        holder = None
    except Exception:  # restarting, or busy: somebody's live service all the same
        holder = {}
    me = _driver()
    if holder and (holder.get("pid"), holder.get("host")) == (me["pid"], me["host"]):
        ray.kill(old)
    if _name_freed(name, SERVICE_GONE_S):
        return
    who = (
        f"the loomray driver with pid {holder['pid']} on {holder['host']}"
        if holder
        else "another loomray driver"
    )
    raise LaunchError(
        f"run dir {run_dir} is in use: its coupling service belongs to {who}; wait for "
        "that run to end, or pass another --run-dir"
    )


def _name_freed(name: str, timeout_s: float) -> bool:
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def start_service(cfg: Config, rows: int, run_dir: Path):
    """The CouplingService actor, created here on the driver and never in a worker."""
    import ray

    name = service_name(cfg, run_dir)
    pairs_root = None  # the pairs coupling reads its rows' seeds from the pairs folder
    if cfg.coupling.kind == "pairs":
        pairs_root = str(Path(cfg.data.root).expanduser().resolve())
    claim_service_name(name, run_dir)
    spec = ServiceSpec(
        kind=cfg.coupling.kind,
        rows=rows,
        caches=cfg.coupling.caches,
        cost=cfg.coupling.cost,
        seed=cfg.coupling.seed,
        world=cfg.train.workers,
        snapshot_dir=str((run_dir / "coupling").resolve()),
        snapshot_every=cfg.coupling.snapshot_every,
        timeout_s=cfg.coupling.timeout_s,
        run=run_label(cfg, run_dir),
        run_id=run_id(cfg),
        pairs=pairs_root,
        run_dir=str(run_dir.resolve()),
        driver=_driver(),
        threads=max(1, int(cfg.coupling.service_cpus)),
    )
    actor = ray.remote(CouplingService).options(
        name=name,
        namespace=NAMESPACE,
        max_restarts=3,
        num_cpus=cfg.coupling.service_cpus,
    )
    try:
        handle = actor.remote(spec)
    except ValueError as err:  # another driver took the name since it was claimed
        raise LaunchError(
            f"run dir {run_dir} is in use: another loomray driver started its coupling "
            "service just now; wait for that run to end, or pass another --run-dir"
        ) from err
    wait_for_service(handle, cfg.coupling.service_cpus)
    return handle


SERVICE_PLACED_S = 600.0  # an autoscaler may need minutes to add a node


def wait_for_service(handle, cpus: float, limit_s: float = SERVICE_PLACED_S) -> None:
    """Wait for the service actor to start, saying so every minute; LaunchError when
    it cannot be placed in ``limit_s`` (its CPUs are taken, or no node has them)."""
    import ray
    from ray.exceptions import GetTimeoutError

    ping, started = handle.ping.remote(), time.time()
    while True:
        try:
            ray.get(ping, timeout=min(60.0, max(0.1, limit_s - (time.time() - started))))
            return
        except GetTimeoutError:
            waited = time.time() - started
            if waited >= limit_s:
                ray.kill(handle)
                raise LaunchError(
                    f"the coupling service (coupling.service_cpus {cpus:g} CPU) could not "
                    f"be placed in {waited:.0f} s: the cluster's CPUs are taken by other "
                    "runs, or no node has them free; wait for them, or lower "
                    "coupling.service_cpus"
                ) from None
            print(f"waiting {waited:.0f} s for the coupling service to be placed", flush=True)


def preflight(cfg: Config, run_dir: Path, require_evaluation: bool) -> None:
    """Before the Train workers start: one task with a worker's resources (so on the
    kind of node they get; an autoscaler adds one if needed) checks that it sees the
    run dir, and for a training that needs its evaluation, that the evaluation can
    run there. LaunchError in loomray's words, in seconds, instead of a worker group
    that Ray Train starts and restarts (``train.max_failures``) to the same failure.
    Skipped on a one-node cluster when no evaluation is required."""
    import ray

    if not require_evaluation and sum(n["Alive"] for n in ray.nodes()) < 2:
        return
    t = cfg.train
    task = ray.remote(_preflight).options(
        num_cpus=t.cpus_per_worker, num_gpus=t.gpus_per_worker, scheduling_strategy="DEFAULT"
    )
    problem = ray.get(task.remote(cfg.to_dict(), str(run_dir.resolve()), require_evaluation))
    if problem:
        raise LaunchError(problem)


def _preflight(config: dict[str, Any], run_dir: str, evaluate: bool) -> str | None:
    """On a worker's node: what would stop the workers there, or None."""
    import torch

    from loomray.train.evaluation import TrainingEvaluation
    from loomray.train.worker import check_run_dir_shared

    try:
        check_run_dir_shared(Path(run_dir))
        if evaluate:
            cuda = torch.cuda.is_available() and not fake_gpus()
            device = torch.device("cuda" if cuda else "cpu")
            cfg = config_from_dict(config)
            TrainingEvaluation(cfg, device, Path(run_dir), 0, 1).require()
    except RuntimeError as err:
        return loomray_reason(err) or str(err)
    return None


def loomray_reason(err: BaseException | str) -> str | None:
    """The sentence a worker failed with when loomray itself said why (its errors start
    with ``loomray: ``), out of Ray Train's report of the failed run."""
    for line in str(err).splitlines():
        _, sep, reason = line.partition("loomray: ")
        if sep:
            return reason.strip()
    return None


class _Progress:
    """Polls the service and draws a progress bar on the driver."""

    def __init__(self, service, total: int, start: int, enabled: bool) -> None:
        self.service, self.total, self.start = service, total, start
        self.enabled = enabled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.enabled:
            self.thread.join(timeout=5)

    def _stats(self) -> dict | None:
        import ray

        try:
            return ray.get(self.service.stats.remote(), timeout=5)
        except Exception:  # the service may be restarting; try again
            return None

    @staticmethod
    def _info(s: dict) -> str:
        parts = []
        if s.get("phase", "training") != "training":
            parts.append(s["phase"])
        if s.get("problem"):
            parts.append("coupling writes failing: see loomray status")
        if s.get("steps_per_s"):
            parts.append(f"{s['steps_per_s']:.1f} it/s")
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s.get("cost_post") is not None:
            parts.append(f"cost {s['cost_post']:.3f}")
        if s.get("solve_ms") is not None:
            parts.append(f"solve {s['solve_ms']:.1f} ms")
        if s.get("wait_ms") is not None:
            parts.append(f"wait {s['wait_ms']:.1f} ms")
        return "  ".join(parts)

    def _run(self) -> None:
        import sys

        if not sys.stdout.isatty():  # a log file: plain lines, one every LINE_EVERY_S
            self._lines()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, refresh_per_second=2) as bar:
            task = bar.add_task("train", total=self.total, completed=self.start, info="")
            while not self.stop.wait(1.0):
                s = self._stats()
                if s is not None:
                    done = min(self.total, s["step"] + 1)
                    bar.update(task, completed=done, info=self._info(s))

    LINE_EVERY_S = 30.0

    def _lines(self) -> None:
        """Progress for `tail -f` of a redirected log: the step, the share done, the
        rate and the service's numbers, as plain text (no bar, no colours)."""
        last = None
        while not self.stop.wait(self.LINE_EVERY_S):
            s = self._stats()
            if s is None or s["step"] == last:
                continue
            last, done = s["step"], min(self.total, s["step"] + 1)
            line = f"train {done}/{self.total} ({100 * done / self.total:.0f}%)"
            print(f"{line}  {self._info(s)}".rstrip(), flush=True)

def _fit(trainer):
    """``trainer.fit()`` in a thread of its own, so that Ctrl-C reaches this (main)
    thread as a KeyboardInterrupt (Ray Train takes SIGINT over when it runs in the
    main thread, and exits without a word). The Train controller and the workers
    belong to this process and end with it; what is saved stays saved."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name="loomray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def launch(
    cfg: Config,
    run_dir: str | Path,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    quiet: bool = True,
    on_dashboard=None,
    on_ready=None,
    callbacks: list | None = None,
    dashboard_host: str = "127.0.0.1",
    holder: str | None = None,
    require_evaluation: bool = False,
) -> TrainResult:
    """Run (or resume) training.

    Checks come first and fail in seconds: the dataset, the run dir and whether
    another process writes into it (the run dir is locked until the run ends), the
    cluster's resources. ``on_dashboard(url)`` (url None without a dashboard) and
    ``on_ready(service)`` are called as soon as those exist (the CLI prints the URL
    and the `loomray status` command; tests inject faults). ``callbacks`` are Ray
    Train callbacks (a sweep passes one that reports to Tune); ``holder`` is how the
    run dir's lock names this process to others (default: its command line).
    ``require_evaluation``: the workers check before training that the evaluation
    can run, and fail at once if not (a sweep's trainings, whose score is the point);
    otherwise evaluation during training is switched off with a message."""
    run_dir = Path(run_dir).expanduser()
    dataset = build_dataset(cfg)  # fail on missing data before starting anything
    prepare_run_dir(cfg, run_dir, resume, write=False)  # and on a wrong or unwritable one
    try:
        check_loom_table(cfg, run_dir)  # or a LOOM checkpoint that lost its table
        init_weights(cfg)  # and on weights to start from that do not fit
        if cfg.data.name == "latents":  # and on an autoencoder that cannot decode samples
            from loomray.latents.decode import output_decoder

            output_decoder(cfg)
    except (CheckpointError, AutoencoderError) as err:
        raise LaunchError(str(err)) from err
    # and on a run dir that another process writes into
    with lock_folder(run_dir, "run dir", holder, error=LaunchError):
        url = connect(address, quiet=quiet, dashboard_host=dashboard_host)
        if on_dashboard is not None:
            on_dashboard(url)
        check_resources(cfg)
        try:
            check_shared(run_dir, "run dir")
        except StorageError as err:
            raise LaunchError(str(err)) from None
        resumed = prepare_run_dir(cfg, run_dir, resume)
        preflight(cfg, run_dir, require_evaluation)
        service = start_service(cfg, len(dataset), run_dir)
        if on_ready is not None:
            on_ready(service)
        return _train(cfg, run_dir, service, resumed, progress, callbacks, require_evaluation)


def _train(
    cfg: Config,
    run_dir: Path,
    service,
    resumed: bool,
    progress: bool,
    callbacks,
    require_evaluation: bool = False,
):
    """Ray Train's TorchTrainer against the started service, to ``train.steps``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from loomray.train.worker import train_worker

    t = cfg.train
    trainer = TorchTrainer(
        train_worker,
        # GPU workers all-reduce over NCCL; a test cluster's declared GPUs run on the CPU
        torch_config=TorchConfig(backend="gloo") if fake_gpus() else None,
        train_loop_config={
            "config": cfg.to_dict(),
            "service": service,
            "run_dir": str(run_dir.resolve()),
            "label": run_label(cfg, run_dir),
            "evaluation_required": require_evaluation,
        },
        scaling_config=ScalingConfig(
            num_workers=t.workers,
            use_gpu=t.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": t.cpus_per_worker,
                **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {}),
            },
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(run_dir.resolve()),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints or None),
            callbacks=callbacks or [],
        ),
    )
    started = time.time()
    try:
        with _Progress(service, t.steps, 0, progress):
            result = _fit(trainer)
        stats = ray.get(service.stats.remote())
    except ray.train.TrainingFailedError as err:
        reason = loomray_reason(err)
        if reason is None:
            raise
        raise LaunchError(reason) from err
    except KeyboardInterrupt:
        solved = _service_step(service)
        # the service solves up to coupling.prefetch steps ahead of training
        trained = None if solved is None else max(0, solved - cfg.coupling.prefetch)
        raise Interrupted(trained, latest_step(run_dir), run_dir) from None
    finally:
        ray.kill(service)
    ckpt = Path(result.checkpoint.path) if result.checkpoint is not None else None
    return TrainResult(
        run_dir=run_dir,
        step=int(result.metrics.get("step", 0)) if result.metrics else 0,
        checkpoint=ckpt,
        seconds=time.time() - started,
        metrics=dict(result.metrics or {}),
        service=stats,
        resumed=resumed,
    )
