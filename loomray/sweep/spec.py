"""Sweep specs: the searched domains, the spec itself and its validation.

Everything here checks a spec before anything starts or is written; every
problem is a `SweepError` whose message names the key and says how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from loomray.config import (
    NAME,
    Config,
    ConfigError,
    flatten_dotted,
    load_config_values,
    read_text_file,
    yaml_problem,
)
from loomray.flow.sampling import FIXED_SOLVERS, parse_method
from loomray.paths import PathError, folder_to_write

SPEC_KEYS = (
    "name",
    "base",
    "overrides",
    "space",
    "sampler",
    "objective",
    "trials",
    "concurrency",
    "seed",
    "resources",
    "scheduler",
    "search",
    "storage",
    "same_images",
)
# Keys counted in steps: with same_images they are scaled by reference batch / batch.
STEP_KEYS = ("train.steps", "train.warmup", "train.ckpt_every", "train.sample_every", "eval.every")
SEARCHES = ("tpe", "grid")
SAMPLER_KEYS = ("sampler.solver", "sampler.steps")
DOMAINS = ("choice", "int", "float", "loguniform")
RESOURCES = {
    "workers": "train.workers",
    "cpus_per_worker": "train.cpus_per_worker",
    "gpus_per_worker": "train.gpus_per_worker",
}
DEFAULT_STORAGE = "runs/sweeps"

SWEEP_KEEPS = 2  # checkpoints each of a sweep's trainings keeps, unless overridden


class SweepError(ValueError):
    """A sweep spec or request is wrong; the message says how to fix it."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise SweepError(message)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Domain:
    """One searched key: ``{choice: [...]}``, ``{int: [lo, hi]}``, ``{float: [lo, hi]}``
    or ``{loguniform: [lo, hi]}`` (``log: true`` also works for int and float)."""

    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @classmethod
    def parse(cls, key: str, raw: Any) -> Domain:
        where = f"space {key}"
        _need(
            isinstance(raw, dict),
            f"{where} must be a mapping like {{choice: [1, 2, 4]}} or {{int: [1, 8]}}, got {raw!r}",
        )
        kinds = [k for k in raw if k in DOMAINS]
        extra = sorted(set(raw) - set(DOMAINS) - {"log"})
        _need(
            not extra,
            f"{where} has unknown field {extra[0] if extra else ''!r}; "
            f"use one of {', '.join(DOMAINS)} (and log)",
        )
        _need(len(kinds) == 1, f"{where} needs exactly one of {', '.join(DOMAINS)}")
        kind, body = kinds[0], raw[kinds[0]]
        log = raw.get("log", False)
        _need(isinstance(log, bool), f"{where}: log must be true or false")
        if kind == "choice":
            _need(
                isinstance(body, list) and len(body) > 0,
                f"{where}: choice must be a non-empty list",
            )
            _need(not log, f"{where}: log does not apply to choice")
            ok = all(v is None or isinstance(v, (bool, int, float, str)) for v in body)
            _need(ok, f"{where}: choice values must be numbers, strings or booleans")
            _need(len(set(map(repr, body))) == len(body), f"{where}: choice has repeated values")
            return cls(key, kind, tuple(body))
        _need(
            isinstance(body, list) and len(body) == 2 and all(_is_num(v) for v in body),
            f"{where}: {kind} must be [low, high] numbers, got {body!r}",
        )
        low, high = body
        _need(low < high, f"{where}: low {low} must be below high {high}")
        if kind == "int":
            _need(_is_int(low) and _is_int(high), f"{where}: int bounds must be integers")
        if kind == "loguniform":
            kind, log = "float", True
        if log:
            _need(low > 0, f"{where}: a log scale needs low > 0, got {low}")
        return cls(key, kind, (), low, high, log)

    def edges(self) -> tuple:
        """Values every trial config must accept: each choice, or both bounds."""
        return self.values if self.kind == "choice" else (self.low, self.high)

    def grid(self) -> tuple:
        """Every value, for an exhaustive search (choice and int domains only)."""
        if self.kind == "choice":
            return self.values
        if self.kind == "int" and not self.log:
            return tuple(range(int(self.low), int(self.high) + 1))
        raise SweepError(
            f"space {self.key}: search grid needs choice or int domains, not {self.kind}"
        )

    def optuna(self):
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log:
            out["log"] = True
        return out


@dataclass
class SweepSpec:
    name: str
    base: str
    overrides: dict[str, Any]
    space: dict[str, Domain]
    sampler: dict[str, Any]
    objectives: tuple[str, ...]
    trials: int
    concurrency: int  # 0: auto, as many as the cluster can hold
    seed: int
    resources: dict[str, Any]
    scheduler: dict[str, Any] | None
    storage: Path
    source: str = ""
    search: str = "tpe"
    same_images: bool = False
    """Every trial sees as many images as the base's batch does in its steps: a trial
    of batch b trains steps x reference_batch / b (its warm-up, checkpoints and
    evaluations scaled alike, and its EMA decay so that the EMA averages over as
    many images), so that batch sizes compare at equal data, not equal steps."""
    reference_batch: int = 0
    put_aside: bool = True
    """False: a trial whose model another trial trains waits for it in its slot (as
    loomray did before; `loomray bench sweep` compares the two)."""

    @property
    def metric(self) -> str:
        """The score (fid, or energy on toy2d): the first objective."""
        return self.objectives[0]

    @property
    def dir(self) -> Path:
        return self.storage / self.name

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def method_of(self, params: dict[str, Any]) -> str:
        given = {k.removeprefix("sampler."): v for k, v in params.items() if k in SAMPLER_KEYS}
        return self.method_of_sampler({**self.sampler, **given})

    @staticmethod
    def method_of_sampler(sampler: dict[str, Any]) -> str:
        """``{solver: euler, steps: 2}`` -> ``euler-2`` (dopri5 has no steps)."""
        solver, steps = sampler["solver"], sampler["steps"]
        return parse_method(solver if solver == "dopri5" else f"{solver}-{int(steps)}").name

    def trial_config(self, params: dict[str, Any]) -> tuple[Config, str]:
        """The full config a trial trains (evaluated at its sampler) and that sampler."""
        method = self.method_of(params)
        # a sweep trains many models: each keeps its last 2 checkpoints unless told
        values = {"train.keep_checkpoints": SWEEP_KEEPS, **self.overrides}
        values.update({RESOURCES[k]: v for k, v in self.resources.items()})
        values.update({k: v for k, v in params.items() if k not in SAMPLER_KEYS})
        values["eval.methods"] = [method]
        # A searched key may act only in some combinations (coupling.caches with
        # coupling.kind searched too); each was checked against the base on its own.
        cfg = load_config_values(self.base, values, frozenset(self.space))
        if not self.same_images or "train.batch" not in params:
            return cfg, method
        scale = self.batch_scale(cfg.train.batch)
        for key in STEP_KEYS:
            section, name = key.split(".")
            steps = getattr(getattr(cfg, section), name)
            values[key] = max(1, round(steps * scale)) if steps else 0
        # the EMA's horizon in images too: 1 - decay is per step, so it scales with 1/scale
        if cfg.train.ema > 0:
            values["train.ema"] = max(0.0, 1.0 - (1.0 - cfg.train.ema) / scale)
        return load_config_values(self.base, values, frozenset(self.space)), method

    def batch_scale(self, batch: int) -> float:
        """Steps of batch ``batch`` per step of the reference batch (same_images), else 1."""
        return self.reference_batch / batch if self.same_images else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "overrides": dict(self.overrides),
            "space": {k: d.to_dict() for k, d in self.space.items()},
            "sampler": dict(self.sampler),
            "objective": list(self.objectives) if self.multi else self.metric,
            "trials": self.trials,
            "concurrency": self.concurrency or "auto",
            "seed": self.seed,
            "resources": dict(self.resources),
            "scheduler": dict(self.scheduler) if self.scheduler else None,
            **({"search": self.search} if self.search != "tpe" else {}),
            **({"same_images": True} if self.same_images else {}),
        }


def metric_of(cfg: Config) -> str:
    """The quality metric a config is scored with (see loomray.evaluation.evaluate)."""
    return "energy" if cfg.data.name == "toy2d" else "fid"


def _check_fields(raw: Any, source: str) -> None:
    _need(isinstance(raw, dict), f"{source} must be a mapping of sweep fields")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    _need(
        not unknown,
        f"{source}: unknown field {unknown[0] if unknown else ''!r}; "
        f"a sweep spec has {', '.join(SPEC_KEYS)}",
    )


def _parse_name(raw: dict[str, Any], source: str) -> str:
    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "sweep"
    name = raw.get("name", default_name)
    _need(
        isinstance(name, str) and NAME.fullmatch(name) is not None,
        f"{source}: name must be letters, digits, '.', '_' or '-', got {name!r}",
    )
    return name


def _parse_base(raw: dict[str, Any], source: str) -> str:
    base = raw.get("base")
    _need(isinstance(base, str) and bool(base), f"{source}: base must name a preset or YAML file")
    if not Path(base).is_absolute() and source.endswith((".yaml", ".yml")):
        beside = Path(source).parent / base  # a base YAML next to the spec
        base = str(beside) if beside.is_file() else base
    return base


def _parse_overrides(raw: dict[str, Any], source: str) -> dict[str, Any]:
    overrides = raw.get("overrides") or {}
    _need(isinstance(overrides, dict), f"{source}: overrides must be a mapping of config keys")
    return flatten_dotted(overrides)


def _parse_resources(raw: dict[str, Any], source: str) -> dict[str, Any]:
    resources = raw.get("resources") or {}
    _need(isinstance(resources, dict), f"{source}: resources must be a mapping")
    bad = sorted(set(resources) - set(RESOURCES))
    _need(
        not bad, f"{source}: unknown resource {bad[0] if bad else ''!r}; use {', '.join(RESOURCES)}"
    )
    return resources


def _config_with(
    base: str,
    overrides: dict[str, Any],
    resources: dict[str, Any],
    values: dict[str, Any],
    where: str,
) -> Config:
    try:
        merged = {**overrides, **{RESOURCES[k]: v for k, v in resources.items()}, **values}
        return load_config_values(base, merged)
    except ConfigError as err:
        raise SweepError(f"{where}: {err}") from err


def _parse_sampler(raw: dict[str, Any], source: str, cfg: Config) -> dict[str, Any]:
    first = parse_method(cfg.eval.methods[0])
    sampler = {"solver": first.solver, "steps": first.steps or 1}
    given = raw.get("sampler") or {}
    _need(
        isinstance(given, dict) and set(given) <= {"solver", "steps"},
        f"{source}: sampler must be a mapping with solver and steps",
    )
    sampler.update(given)
    _need(
        sampler["solver"] in (*FIXED_SOLVERS, "dopri5"),
        f"{source}: sampler.solver must be one of {', '.join((*FIXED_SOLVERS, 'dopri5'))}, "
        f"got {sampler['solver']!r}",
    )
    _need(
        _is_int(sampler["steps"]) and sampler["steps"] >= 1,
        f"{source}: sampler.steps must be an integer >= 1, got {sampler['steps']!r}",
    )
    return sampler


def _check_domain(key: str, domain: Domain, config_with: Callable[..., Config]) -> None:
    """One searched key: a sampler key, or a config key every edge value of which loads."""
    if key == "sampler.solver":
        _need(domain.kind == "choice", "space sampler.solver must be a choice")
        for v in domain.values:
            _need(
                v in (*FIXED_SOLVERS, "dopri5"),
                f"space sampler.solver: unknown solver {v!r}; use "
                f"{', '.join((*FIXED_SOLVERS, 'dopri5'))}",
            )
    elif key == "sampler.steps":
        _need(domain.kind in ("int", "choice"), "space sampler.steps must be int or choice")
        _need(
            all(_is_int(v) and v >= 1 for v in domain.edges()),
            "space sampler.steps values must be integers >= 1",
        )
    elif key.startswith("sampler."):
        raise SweepError(f"space {key}: the sampler keys are {', '.join(SAMPLER_KEYS)}")
    elif key.startswith("eval."):
        raise SweepError(
            f"space {key}: evaluation settings are fixed across trials so scores compare; "
            "search the sampler with sampler.solver and sampler.steps"
        )
    elif key in RESOURCES.values():
        raise SweepError(f"space {key}: resources are fixed per sweep (resources:)")
    else:
        for value in domain.edges():
            config_with({key: value}, f"space {key}={value!r}")


def _parse_space(
    raw: dict[str, Any], source: str, config_with: Callable[..., Config]
) -> dict[str, Domain]:
    space_raw = raw.get("space")
    _need(
        isinstance(space_raw, dict) and bool(space_raw),
        f"{source}: space must map at least one config key to a domain",
    )
    space = {}
    for key, body in space_raw.items():
        _need(isinstance(key, str), f"{source}: space keys must be strings, got {key!r}")
        domain = Domain.parse(key, body)
        _check_domain(key, domain, config_with)
        space[key] = domain
    return space


def _parse_objectives(raw: dict[str, Any], source: str, cfg: Config) -> tuple[str, ...]:
    objective = raw.get("objective", metric_of(cfg))
    objectives = tuple(objective) if isinstance(objective, list) else (objective,)
    metric = metric_of(cfg)
    _need(
        objectives[0] == metric,
        f"{source}: objective must start with {metric!r}, the metric of {cfg.data.name} "
        f"(got {objectives[0]!r})",
    )
    _need(
        objectives in ((metric,), (metric, "nfe")),
        f"{source}: objective is {metric!r} or [{metric}, nfe], got {objective!r}",
    )
    return objectives


def _count(raw: dict[str, Any], source: str, key: str, default: int, low: int) -> int:
    v = raw.get(key, default)
    _need(_is_int(v) and v >= low, f"{source}: {key} must be an integer >= {low}, got {v!r}")
    return v


def _parse_concurrency(raw: dict[str, Any], source: str) -> int:
    """Trials at once: an integer >= 1, or ``auto`` (0 here: as many as the cluster can
    hold, loomray.sweep.budget)."""
    if raw.get("concurrency") == "auto":
        return 0
    v = raw.get("concurrency", 1)
    _need(
        _is_int(v) and v >= 1,
        f"{source}: concurrency must be an integer >= 1 or auto, got {v!r}",
    )
    return v


def _parse_scheduler(
    raw: dict[str, Any], source: str, cfg: Config, default_sampler: str
) -> dict[str, Any] | None:
    scheduler = raw.get("scheduler")
    if scheduler in (None, "none", "fifo"):
        return None
    _need(
        isinstance(scheduler, dict) and scheduler.get("kind") == "asha",
        f"{source}: scheduler is none or {{kind: asha, grace_steps: N}}, got {scheduler!r}",
    )
    bad = sorted(set(scheduler) - {"kind", "grace_steps", "reduction_factor", "sampler"})
    _need(not bad, f"{source}: unknown scheduler field {bad[0] if bad else ''!r}")
    reference = scheduler.get("sampler", default_sampler)
    try:
        reference = parse_method(str(reference)).name
    except ValueError as err:
        raise SweepError(f"{source}: scheduler sampler: {err}") from err
    scheduler = {
        "kind": "asha",
        "grace_steps": scheduler.get("grace_steps", cfg.eval.every),
        "reduction_factor": scheduler.get("reduction_factor", 2),
        # ASHA compares every training at this one sampler, whatever the trials' own
        "sampler": reference,
    }
    _need(
        cfg.eval.every > 0,
        f"{source}: the asha scheduler stops trials on the FID measured while training; "
        "set overrides eval.every > 0",
    )
    g, rf = scheduler["grace_steps"], scheduler["reduction_factor"]
    _need(
        _is_int(g) and 1 <= g < cfg.train.steps,
        f"{source}: scheduler grace_steps must be in 1..{cfg.train.steps - 1}, got {g!r}",
    )
    _need(
        _is_num(rf) and rf > 1, f"{source}: scheduler reduction_factor must be > 1, got {rf!r}"
    )
    return scheduler


def _parse_search(raw: dict[str, Any], source: str, space: dict[str, Domain]) -> tuple[str, int]:
    """The search (tpe or grid) and how many configurations the space has (0: endless)."""
    search = raw.get("search", "tpe")
    _need(search in SEARCHES, f"{source}: search is tpe or grid, got {search!r}")
    finite = all(d.kind == "choice" or (d.kind == "int" and not d.log) for d in space.values())
    if search == "tpe" and not finite:
        return search, 0
    return search, math.prod(len(d.grid()) for d in space.values())


def _parse_storage(raw: dict[str, Any], source: str, storage: str | None) -> str:
    store = storage if storage is not None else raw.get("storage", DEFAULT_STORAGE)
    _need(isinstance(store, str) and bool(store), f"{source}: storage must be a directory path")
    try:
        folder_to_write(store, "sweep storage")
    except PathError as err:
        raise SweepError(str(err)) from None
    return store


def spec_from_dict(raw: Any, source: str = "spec", storage: str | None = None) -> SweepSpec:
    """Validate a sweep spec; every problem is one sentence naming the key."""
    _check_fields(raw, source)
    name = _parse_name(raw, source)
    base = _parse_base(raw, source)
    overrides = _parse_overrides(raw, source)
    resources = _parse_resources(raw, source)
    config_with = partial(_config_with, base, overrides, resources)
    cfg = config_with({}, f"{source} base {base}")
    sampler = _parse_sampler(raw, source, cfg)
    space = _parse_space(raw, source, config_with)
    objectives = _parse_objectives(raw, source, cfg)
    search, points = _parse_search(raw, source, space)
    trials, concurrency, seed = (
        _count(raw, source, "trials", points if search == "grid" else min(points or 8, 8), 1),
        _parse_concurrency(raw, source),
        _count(raw, source, "seed", 0, 0),
    )
    _need(
        not points or trials <= points,
        f"{source}: the space has {points} configurations; trials must be at most {points} "
        f"(every trial tries a new one), got {trials}",
    )
    default_sampler = SweepSpec.method_of_sampler(sampler)
    scheduler = _parse_scheduler(raw, source, cfg, default_sampler)
    store = _parse_storage(raw, source, storage)
    same_images = raw.get("same_images", False)
    _need(isinstance(same_images, bool), f"{source}: same_images must be true or false")
    _need(
        not same_images or "train.batch" in space,
        f"{source}: same_images scales the steps by the batch; search train.batch in space",
    )
    return SweepSpec(
        name=name,
        base=base,
        overrides=overrides,
        space=space,
        sampler=sampler,
        objectives=objectives,
        trials=trials,
        concurrency=concurrency,
        seed=seed,
        resources=dict(resources),
        scheduler=scheduler,
        # absolute now: trials run in Tune's own working directories
        storage=Path(store).expanduser().resolve(),
        source=source,
        search=search,
        same_images=same_images,
        reference_batch=cfg.train.batch,
    )


def shipped_specs() -> list[str]:
    """The sweep specs that ship with loomray (also in the repository's sweeps/)."""
    from importlib import resources

    folder = resources.files("loomray.sweeps")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_spec(
    path: str | Path, storage: str | None = None, overrides: list[str] | tuple = ()
) -> SweepSpec:
    """A spec file, or the name of a shipped spec (``caches``, ``caches-digits``), with
    ``key=value`` overrides (``apply_overrides``)."""
    from importlib import resources

    source = str(path)
    if Path(source).exists():
        text = read_text_file(Path(source), "sweep spec", SweepError)
    elif source in shipped_specs():
        text = resources.files("loomray.sweeps").joinpath(f"{source}.yaml").read_text()
        source = f"{source}.yaml"
    else:
        raise SweepError(
            f"sweep spec {source} does not exist; shipped specs are {', '.join(shipped_specs())}"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SweepError(f"sweep spec {source} is not valid YAML: {yaml_problem(err)}") from err
    if overrides:
        raw = apply_overrides(raw, overrides, source)
    return spec_from_dict(raw, source, storage)


def apply_overrides(raw: Any, overrides: list[str] | tuple, source: str) -> dict[str, Any]:
    """``trials=8``, ``concurrency=2``, ``scheduler.grace_steps=50`` set the spec's own
    keys; any other ``section.key=value`` (``train.steps=200``) joins its config
    overrides. Values are read as YAML, as in the spec."""
    _need(isinstance(raw, dict), f"sweep spec {source} must be a mapping")
    raw = dict(raw)
    existing = raw.get("overrides") or {}
    _need(isinstance(existing, dict), f"{source}: overrides must be a mapping of config keys")
    config = flatten_dotted(existing)
    for item in overrides:
        key, sep, text = item.partition("=")
        _need(bool(sep) and bool(key), f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            raise SweepError(f"override {item!r}: {yaml_problem(err)}") from err
        head, _, rest = key.partition(".")
        if head in SPEC_KEYS and head != "overrides":
            if rest:  # a nested spec key: scheduler.grace_steps, resources.workers
                _need(
                    isinstance(raw.get(head, {}), dict),
                    f"override {item!r}: the spec's {head} is not a mapping",
                )
                raw[head] = {**(raw.get(head) or {}), rest: value}
            else:
                raw[head] = value
        else:
            _need(
                bool(rest),
                f"override {item!r}: {key!r} is neither a sweep spec key "
                f"({', '.join(SPEC_KEYS)}) nor a config key section.key",
            )
            config[key] = value
    raw["overrides"] = config
    return raw
