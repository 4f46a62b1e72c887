"""Reading a sweep spec: every key checked before anything starts or is written;
every problem is a `SweepError` whose message names the key and says how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from importlib import resources
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
from loomray.sweep.domain import Domain, SweepError, is_int, is_num, need
from loomray.sweep.spec import (
    DEFAULT_STORAGE,
    RESOURCES,
    SAMPLER_KEYS,
    SEARCHES,
    SPEC_KEYS,
    SweepSpec,
    metric_of,
)


def _check_fields(raw: Any, source: str) -> None:
    need(isinstance(raw, dict), f"{source} must be a mapping of sweep fields")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    need(
        not unknown,
        f"{source}: unknown field {unknown[0] if unknown else ''!r}; "
        f"a sweep spec has {', '.join(SPEC_KEYS)}",
    )


def _parse_name(raw: dict[str, Any], source: str) -> str:
    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "sweep"
    name = raw.get("name", default_name)
    need(
        isinstance(name, str) and NAME.fullmatch(name) is not None,
        f"{source}: name must be letters, digits, '.', '_' or '-', got {name!r}",
    )
    return name


def _parse_base(raw: dict[str, Any], source: str) -> str:
    base = raw.get("base")
    need(isinstance(base, str) and bool(base), f"{source}: base must name a preset or YAML file")
    if not Path(base).is_absolute() and source.endswith((".yaml", ".yml")):
        beside = Path(source).parent / base  # a base YAML next to the spec
        base = str(beside) if beside.is_file() else base
    return base


def _parse_overrides(raw: dict[str, Any], source: str) -> dict[str, Any]:
    overrides = raw.get("overrides") or {}
    need(isinstance(overrides, dict), f"{source}: overrides must be a mapping of config keys")
    return flatten_dotted(overrides)


def _parse_resources(raw: dict[str, Any], source: str) -> dict[str, Any]:
    resources = raw.get("resources") or {}
    need(isinstance(resources, dict), f"{source}: resources must be a mapping")
    bad = sorted(set(resources) - set(RESOURCES))
    need(
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
    need(
        isinstance(given, dict) and set(given) <= {"solver", "steps"},
        f"{source}: sampler must be a mapping with solver and steps",
    )
    sampler.update(given)
    need(
        sampler["solver"] in (*FIXED_SOLVERS, "dopri5"),
        f"{source}: sampler.solver must be one of {', '.join((*FIXED_SOLVERS, 'dopri5'))}, "
        f"got {sampler['solver']!r}",
    )
    need(
        is_int(sampler["steps"]) and sampler["steps"] >= 1,
        f"{source}: sampler.steps must be an integer >= 1, got {sampler['steps']!r}",
    )
    return sampler


def _check_domain(key: str, domain: Domain, config_with: Callable[..., Config]) -> None:
    """One searched key: a sampler key, or a config key every edge value of which loads."""
    if key == "sampler.solver":
        need(domain.kind == "choice", "space sampler.solver must be a choice")
        for v in domain.values:
            need(
                v in (*FIXED_SOLVERS, "dopri5"),
                f"space sampler.solver: unknown solver {v!r}; use "
                f"{', '.join((*FIXED_SOLVERS, 'dopri5'))}",
            )
    elif key == "sampler.steps":
        need(domain.kind in ("int", "choice"), "space sampler.steps must be int or choice")
        need(
            all(is_int(v) and v >= 1 for v in domain.edges()),
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
    need(
        isinstance(space_raw, dict) and bool(space_raw),
        f"{source}: space must map at least one config key to a domain",
    )
    space = {}
    for key, body in space_raw.items():
        need(isinstance(key, str), f"{source}: space keys must be strings, got {key!r}")
        domain = Domain.parse(key, body)
        _check_domain(key, domain, config_with)
        space[key] = domain
    return space


def _parse_objectives(raw: dict[str, Any], source: str, cfg: Config) -> tuple[str, ...]:
    objective = raw.get("objective", metric_of(cfg))
    objectives = tuple(objective) if isinstance(objective, list) else (objective,)
    metric = metric_of(cfg)
    need(
        objectives[0] == metric,
        f"{source}: objective must start with {metric!r}, the metric of {cfg.data.name} "
        f"(got {objectives[0]!r})",
    )
    need(
        objectives in ((metric,), (metric, "nfe")),
        f"{source}: objective is {metric!r} or [{metric}, nfe], got {objective!r}",
    )
    return objectives


def _count(raw: dict[str, Any], source: str, key: str, default: int, low: int) -> int:
    v = raw.get(key, default)
    need(is_int(v) and v >= low, f"{source}: {key} must be an integer >= {low}, got {v!r}")
    return v


def _parse_concurrency(raw: dict[str, Any], source: str) -> int:
    """Trials at once: an integer >= 1, or ``auto`` (0 here: as many as the cluster can
    hold, loomray.sweep.budget)."""
    if raw.get("concurrency") == "auto":
        return 0
    v = raw.get("concurrency", 1)
    need(
        is_int(v) and v >= 1,
        f"{source}: concurrency must be an integer >= 1 or auto, got {v!r}",
    )
    return v


def _parse_scheduler(
    raw: dict[str, Any], source: str, cfg: Config, default_sampler: str
) -> dict[str, Any] | None:
    scheduler = raw.get("scheduler")
    if scheduler in (None, "none", "fifo"):
        return None
    need(
        isinstance(scheduler, dict) and scheduler.get("kind") == "asha",
        f"{source}: scheduler is none or {{kind: asha, grace_steps: N}}, got {scheduler!r}",
    )
    bad = sorted(set(scheduler) - {"kind", "grace_steps", "reduction_factor", "sampler"})
    need(not bad, f"{source}: unknown scheduler field {bad[0] if bad else ''!r}")
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
    need(
        cfg.eval.every > 0,
        f"{source}: the asha scheduler stops trials on the FID measured while training; "
        "set overrides eval.every > 0",
    )
    g, rf = scheduler["grace_steps"], scheduler["reduction_factor"]
    need(
        is_int(g) and 1 <= g < cfg.train.steps,
        f"{source}: scheduler grace_steps must be in 1..{cfg.train.steps - 1}, got {g!r}",
    )
    need(is_num(rf) and rf > 1, f"{source}: scheduler reduction_factor must be > 1, got {rf!r}")
    return scheduler


def _parse_search(raw: dict[str, Any], source: str, space: dict[str, Domain]) -> tuple[str, int]:
    """The search (tpe or grid) and how many configurations the space has (0: endless)."""
    search = raw.get("search", "tpe")
    need(search in SEARCHES, f"{source}: search is tpe or grid, got {search!r}")
    finite = all(d.kind == "choice" or (d.kind == "int" and not d.log) for d in space.values())
    if search == "tpe" and not finite:
        return search, 0
    return search, math.prod(len(d.grid()) for d in space.values())


def _parse_storage(raw: dict[str, Any], source: str, storage: str | None) -> str:
    store = storage if storage is not None else raw.get("storage", DEFAULT_STORAGE)
    need(isinstance(store, str) and bool(store), f"{source}: storage must be a directory path")
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
    need(
        not points or trials <= points,
        f"{source}: the space has {points} configurations; trials must be at most {points} "
        f"(every trial tries a new one), got {trials}",
    )
    default_sampler = SweepSpec.method_of_sampler(sampler)
    scheduler = _parse_scheduler(raw, source, cfg, default_sampler)
    store = _parse_storage(raw, source, storage)
    same_images = raw.get("same_images", False)
    need(isinstance(same_images, bool), f"{source}: same_images must be true or false")
    need(
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
    folder = resources.files("loomray.sweeps")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_spec(
    path: str | Path, storage: str | None = None, overrides: list[str] | tuple = ()
) -> SweepSpec:
    """A spec file, or the name of a shipped spec (``caches``, ``caches-digits``), with
    ``key=value`` overrides (``apply_overrides``)."""

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
    need(isinstance(raw, dict), f"sweep spec {source} must be a mapping")
    raw = dict(raw)
    existing = raw.get("overrides") or {}
    need(isinstance(existing, dict), f"{source}: overrides must be a mapping of config keys")
    config = flatten_dotted(existing)
    for item in overrides:
        key, sep, text = item.partition("=")
        need(bool(sep) and bool(key), f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            raise SweepError(f"override {item!r}: {yaml_problem(err)}") from err
        head, _, rest = key.partition(".")
        if head in SPEC_KEYS and head != "overrides":
            if rest:  # a nested spec key: scheduler.grace_steps, resources.workers
                need(
                    isinstance(raw.get(head, {}), dict),
                    f"override {item!r}: the spec's {head} is not a mapping",
                )
                raw[head] = {**(raw.get(head) or {}), rest: value}
            else:
                raw[head] = value
        else:
            need(
                bool(rest),
                f"override {item!r}: {key!r} is neither a sweep spec key "
                f"({', '.join(SPEC_KEYS)}) nor a config key section.key",
            )
            config[key] = value
    raw["overrides"] = config
    return raw
