"""The driver of `loomray train`: check, connect, start the service, run Ray Train.

    result = launch(cfg, run_dir="runs/digits")

A run directory holds ``config.yaml``, the Ray Train storage (``train/``, one
folder per checkpoint with ``checkpoint.pt`` and ``table.parquet``), the coupling
service's snapshots (``coupling/``), ``metrics.jsonl`` and ``samples/``.
Launching into a directory that holds the same run resumes it from its latest
checkpoint (Ray Train V2 restores a run of the same storage path and name); a
directory holding another run, or anything else, is refused untouched.
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

from loomray.checkpoint import CheckpointError, init_weights, latest_step
from loomray.config import (
    Config,
    ConfigError,
    config_from_dict,
    dump_config,
    run_id,
    run_identity,
)
from loomray.coupling.service import CouplingService, ServiceSpec
from loomray.data import build_dataset
from loomray.latents.autoencoder import AutoencoderError
from loomray.paths import PathError, folder_to_write

NAMESPACE = "loomray"
SERVICE_PREFIX = "coupling:"
RAY_ENV = {
    # A report blocks until the Train controller's next poll (default 2 s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


# loomray's own settings (``LOOMRAY_*``) that hold paths: sent on as absolute paths,
# since workers and tasks run in other working directories.
PATH_SETTINGS = ("LOOMRAY_CACHE", "LOOMRAY_FID_WEIGHTS", "LOOMRAY_PAPER_FID_WEIGHTS")
# Other settings of the driver that the job's processes must share when set.
FORWARDED = ("TUNE_DISABLE_STRICT_METRIC_CHECKING",)


def driver_settings() -> dict[str, str]:
    """The environment every worker, actor and task of the job gets: Ray's settings
    above and every ``LOOMRAY_*`` variable of the driver (FID weights, the cache), so
    nodes that never saw them behave like the driver."""
    out = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    out.update({k: v for k, v in os.environ.items() if k.startswith("LOOMRAY_")})
    out.update({k: os.environ[k] for k in FORWARDED if k in os.environ})
    for key in PATH_SETTINGS:
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


class LaunchError(ValueError):
    """The run cannot start as asked; the message says why and what to do."""


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
        if changes:
            raise LaunchError(
                f"run dir {run_dir} holds a run with another config ({changes[0]}"
                f"{f' and {len(changes) - 1} more' if len(changes) > 1 else ''}); "
                "pass another --run-dir"
            )
        if write:
            config_path.write_text(dump_config(cfg))
        return True
    if resume:
        raise LaunchError(f"nothing to resume: {run_dir} holds no loomray run")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise LaunchError(
            f"run dir {run_dir} is not empty and holds no loomray run; pass another --run-dir"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(dump_config(cfg))
    return False


LOOPBACK = ("127.0.0.1", "localhost", "::1")
NO = ("0", "false", "no", "off")
YES = ("", "1", "true", "yes", "on")


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a cluster address nothing answers at (Ray itself retries for
    minutes). ``auto`` and None are left to Ray: they find a local cluster or none."""
    if address in (None, "auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(
            f"--address {address} is not host:port, ray://host:port or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise LaunchError(
            f"cannot reach the Ray cluster at {address}: nothing answers on {host}:{port} "
            f"({reason.lower()})"
        ) from err


def security_warnings(dashboard_host: str = "127.0.0.1") -> list[str]:
    """What is unsafe about how Ray is about to be exposed (empty when nothing is)."""
    out = []
    if dashboard_host not in LOOPBACK:
        out.append(
            f"the Ray dashboard will listen on {dashboard_host}, not 127.0.0.1: anyone who "
            "can reach it and holds the token can submit jobs, i.e. run code on this machine; "
            "prefer an SSH port-forward (docs/cluster.md)"
        )
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        out.append(
            "RAY_AUTH_MODE=disabled turns Ray's token authentication off: anyone who reaches "
            "the dashboard or the GCS can run code on the cluster (ShadowRay, CVE-2023-48022)"
        )
    return out


def connect(
    address: str | None, quiet: bool = False, dashboard_host: str = "127.0.0.1"
) -> str | None:
    """Join ``address`` (``auto``, ``ray://host:10001``) or start a local Ray.

    Returns the dashboard URL when known. A local Ray binds its dashboard to
    ``dashboard_host`` (127.0.0.1 unless asked otherwise) and keeps Ray's token
    authentication on (see ``security_warnings``); ``LOOMRAY_DASHBOARD=0`` starts it
    without the dashboard (a machine without Ray's dashboard extras, say).
    """
    import logging

    import ray

    # Ray warns on every start that token authentication is on; it is what we want.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    dashboard = dashboard_wanted()  # a bad setting fails even when Ray is up
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return _DASHBOARD.get("url")
    check_reachable(address)
    runtime_env = {"env_vars": driver_settings()}
    if address is None:
        info = ray.init(
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            runtime_env=runtime_env,
            log_to_driver=not quiet,
            namespace=NAMESPACE,
        )
    else:
        info = ray.init(
            address=address, runtime_env=runtime_env, log_to_driver=not quiet, namespace=NAMESPACE
        )
    url = getattr(info, "dashboard_url", None)
    _DASHBOARD["url"] = f"http://{url}" if url and not url.startswith("http") else url
    return _DASHBOARD["url"]


_DASHBOARD: dict[str, str | None] = {}


def dashboard_wanted() -> bool:
    """Whether a local Ray starts its dashboard: ``LOOMRAY_DASHBOARD`` 1, true, yes, on
    or unset (the default), or 0, false, no, off; LaunchError for anything else."""
    value = os.environ.get("LOOMRAY_DASHBOARD", "").strip().lower()
    if value not in (*YES, *NO):
        raise LaunchError(
            f"LOOMRAY_DASHBOARD must be 1 or 0 (true/false, yes/no, on/off), got "
            f"{os.environ['LOOMRAY_DASHBOARD']!r}"
        )
    return value not in NO


def check_resources(cfg: Config) -> None:
    """Refuse in seconds what the cluster can never schedule, instead of waiting."""
    import ray

    total = ray.cluster_resources()
    t = cfg.train
    gpus_needed = t.workers * t.gpus_per_worker
    cpus_needed = t.workers * t.cpus_per_worker + cfg.coupling.service_cpus
    have_gpus, have_cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    if gpus_needed > have_gpus:
        raise LaunchError(
            f"{cfg.name} asks for {t.workers} workers x {t.gpus_per_worker:g} GPU but the "
            f"cluster has {have_gpus:g} GPU(s); pass --cpu, fewer --workers, or the --address "
            "of a cluster with GPUs"
        )
    if cpus_needed > have_cpus:
        raise LaunchError(
            f"{cfg.name} asks for {cpus_needed:g} CPUs ({t.workers} workers x "
            f"{t.cpus_per_worker:g} + {cfg.coupling.service_cpus:g} for the coupling service) "
            f"but the cluster has {have_cpus:g}; lower train.cpus_per_worker or --workers"
        )


def service_name(run_dir: Path) -> str:
    return f"{SERVICE_PREFIX}{run_dir.resolve().name}"


def start_service(cfg: Config, rows: int, run_dir: Path):
    """The CouplingService actor, created here on the driver and never in a worker."""
    import ray

    name = service_name(run_dir)
    pairs_root = None  # the pairs coupling reads its rows' seeds from the pairs folder
    if cfg.coupling.kind == "pairs":
        pairs_root = str(Path(cfg.data.root).expanduser().resolve())
    try:  # an actor left by a crashed driver of this run dir
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:
        pass
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
        run=run_dir.resolve().name,
        run_id=run_id(cfg),
        pairs=pairs_root,
    )
    actor = ray.remote(CouplingService).options(
        name=name,
        namespace=NAMESPACE,
        max_restarts=3,
        num_cpus=cfg.coupling.service_cpus,
    )
    handle = actor.remote(spec)
    ray.get(handle.ping.remote())
    return handle


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

    def _run(self) -> None:
        import ray
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
                try:
                    s = ray.get(self.service.stats.remote(), timeout=5)
                except Exception:  # the service may be restarting; try again
                    continue
                parts = []
                if s.get("phase", "training") != "training":
                    parts.append(s["phase"])
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
                bar.update(task, completed=min(self.total, s["step"] + 1), info="  ".join(parts))


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
) -> TrainResult:
    """Run (or resume) training.

    Checks come first and fail in seconds: the dataset, the cluster's resources,
    the run dir. ``on_dashboard(url)`` and ``on_ready(service)`` are called as
    soon as those exist (the CLI prints the URL; tests inject faults).
    ``callbacks`` are Ray Train callbacks (a sweep passes one that reports to Tune)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from loomray.train.worker import train_worker

    run_dir = Path(run_dir).expanduser()
    dataset = build_dataset(cfg)  # fail on missing data before starting anything
    prepare_run_dir(cfg, run_dir, resume, write=False)  # and on a wrong run dir
    try:
        init_weights(cfg)  # and on weights to start from that do not fit
        if cfg.data.name == "latents":  # and on an autoencoder that cannot decode samples
            from loomray.latents.decode import output_decoder

            output_decoder(cfg)
    except (CheckpointError, AutoencoderError) as err:
        raise LaunchError(str(err)) from err
    url = connect(address, quiet=quiet, dashboard_host=dashboard_host)
    if url and on_dashboard is not None:
        on_dashboard(url)
    check_resources(cfg)
    resumed = prepare_run_dir(cfg, run_dir, resume)
    service = start_service(cfg, len(dataset), run_dir)
    if on_ready is not None:
        on_ready(service)
    t = cfg.train
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "service": service,
            "run_dir": str(run_dir.resolve()),
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
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    started = time.time()
    try:
        with _Progress(service, t.steps, 0, progress):
            result = _fit(trainer)
        stats = ray.get(service.stats.remote())
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
