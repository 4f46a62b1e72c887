"""What each Ray Train worker runs: restore, train against the service, checkpoint.

Rank 0 owns the side effects: it restores the coupling service to the step of
the checkpoint it resumes from, writes checkpoints (model, EMA, optimizer,
scheduler, step, and the table of the same step as Parquet), metrics lines and
sample grids. Every rank calls ``ray.train.report`` at the same steps (a
collective in Ray Train V2), and only every ``ckpt_every`` steps: a report
blocks on the controller's poll, so per-step numbers go to ray.util.metrics
and the service instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loomray.checkpoint import TABLE_FILE, init_weights, save_checkpoint
from loomray.cluster.connect import fake_gpus
from loomray.config import Config, config_from_dict
from loomray.coupling import AssignmentTable, noise_from_seeds
from loomray.coupling.client import ServiceNoise, call_service
from loomray.data import BatchPlan, build_dataset
from loomray.evaluation.images import save_samples
from loomray.flow.sampling import sample
from loomray.latents.decode import to_images
from loomray.train.ddp import distributed
from loomray.train.evaluation import TrainingEvaluation
from loomray.train.loop import StepLog, TrainState, build_state, mean_loss, train_steps

CHECKPOINT_FILE = "checkpoint.pt"
SAMPLE_SEED_OFFSET = 10**12  # sampling noise never collides with training seeds


SAMPLES_BUSY_S = 3600.0  # the longest rank 0 may write sample images while others wait


def checkpoint_dir_name(step: int) -> str:
    """``train/step-0001000/``: checkpoints are found by the step they hold."""
    return f"step-{step:07d}"


def _restore(state: TrainState, checkpoint, kind: str) -> AssignmentTable | None:
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        payload = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        state.load(payload)
        table_path = folder / TABLE_FILE
        if table_path.is_file():
            return AssignmentTable.load(table_path)
        if kind == "loom" and "imported_from" not in payload:
            raise RuntimeError(
                f"loomray: checkpoint {folder} of a LOOM run has no {TABLE_FILE}; resuming "
                "would start the noise assignment over"
            )
        return None


def write_samples(cfg: Config, model: torch.nn.Module, device, folder: Path, step: int) -> list:
    """One image (grid, or scatter for 2-D data) per configured sampler."""
    n = 1000 if len(cfg.sample_shape) == 1 else 64
    z = torch.from_numpy(noise_from_seeds(np.arange(n) + SAMPLE_SEED_OFFSET, cfg.sample_shape))
    paths = []
    model.eval()
    for method in cfg.eval.methods:
        result = sample(model, z.to(device), method, rtol=cfg.eval.rtol, atol=cfg.eval.atol)
        paths.append(
            save_samples(
                to_images(cfg, result.x, device),
                folder / f"step{step:07d}-{method}.png",
                title=f"{cfg.name} step {step}: {method} ({result.nfe} NFE)",
            )
        )
    return paths


NOT_SHARED = "is not shared"


def check_run_dir_shared(run_dir: Path) -> None:
    """The driver wrote the run's config.yaml before starting the workers: a worker
    that does not see it is on a node without the run dir's storage, and fails now,
    saying so, rather than at its first checkpoint."""
    import ray

    if not (run_dir / "config.yaml").is_file():
        raise RuntimeError(
            f"loomray: run dir {run_dir} {NOT_SHARED}: the node at "
            f"{ray.util.get_node_ip_address()} does not see the config.yaml the driver "
            "wrote there; put it on a filesystem that every node mounts at the same path "
            "(NFS, EFS, Filestore, Lustre; docs/cluster.md)"
        )


def train_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    cfg = config_from_dict(config["config"])
    service = config["service"]
    run_dir = Path(config["run_dir"])
    check_run_dir_shared(run_dir)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cpu") if fake_gpus() else ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))

    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    state = build_state(cfg, device)
    checkpoint = ray.train.get_checkpoint()
    table = _restore(state, checkpoint, cfg.coupling.kind) if checkpoint is not None else None
    if checkpoint is None and cfg.train.init:
        state.start_from(init_weights(cfg))  # a fine-tune (reflow) starts from these
    if rank == 0:
        _restore_service(cfg, service, state.step, table, resumed=checkpoint is not None)
    if world > 1:
        dist.barrier()  # nobody submits before the service is at our step
        state.model = distributed(state.model, device, cfg.sample_shape)
    node = ray.get_runtime_context().get_node_id()
    noise = ServiceNoise(service, rank, cfg.coupling.timeout_s, node=node)
    noise.threads = max(1, int(cfg.train.cpus_per_worker))
    evaluation = TrainingEvaluation(cfg, device, run_dir, rank, world, config.get("label"))
    if config.get("evaluation_required"):
        evaluation.require()
    hooks = StepHooks(cfg, state, service, noise, evaluation, run_dir, device, rank)
    train_steps(cfg, state, dataset, plan, noise, cfg.train.steps, device, rank, world, hooks)
    if rank == 0:
        write_samples(cfg, state.ema.model, device, run_dir / "samples", state.step)


def _restore_service(cfg: Config, service, step: int, table, resumed: bool) -> None:
    """Rank 0 puts the coupling service at ``step`` with the checkpoint's table."""
    call_service(
        service.restore,
        step,
        table.seeds if table is not None else None,
        table.fingerprint if table is not None else "",
        # a checkpoint without a table (an imported release): LOOM starts afresh
        resumed and table is None,
        timeout_s=cfg.coupling.timeout_s,
    )


class StepHooks:
    """What a worker does after each step: metrics lines (rank 0), reports with
    checkpoints, evaluations and sample grids, at the configured steps."""

    def __init__(
        self, cfg: Config, state: TrainState, service, noise, evaluation, run_dir, device, rank: int
    ) -> None:
        self.cfg, self.state, self.service, self.noise = cfg, state, service, noise
        self.evaluation, self.run_dir, self.device, self.rank = evaluation, run_dir, device, rank
        self.metrics_path = run_dir / "metrics.jsonl"
        self.window: list[StepLog] = []
        self._restart_clock()

    def _restart_clock(self) -> None:
        # Throughput is wall time between log points, taken after the one read of the
        # losses from the device (so the device has done those steps), without the
        # checkpoints, evaluations and grids in between.
        self.clock = {"start": time.perf_counter(), "steps": 0, "wait": 0.0}

    def report(self, step: int, evaluate: bool = False) -> None:
        import ray.train

        cfg, service = self.cfg, self.service
        metrics = {"step": step, "loss": mean_loss(self.window)}
        if evaluate:  # every rank takes a share
            metrics.update(self.evaluation.run(self.state.ema.model, step))
        # Every rank reports at the same steps: a report is a collective.
        if self.rank != 0:
            ray.train.report(metrics)
            return
        got = call_service(service.table_at, step, timeout_s=cfg.coupling.timeout_s + 60)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / CHECKPOINT_FILE, self.state.payload(cfg))
            if got is not None:
                AssignmentTable(got["seeds"], got["step"], got["fingerprint"]).save(
                    Path(tmp) / TABLE_FILE
                )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_dir_name(step),
            )

    def _log(self, log: StepLog) -> None:
        """Rank 0's metrics line: the loss, rate and wait since the last one."""
        loss = mean_loss(self.window[-self.cfg.train.log_every :])
        self.noise.note(loss=loss)
        seconds = time.perf_counter() - self.clock["start"]
        line = {
            "step": log.step,
            "loss": loss,
            "lr": log.lr,
            "images_per_s": self.cfg.train.batch * self.clock["steps"] / seconds,
            "wait_fraction": self.clock["wait"] / seconds,
            "time": time.time(),
        }
        self._restart_clock()
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.service.record.remote(line["images_per_s"])

    def __call__(self, log: StepLog) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.window.append(log)
        self.noise.note(wait=log.wait)
        self.clock["steps"] += 1
        self.clock["wait"] += log.wait
        if self.rank == 0 and log.step % t.log_every == 0:
            self._log(log)
        final = log.step == t.steps
        evaluate = final or (bool(cfg.eval.every) and log.step % cfg.eval.every == 0)
        paused = False
        if log.step % t.ckpt_every == 0 or evaluate:
            self.report(log.step, evaluate)
            del self.window[:]
            paused = True
        if self.rank == 0 and t.sample_every and log.step % t.sample_every == 0:
            # the other ranks' next steps wait for rank 0 at the service meanwhile
            self.service.busy.remote(0, SAMPLES_BUSY_S)
            folder = self.run_dir / "samples"
            write_samples(cfg, self.state.ema.model, self.device, folder, log.step)
            self.service.busy.remote(0, 0)
            paused = True
        if paused:
            self._restart_clock()
