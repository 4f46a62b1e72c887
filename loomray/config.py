"""Typed run configuration: preset YAML + dotted overrides, validated once.

    cfg = load_config("cifar10", ["train.lr=1e-4", "coupling.caches=8"])

Every section is a dataclass; unknown keys, wrong types and impossible values
raise ``ConfigError`` with one sentence that names the key. The CLI turns that
into exit code 2. Old configs (e.g. inside checkpoints) are read with missing
keys filled from the defaults, so new fields never break them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


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


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("loomray.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def _read_yaml(source: str) -> dict[str, Any]:
    """The raw config of a preset or YAML file, its ``base`` chain applied."""
    path = Path(source)
    preset = source in preset_names()
    if preset:
        text = resources.files("loomray.presets").joinpath(f"{source}.yaml").read_text()
        origin = f"preset {source}"
    elif path.suffix in (".yaml", ".yml") or path.exists():
        text, origin = read_text_file(path, "config file", ConfigError), str(path)
    else:
        raise ConfigError(
            f"unknown preset {source!r}; presets are {', '.join(preset_names())}, "
            "or pass a path to a YAML file"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {yaml_problem(err)}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a mapping of sections, not {type(raw).__name__}")
    raw.setdefault("name", source if preset else path.stem)
    base = raw.pop("base", None)
    if base is not None:
        raw = _merge(_read_yaml(str(base)), raw)
    return raw


def flatten_dotted(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``."""
    out = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dotted(v, key + "."))
        else:
            out[key] = v
    return out


def read_text_file(path: Path, what: str, error: type[ValueError]) -> str:
    """The text of a file the user named, or ``error`` with one sentence saying why not."""
    from loomray.paths import PathError, file_to_read

    try:
        return file_to_read(path, what).read_text()
    except PathError as err:
        raise error(str(err)) from err
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not a text file") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in words with its line and column (not PyYAML's "<unicode string>")."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.split("tag:yaml.org,2002:")[-1].strip("'")
        problem = f"the tag {tag} is not allowed (plain YAML only)"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.channel_mult=1,2"]`` -> nested dict of raw values."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        if not set_dotted(out, key.strip(), parsed):
            raise ConfigError(f"override {item!r} conflicts with another override")
    return out


def set_dotted(out: dict[str, Any], key: str, value: Any) -> bool:
    """``set_dotted(d, "train.lr", 1e-4)`` sets ``d["train"]["lr"]``; False on a clash."""
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            return False
    node[leaf] = value
    return True


def load_config_values(
    source: str, values: dict[str, Any], unchecked: frozenset[str] = frozenset()
) -> Config:
    """A preset or YAML path with already-typed dotted values applied (sweeps use this).

    Every value must act for the resulting config (``check_applicable``) except the
    ``unchecked`` keys (a sweep's searched keys, whose values come in combinations)."""
    raw = _read_yaml(source)
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if (
            not key
            or any(not part for part in key.split("."))
            or not set_dotted(nested, key, value)
        ):
            raise ConfigError(f"config key {key!r} is not of the form section.key")
    return check_applicable(config_from_dict(_merge(raw, nested)), set(values) - unchecked)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        if isinstance(items, (list, tuple)):
            item_hint = args[0]
            return tuple(
                _coerce(
                    yaml.safe_load(i) if isinstance(i, str) and item_hint is not str else i,
                    item_hint,
                    key,
                )
                for i in items
            )
    name = getattr(hint, "__name__", str(hint))
    if value is None:
        raise ConfigError(f"{key} needs a value ({key}=<{name}>), got none")
    raise ConfigError(f"{key} must be {name}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; {prefix or 'config'} has "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


PRECISIONS = ("fp32", "bf16")
# a config's or a sweep's name, which names a folder: no /, no .., no space
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def validate(cfg: Config) -> Config:
    """Check values that are well-typed but impossible; returns cfg."""
    from loomray.coupling import KINDS
    from loomray.coupling.ot import COSTS
    from loomray.flow.sampling import parse_method

    d, m, c, t, e = cfg.data, cfg.model, cfg.coupling, cfg.train, cfg.eval

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(
        isinstance(cfg.name, str) and NAME.fullmatch(cfg.name) is not None,
        "name must be letters, digits, '.', '_' or '-' (it names the default run dir "
        f"runs/<name>), got {cfg.name!r}",
    )
    need(d.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}, got {d.name!r}")
    need(d.toy in TOYS, f"data.toy must be one of {', '.join(TOYS)}, got {d.toy!r}")
    need(d.resolution >= 1, f"data.resolution must be positive, got {d.resolution}")
    need(d.channels >= 1, f"data.channels must be positive, got {d.channels}")
    need(d.limit is None or d.limit >= 1, f"data.limit must be positive, got {d.limit}")
    need(d.toy_points >= 2, f"data.toy_points must be at least 2, got {d.toy_points}")
    need(m.kind in MODELS, f"model.kind must be one of {', '.join(MODELS)}, got {m.kind!r}")
    need(
        not (d.name == "toy2d" and m.kind != "mlp"),
        "toy2d data is 2-D points and needs model.kind=mlp",
    )
    need(
        not (d.name != "toy2d" and m.kind == "mlp" and d.resolution * d.resolution > 4096),
        "model.kind=mlp is for toy2d and tiny images; use unet above 64x64",
    )
    if m.kind == "unet":
        levels = len(m.channel_mult)
        need(levels >= 1, "model.channel_mult needs at least one level")
        need(
            d.resolution % (2 ** (levels - 1)) == 0,
            f"data.resolution {d.resolution} cannot be halved {levels - 1} times "
            f"(model.channel_mult has {levels} levels)",
        )
        need(m.channels >= 1 and m.res_blocks >= 1, "model.channels and model.res_blocks >= 1")
        need(all(x >= 1 for x in m.channel_mult), "model.channel_mult entries must be >= 1")
        need(m.head_channels >= 1, f"model.head_channels must be positive, got {m.head_channels}")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    need(m.time_scale > 0, f"model.time_scale must be positive, got {m.time_scale}")
    need(c.kind in KINDS, f"coupling.kind must be one of {', '.join(KINDS)}, got {c.kind!r}")
    need(
        (d.name == "pairs") == (c.kind == "pairs"),
        "reflow pairs train with their stored noise: data.name=pairs goes with "
        f"coupling.kind=pairs (got data.name={d.name}, coupling.kind={c.kind})",
    )
    need(
        d.posterior in ("sample", "mean"),
        f"data.posterior must be sample or mean, got {d.posterior!r}",
    )
    need(
        not (d.name == "latents" and d.flip),
        "data.flip must be false for latents: loomray encode --flip stores the mirrored "
        "images' latents as rows of their own",
    )
    need(
        d.latent_scale is None or d.latent_scale > 0,
        f"data.latent_scale must be positive, got {d.latent_scale}",
    )
    need(
        not (d.name == "pairs" and d.flip),
        "data.flip must be false for pairs: a mirrored image would need mirrored noise",
    )
    need(c.caches >= 1, f"coupling.caches must be at least 1, got {c.caches}")
    need(c.cost in COSTS, f"coupling.cost must be one of {', '.join(COSTS)}, got {c.cost!r}")
    need(c.snapshot_every >= 1, "coupling.snapshot_every must be at least 1")
    need(1 <= c.prefetch <= 8, f"coupling.prefetch must be in 1..8, got {c.prefetch}")
    need(c.timeout_s > 0, f"coupling.timeout_s must be positive, got {c.timeout_s}")
    need(c.service_cpus >= 0, f"coupling.service_cpus must be >= 0, got {c.service_cpus}")
    need(t.max_failures >= 0, f"train.max_failures must be >= 0, got {t.max_failures}")
    need(t.workers >= 1, f"train.workers must be at least 1, got {t.workers}")
    need(t.batch >= 1, f"train.batch must be at least 1, got {t.batch}")
    need(
        t.batch % t.workers == 0,
        f"train.batch {t.batch} is not divisible by train.workers {t.workers}",
    )
    need(t.steps >= 1, f"train.steps must be at least 1, got {t.steps}")
    need(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    need(t.warmup >= 0, f"train.warmup must be >= 0, got {t.warmup}")
    need(0.0 <= t.ema < 1.0, f"train.ema must be in [0, 1), got {t.ema}")
    need(t.sigma >= 0, f"train.sigma must be >= 0, got {t.sigma}")
    need(t.grad_clip > 0, f"train.grad_clip must be positive, got {t.grad_clip}")
    need(t.gpus_per_worker >= 0 and t.cpus_per_worker >= 0, "train resources must be >= 0")
    for k in ("log_every", "ckpt_every"):
        need(getattr(t, k) >= 1, f"train.{k} must be at least 1, got {getattr(t, k)}")
    need(t.sample_every >= 0, "train.sample_every must be >= 0")
    need(t.keep_checkpoints >= 0, f"train.keep_checkpoints must be >= 0, got {t.keep_checkpoints}")
    need(len(e.methods) >= 1, "eval.methods needs at least one sampler")
    need(
        e.precision in PRECISIONS,
        f"eval.precision must be {' or '.join(PRECISIONS)}, got {e.precision!r}",
    )
    for method in e.methods:
        try:
            parse_method(method)
        except ValueError as err:
            raise ConfigError(f"eval.methods: {err}") from err
    need(e.n >= 2, f"eval.n must be at least 2, got {e.n}")
    need(e.batch >= 1, f"eval.batch must be at least 1, got {e.batch}")
    need(
        e.protocol in ("standard", "paper"),
        f"eval.protocol must be standard or paper, got {e.protocol!r}",
    )
    need(e.every >= 0, "eval.every must be >= 0")
    need(e.rtol > 0 and e.atol > 0, "eval.rtol and eval.atol must be positive")
    if d.limit is not None and d.name != "toy2d":
        rows = d.limit * (2 if d.flip else 1)
        need(rows >= t.batch, f"train.batch {t.batch} exceeds the {rows} rows of data.limit")
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults)."""
    return validate(_build(Config, raw, ""))


def load_config(source: str, overrides: list[str] | None = None) -> Config:
    """A preset name or YAML path, with ``section.key=value`` overrides applied."""
    extra = parse_overrides(overrides or [])
    cfg = config_from_dict(_merge(_read_yaml(source), extra))
    return check_applicable(cfg, set(flatten_dotted(extra)))


_UNET = ("channels", "res_blocks", "channel_mult", "attn_resolutions", "head_channels")


def _applies() -> dict[str, tuple[Any, Any]]:
    """Keys that act only for some models, datasets or couplings: (does it act for
    this config, why not). Set for another kind, such a key would change nothing."""
    unet = (lambda c: c.model.kind == "unet", lambda c: "it shapes the UNet and model.kind is mlp")
    mlp = (lambda c: c.model.kind == "mlp", lambda c: "it shapes the MLP and model.kind is unet")
    toy = (
        lambda c: c.data.name == "toy2d",
        lambda c: f"it shapes toy2d and data.name is {c.data.name}",
    )
    image = (lambda c: c.data.name != "toy2d", lambda c: "toy2d data is 2-D points")
    return {
        **{f"model.{k}": unet for k in _UNET},
        "train.channels_last": (
            lambda c: c.model.kind == "unet",
            lambda c: "it lays out a UNet's convolutions and model.kind is mlp",
        ),
        **{f"model.{k}": mlp for k in ("hidden", "layers")},
        **{f"data.{k}": toy for k in ("toy", "toy_points")},
        **{f"data.{k}": image for k in ("resolution", "channels", "flip")},
        **{
            f"data.{k}": (
                lambda c: c.data.name == "latents",
                lambda c: f"it is for latents and data.name is {c.data.name}",
            )
            for k in ("posterior", "autoencoder", "latent_scale")
        },
        "data.root": (
            lambda c: c.data.name not in ("toy2d", "digits", "mnist", "synthetic"),
            lambda c: f"{c.data.name} is built in and reads no files",
        ),
        "data.download": (
            lambda c: c.data.name == "cifar10",
            lambda c: f"only CIFAR-10 is downloaded and data.name is {c.data.name}",
        ),
        "coupling.caches": (
            lambda c: c.coupling.kind == "loom",
            lambda c: f"only the loom coupling keeps noise caches and coupling.kind is "
            f"{c.coupling.kind}",
        ),
    }


def check_applicable(cfg: Config, given: set[str]) -> Config:
    """Refuse an override (``given``: dotted keys) that has no effect for this model,
    data or coupling. Config files are not checked: a dumped config (a run's
    config.yaml, a sweep's best.yaml) holds every key."""
    rules = _applies()
    for key in sorted(given & set(rules)):
        applies, why = rules[key]
        if not applies(cfg):
            raise ConfigError(f"{key} has no effect: {why(cfg)}; drop it")
    return cfg


def run_identity(cfg: Config) -> dict[str, Any]:
    """What makes two configs the same run: everything but its length, its logging,
    checkpoints and retries (``RESULT_FREE``) and its scoring (a run is extended by
    raising train.steps, and scored with any sampler)."""
    d = cfg.to_dict()
    for key in (*RESULT_FREE, "workers"):  # workers: the global batch (train.batch) stays
        d["train"].pop(key)
    d.pop("eval")
    return d


RESULT_FREE = (
    "steps",
    "log_every",
    "ckpt_every",
    "keep_checkpoints",
    "sample_every",
    "max_failures",
)
"""train keys a resume may change: they never change what is trained (a run is
bit-identical whatever they are), only how long, and what is logged and kept."""


def run_id(cfg: Config) -> str:
    """A short digest of ``run_identity``: the coupling service's files carry it."""
    text = json.dumps(run_identity(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_label(cfg: Config, run_dir: str | os.PathLike) -> str:
    """How people and metrics tell runs apart: the run dir's name, and a digest of the
    run's identity (its config and absolute run dir), so that two runs whose folders
    share a name (``/a/runs/cifar10``, ``/b/runs/cifar10``) never meet."""
    run_dir = Path(run_dir).expanduser().resolve()
    key = hashlib.sha256(f"{run_id(cfg)}\0{run_dir}".encode()).hexdigest()[:12]
    return f"{run_dir.name}-{key}"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
