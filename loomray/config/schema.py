"""The configuration's sections: typed dataclasses, each field documented under it
(docs/config.md is generated from these docstrings)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message says how."""


@dataclass
class DataConfig:
    name: str = "digits"
    """The dataset: cifar10, imagenet32, imagenet64, folder, digits, mnist, toy2d, latents,
    synthetic or pairs (reflow: a folder made by ``loomray pairs``; docs/reflow.md)."""
    root: str | None = None
    """Where the dataset lives (or is downloaded to); None: the loader's default."""
    download: bool = False
    """Let torchvision download CIFAR-10 when it is not under root (needs internet)."""
    resolution: int = 8
    """Image side in pixels (images are square); folders and npz batches are resized."""
    channels: int = 1
    """Image channels (3 for RGB)."""
    flip: bool = True
    """Random horizontal flips as extra rows: image i flipped is row i + N."""
    limit: int | None = None
    """Use only the first N images (quick runs, tests)."""
    toy: str = "moons"
    """toy2d target: moons | 8gaussians."""
    toy_points: int = 4096
    """toy2d: how many points the target has."""
    loader_workers: int = 0
    """DataLoader processes per training worker that prepare batches (0: in the worker)."""
    posterior: str = "sample"
    """latents: train on a posterior sample per row and step (sample) or on its mean."""
    autoencoder: str | None = None
    """latents: the autoencoder that decodes samples (a diffusers folder, an LDM file or a
    hub id); None: the one the latents folder (data.root) was encoded with."""
    latent_scale: float | None = None
    """latents: the factor latents are scaled by; None: the latents folder's (1 / std)."""


@dataclass
class ModelConfig:
    kind: str = "unet"
    """unet (the ADM UNet of the paper) | mlp (toy2d and tiny images)"""
    channels: int = 128
    """UNet base channels."""
    res_blocks: int = 2
    """UNet residual blocks per resolution."""
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    """UNet channel multiplier per resolution (one level per entry, each halving)."""
    attn_resolutions: tuple[int, ...] = (16,)
    """UNet resolutions (in pixels) with self-attention."""
    head_channels: int = 64
    """UNet channels per attention head."""
    dropout: float = 0.1
    """Dropout in the UNet's residual blocks and the MLP's layers."""
    time_scale: float = 1000.0
    """t in [0, 1] is multiplied by this before the sinusoidal time embedding: 1000 spans
    the frequencies as 1000 diffusion steps do; 1 is the LOOM-CFM authors' (raw t), what
    the paper presets and imported models use."""
    hidden: int = 256
    """MLP width."""
    layers: int = 3
    """MLP hidden layers."""


@dataclass
class CouplingConfig:
    kind: str = "loom"
    """loom (LOOM-CFM) | minibatch-ot (OT-CFM) | independent (I-CFM) | pairs (reflow: each
    pair keeps the noise it was generated from; needs data.name=pairs)"""
    caches: int = 4
    """LOOM: noise caches (seeds) per data row, K."""
    cost: str = "l2"
    """Assignment cost: l2 (the authors') | sql2 (squared)."""
    seed: int = 0
    """Seed of the table's seeds and of each step's cache draw or fresh noise."""
    snapshot_every: int = 500
    """Steps between snapshots of the coupling service's table (each cuts its journal)."""
    timeout_s: float = 300.0
    """How long the service waits for the slowest rank of a step before failing it."""
    service_cpus: float = 0.0
    """CPUs reserved for the service actor (0: it shares the node's CPUs); from 2 up, its
    noise and cost matrices run on that many threads (the same bits)."""
    prefetch: int = 2
    """Steps each worker submits ahead of the one it trains (overlap, not semantics)."""


@dataclass
class TrainConfig:
    batch: int = 128
    """Global batch over all workers."""
    steps: int = 5000
    """Training steps; raise it and rerun into the run dir to extend a run."""
    lr: float = 2e-4
    """Adam learning rate, constant after the warm-up."""
    warmup: int = 5000
    """Steps of linear learning-rate warm-up."""
    ema: float = 0.9999
    """EMA decay of the weights that are evaluated and sampled from."""
    ema_warmup: bool = True
    """Decay min(train.ema, (1 + step) / (10 + step)): a short run still gets a usable
    EMA model; a paper-length run ends as with the fixed decay. A fine-tune from
    train.init starts from that model's EMA and keeps the fixed decay (a warm-up would
    throw the starting EMA away in its first steps)."""
    sigma: float = 1e-7
    """Noise added along the path, x_t = (1 - t) z + t x + sigma eps."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    seed: int = 0
    """Seed of the initial weights, the data order and each step's t and dropout."""
    init: str | None = None
    """A checkpoint (file or run dir) whose EMA weights start the model and its EMA (a
    fresh optimizer and step 0), e.g. the model a reflow's pairs came from."""
    workers: int = 1
    """Ray Train workers (DDP ranks)."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (0: train on CPUs)."""
    cpus_per_worker: float = 1.0
    """CPUs per worker (also its torch threads on CPU)."""
    bf16: bool = True
    """bf16 autocast on GPUs (ignored on CPU)."""
    channels_last: bool = True
    """A UNet's weights and activations in channels-last layout on GPUs (cuDNN's
    convolution layout; ignored on CPU)."""
    compile: bool = False
    """torch.compile the network's training forward and backward (the first steps
    compile; on a GPU the eager loop is bound by kernel launches)."""
    graph: bool = False
    """Like compile, with CUDA graphs (mode reduce-overhead): the forward and backward
    replay as one launch. Needs a fixed batch per rank (loomray's always is)."""
    deterministic: bool = True
    """Deterministic kernels on GPUs (torch's deterministic algorithms, cuDNN without
    timing, a fixed cuBLAS workspace), which an exact replay after a fault needs there:
    without them two runs of one config part in the last bits from the first step.
    false takes the fastest kernels, some of which add with atomics in any order.
    Ignored on CPU."""
    max_failures: int = 3
    """Worker-group restarts (from the latest checkpoint) before the run fails."""
    log_every: int = 50
    """Steps between lines of metrics.jsonl."""
    ckpt_every: int = 1000
    """Steps between checkpoints (train/step-N/: model, EMA, optimizer, table)."""
    keep_checkpoints: int = 0
    """Checkpoints kept, the latest ones; 0 keeps every one (for FID over training, or
    an early checkpoint to reflow from). Each holds the model, its EMA and Adam's two
    moments: about 16 bytes a parameter (0.6 GB for the CIFAR-10 UNet)."""
    sample_every: int = 0
    """Steps between sample grids (0: only at the end)."""


@dataclass
class EvalConfig:
    methods: tuple[str, ...] = ("euler-1", "euler-2", "midpoint-1", "midpoint-2", "midpoint-4")
    """Samplers to score: euler-N, midpoint-N, heun-N, rk4-N (N steps) or dopri5."""
    n: int = 50_000
    """Samples per score."""
    batch: int = 1000
    """Samples per sampling batch (its samples depend on it: dopri5's step control looks
    at the whole batch); workers split the batches."""
    every: int = 0
    """Steps between FID evaluations during training (0: only at the end)."""
    protocol: str = "standard"
    """FID protocol: standard (torch-fidelity's TF-Inception on uint8 images, against the
    training split) or paper (the LOOM-CFM authors': torchvision's Inception on floats,
    10k/50k real images drawn with seed 42; docs/reproduce.md)."""
    precision: str = "fp32"
    """The network's precision when sampling (evaluation, sample, pairs): fp32, as the
    LOOM-CFM authors evaluate, or bf16 (autocast on CUDA; the solver's state stays
    fp32). bf16 costs adaptive solvers steps and accuracy: on a smooth test field
    dopri5 went from 19 to 97 NFE and its error from 1e-5 to 7e-3."""
    rtol: float = 1e-5
    """dopri5 relative tolerance."""
    atol: float = 1e-5
    """dopri5 absolute tolerance."""


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.data.name == "toy2d":
            return (2,)
        return (self.data.channels, self.data.resolution, self.data.resolution)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return list(v)
            return v

        return {
            k: ({f: plain(x) for f, x in v.items()} if isinstance(v, dict) else v)
            for k, v in dataclasses.asdict(self).items()
        }


DATASETS = (
    "cifar10",
    "imagenet32",
    "imagenet64",
    "folder",
    "digits",
    "mnist",
    "toy2d",
    "latents",
    "synthetic",
    "pairs",
)
MODELS = ("unet", "mlp")
TOYS = ("moons", "8gaussians")

PRECISIONS = ("fp32", "bf16")
# a config's or a sweep's name, which names a folder: no /, no .., no space
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
