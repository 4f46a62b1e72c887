"""The per-worker training loop, shared by `loomray train` (Ray) and local runs.

The loop never computes couplings itself: it asks a ``NoiseSource`` for the
noise of each step. Locally that is a coupling in the same process; under Ray
it is the coupling service actor. Each step it submits the *next* batch before
training on the current one, so the service's solve overlaps the step.

Determinism: batch rows come from ``BatchPlan`` (a function of seed and step),
the coupling's cache draw from ``step_rng(seed, step)``, and the torch RNG (t,
sigma noise, dropout) is reseeded from (seed, step, rank) every step. A run
resumed at step k therefore continues exactly as if never stopped, with no RNG
state to carry.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from loomray.config import Config
from loomray.coupling import AssignmentTable, Coupling, CouplingStats, make_coupling, step_rng
from loomray.data import BatchPlan, RowDataset, build_dataset, iterate_batches
from loomray.flow.objective import EMA, cfm_loss, warmup_constant
from loomray.models import build_model
from loomray.train.determinism import kernels_for


def torch_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the torch RNG (t, sigma noise, dropout) for one rank's step."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a step draws from (t, sigma noise, dropout): the host's and,
    on CUDA, the device's. Not ``torch.manual_seed``, which seeds every kind of device
    and, in a process that never started CUDA, formats the caller's stack on every call
    (~1 ms per step in a training worker's deep stack)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        if not torch.cuda.is_initialized():
            torch.cuda.init()  # the device generators exist from here on
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


class NoiseSource(Protocol):
    def submit(self, step: int, rows: np.ndarray, x: np.ndarray) -> None:
        """Hand over this rank's batch of ``step``; may return before the solve."""

    def receive(self, step: int) -> np.ndarray:
        """The noise paired with this rank's batch of ``step``."""


class LocalNoise:
    """A coupling run in this process: one worker, tests and benchmarks."""

    def __init__(self, coupling: Coupling, seed: int) -> None:
        self.coupling = coupling
        self.seed = seed
        self.pending: dict[int, np.ndarray] = {}
        self.stats: list[CouplingStats] = []

    def submit(self, step: int, rows: np.ndarray, x: np.ndarray) -> None:
        z, stats = self.coupling.step(rows, x, step_rng(self.seed, step))
        self.pending[step] = z
        self.stats.append(stats)

    def receive(self, step: int) -> np.ndarray:
        return self.pending.pop(step)


def make_table(cfg: Config, rows: int) -> AssignmentTable | None:
    if cfg.coupling.kind != "loom":
        return None
    return AssignmentTable.create(rows, cfg.coupling.caches, seed=cfg.coupling.seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class TrainState:
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0

    def payload(self, cfg: Config) -> dict[str, Any]:
        """Checkpoint contents (tensors and plain values only)."""
        model = unwrap(self.model)
        return {
            "config": cfg.to_dict(),
            "step": self.step,
            "model": model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # The RNG is reseeded from (seed, step, rank) every step: this is all of it.
            "rng": {"scheme": "per-step", "seed": cfg.train.seed},
        }

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Step 0 of a fine-tune (``train.init``): model and EMA both take ``weights``."""
        unwrap(self.model).load_state_dict(weights)
        self.ema.model.load_state_dict(weights)

    def load(self, payload: dict[str, Any]) -> None:
        model = unwrap(self.model)
        model.load_state_dict(payload["model"])
        self.ema.model.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether the model's weights and each step's inputs are channels-last: a UNet on
    a GPU with ``train.channels_last``."""
    return device.type == "cuda" and cfg.model.kind == "unet" and cfg.train.channels_last


def build_state(cfg: Config, device: torch.device) -> TrainState:
    kernels_for(cfg.train.deterministic, device)  # before any kernel runs on the device
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    if uses_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    # a fine-tune starts from its initial weights' EMA: no warm-up to forget it
    ema = EMA(model, cfg.train.ema, cfg.train.ema_warmup and not cfg.train.init)
    # fused: one kernel for the whole update on a GPU (the loop is launch-bound there)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_constant(cfg.train.warmup))
    return TrainState(model, ema, optimizer, scheduler)


@dataclass
class StepLog:
    step: int
    loss: torch.Tensor
    """The step's loss, a 0-d tensor left on the device: reading it (``float``) waits for
    the device, so readers do it every ``train.log_every`` steps, not every step."""
    lr: float
    wait: float
    """Seconds spent blocked on the noise source in this step."""


@dataclass
class History:
    """Every step's loss and noise wait, kept compactly (a few bytes a step, so a
    391k-step run holds megabytes, not the step logs): the losses stay on the device
    until ``CHUNK`` steps have gathered, then are read in one go."""

    CHUNK = 1000
    _pending: list[torch.Tensor] = field(default_factory=list)
    _losses: list[np.ndarray] = field(default_factory=list)
    _waits: list[float] = field(default_factory=list)

    def add(self, log: StepLog) -> None:
        self._pending.append(log.loss.detach())
        self._waits.append(log.wait)
        if len(self._pending) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._losses.append(torch.stack(self._pending).float().cpu().numpy())
            self._pending = []

    @property
    def losses(self) -> list[float]:
        """Every step's loss."""
        self._flush()
        return np.concatenate(self._losses).tolist() if self._losses else []

    @property
    def waits(self) -> list[float]:
        """Every step's seconds blocked on the noise source."""
        return list(self._waits)


def mean_loss(logs: list[StepLog]) -> float:
    """The mean loss of ``logs``: one read from the device for all of them."""
    if not logs:
        return float("nan")
    return float(torch.stack([log.loss.float() for log in logs]).mean())


def compiled(model: nn.Module, cfg: Config) -> nn.Module:
    """The network as the step runs it: eager, torch.compile (``train.compile``) or
    compiled with CUDA graphs (``train.graph``: mode reduce-overhead; one launch for
    the forward and backward, which the eager loop on a GPU is bound by). The weights
    are ``model``'s either way: checkpoints and the EMA are unchanged."""
    if cfg.train.graph:
        return torch.compile(model, mode="reduce-overhead")
    return torch.compile(model) if cfg.train.compile else model


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A read-only reply (the service's noise) on ``device``, copied once on the host:
    into pinned memory, from which a CUDA copy runs without blocking."""
    if device.type != "cuda":
        return torch.from_numpy(np.array(array))
    host = torch.empty(array.shape, dtype=torch.float32, pin_memory=True)
    host.numpy()[...] = array
    return host.to(device, non_blocking=True)


def train_steps(
    cfg: Config,
    state: TrainState,
    dataset: RowDataset,
    plan: BatchPlan,
    noise: NoiseSource,
    stop: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    on_step: Callable[[StepLog], None] | None = None,
) -> History:
    """Train from ``state.step`` to ``stop``; ``on_step`` sees every step's log, which
    is kept in the returned history only when there is no ``on_step``."""
    history = History()
    if state.step >= stop:
        return history
    cuda = device.type == "cuda"
    use_bf16 = cuda and cfg.train.bf16
    channels_last = uses_channels_last(cfg, device)
    # A new step for the CUDA graphs: the last step's graph outputs (its gradients) are
    # dead by now, so their memory is replayed into without a check of who holds it.
    mark_step = cuda and cfg.train.graph
    batches = iterate_batches(
        dataset, plan, state.step, stop, rank, world, cfg.data.loader_workers, pin=cuda
    )
    # Up to ``prefetch`` steps are handed to the noise source ahead of the one
    # being trained, so the solves run while this rank computes.
    ahead: collections.deque = collections.deque()

    def top_up(size: int) -> None:
        while len(ahead) < size:
            item = next(batches, None)
            if item is None:
                return
            noise.submit(item[0], item[1], item[2].numpy())
            ahead.append(item)

    net = compiled(state.model, cfg)
    params = list(state.model.parameters())  # once: walking the modules costs the host
    state.model.train()
    top_up(1 + cfg.coupling.prefetch)
    while ahead:
        step, _, x_cpu = ahead.popleft()
        top_up(cfg.coupling.prefetch)
        w0 = time.perf_counter()
        z_np = noise.receive(step)
        wait = time.perf_counter() - w0
        seed_step(torch_seed(cfg.train.seed, step, rank), device)
        x = x_cpu.to(device, non_blocking=True)  # from pinned memory on CUDA
        z = to_device(z_np, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            z = z.contiguous(memory_format=torch.channels_last)
        state.optimizer.zero_grad(set_to_none=True)
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = cfm_loss(net, x, z, cfg.train.sigma)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update(unwrap(state.model), step)
        state.step = step + 1
        log = StepLog(
            step=state.step,
            loss=loss.detach(),
            lr=state.scheduler.get_last_lr()[0],
            wait=wait,
        )
        if on_step is not None:
            on_step(log)  # the caller keeps what it needs (a run of 391k steps is long)
        else:
            history.add(log)
    return history


@dataclass
class LocalRun:
    cfg: Config
    state: TrainState
    dataset: RowDataset
    noise: LocalNoise
    history: History


def train_local(cfg: Config, device: str = "cpu", steps: int | None = None) -> LocalRun:
    """Single-process training with the configured coupling (no Ray)."""
    from loomray.checkpoint import init_weights

    dev = torch.device(device)
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    coupling = make_coupling(
        cfg.coupling.kind,
        make_table(cfg, len(dataset)),
        cfg.coupling.cost,
        getattr(dataset, "seeds", None),
    )
    noise = LocalNoise(coupling, cfg.coupling.seed)
    state = build_state(cfg, dev)
    weights = init_weights(cfg)
    if weights is not None:
        state.start_from(weights)
    history = train_steps(cfg, state, dataset, plan, noise, steps or cfg.train.steps, dev)
    return LocalRun(cfg, state, dataset, noise, history)
