"""Checks of a typed configuration: values that are impossible, and overrides that
would change nothing for the chosen model, data or coupling."""

from __future__ import annotations

from typing import Any

from loomray.config.schema import (
    DATASETS,
    MODELS,
    NAME,
    PRECISIONS,
    TOYS,
    Config,
    ConfigError,
    CouplingConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
)


def need(ok: bool, message: str) -> None:
    """Refuse with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> Config:
    """Check values that are well-typed but impossible; returns cfg."""
    need(
        isinstance(cfg.name, str) and NAME.fullmatch(cfg.name) is not None,
        "name must be letters, digits, '.', '_' or '-' (it names the default run dir "
        f"runs/<name>), got {cfg.name!r}",
    )
    _check_data(cfg.data)
    _check_model(cfg.data, cfg.model)
    _check_coupling(cfg.data, cfg.coupling)
    _check_train(cfg.train)
    _check_eval(cfg.eval)
    d, t = cfg.data, cfg.train
    if d.limit is not None and d.name != "toy2d":
        rows = d.limit * (2 if d.flip else 1)
        need(rows >= t.batch, f"train.batch {t.batch} exceeds the {rows} rows of data.limit")
    return cfg


def _check_data(d: DataConfig) -> None:
    """The dataset section."""
    need(d.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}, got {d.name!r}")
    need(d.toy in TOYS, f"data.toy must be one of {', '.join(TOYS)}, got {d.toy!r}")
    need(d.resolution >= 1, f"data.resolution must be positive, got {d.resolution}")
    need(d.channels >= 1, f"data.channels must be positive, got {d.channels}")
    need(d.limit is None or d.limit >= 1, f"data.limit must be positive, got {d.limit}")
    need(d.toy_points >= 2, f"data.toy_points must be at least 2, got {d.toy_points}")


def _check_model(d: DataConfig, m: ModelConfig) -> None:
    """The network: its kind for the data, its shape."""
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


def _check_latents_and_pairs(d: DataConfig) -> None:
    """What latents and reflow pairs ask of the data section."""
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


def _check_coupling(d: DataConfig, c: CouplingConfig) -> None:
    """The coupling: its kind for the data, caches, cost, service."""
    from loomray.coupling import KINDS
    from loomray.coupling.ot import COSTS

    need(c.kind in KINDS, f"coupling.kind must be one of {', '.join(KINDS)}, got {c.kind!r}")
    need(
        (d.name == "pairs") == (c.kind == "pairs"),
        "reflow pairs train with their stored noise: data.name=pairs goes with "
        f"coupling.kind=pairs (got data.name={d.name}, coupling.kind={c.kind})",
    )
    _check_latents_and_pairs(d)
    need(c.caches >= 1, f"coupling.caches must be at least 1, got {c.caches}")
    need(c.cost in COSTS, f"coupling.cost must be one of {', '.join(COSTS)}, got {c.cost!r}")
    need(c.snapshot_every >= 1, "coupling.snapshot_every must be at least 1")
    need(1 <= c.prefetch <= 8, f"coupling.prefetch must be in 1..8, got {c.prefetch}")
    need(c.timeout_s > 0, f"coupling.timeout_s must be positive, got {c.timeout_s}")
    need(c.service_cpus >= 0, f"coupling.service_cpus must be >= 0, got {c.service_cpus}")


def _check_train(t: TrainConfig) -> None:
    """The training loop: batch, steps, optimiser, resources, logging."""
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


def _check_eval(e: EvalConfig) -> None:
    """Scoring: samplers, sample count, protocol, tolerances."""
    from loomray.flow.sampling import parse_method

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
            lambda c: (
                f"only the loom coupling keeps noise caches and coupling.kind is {c.coupling.kind}"
            ),
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
