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

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomray.checkpoint import CheckpointError, check_loom_table, init_weights, latest_step
from loomray.cluster.connect import LaunchError, connect, fake_gpus
from loomray.cluster.storage import StorageError, check_shared
from loomray.config import Config, config_from_dict, run_label
from loomray.data import build_dataset
from loomray.files.locks import lock_folder
from loomray.latents.autoencoder import AutoencoderError
from loomray.train.progress import Progress
from loomray.train.resources import check_resources
from loomray.train.run_dir import prepare_run_dir
from loomray.train.service import service_step, start_service


class Interrupted(Exception):
    """Ctrl-C stopped training: where it was, and the step its last checkpoint holds."""

    def __init__(self, step: int | None, checkpoint_step: int | None, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint_step, self.run_dir = step, checkpoint_step, run_dir


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    seconds: float
    metrics: dict[str, Any]
    service: dict[str, Any]
    resumed: bool


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
        with Progress(service, t.steps, 0, progress):
            result = _fit(trainer)
        stats = ray.get(service.stats.remote())
    except ray.train.TrainingFailedError as err:
        reason = loomray_reason(err)
        if reason is None:
            raise
        raise LaunchError(reason) from err
    except KeyboardInterrupt:
        solved = service_step(service)
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
