"""`loomray sweep`: Ray Tune + Optuna over LOOM-CFM's knobs, FID as the objective.

    spec = load_spec("sweeps/caches-digits.yaml")
    result = run_sweep(spec)

A spec names a base config (preset or YAML) with dotted overrides, a search
space over any config key plus the sampler (``sampler.solver``,
``sampler.steps``, hence NFE), the objective (FID, or energy distance on toy2d,
at the trial's sampler; optionally NFE as a second objective), the number of
trials, their concurrency and resources, an optional ASHA scheduler on the FID
measured while training, and where it all goes. The spec is validated before
anything starts or is written.

Each trial is a Tune function trainable that launches a TorchTrainer with the
coupling service exactly as ``loomray train`` does. The sampler does not change
training, so trials are keyed by their *training* config: the first trial of a
key trains ``models/<key>/`` and every later trial of that key only evaluates
its checkpoint with its own sampler (a file lock per key makes concurrent
trials of one key wait instead of training twice; the OS drops the lock of a
killed trial). OptunaSearch (TPE, seeded) keeps its study in an Optuna journal
file, and Tune's experiment state makes ``--resume`` continue the same study.

A sweep directory holds::

    spec.yaml          the validated spec (resume refuses a changed one)
    optuna.journal     the Optuna study
    tune/              Ray Tune's experiment state and trial logs
    models/<key>/      one training run per training config (a `loomray train` run dir)
    trials/<id>.json   one record per finished trial
    trials.parquet     the table of trials
    best.yaml          the best trial's full config, ready for `loomray train --config`
    fid-vs-nfe.png     FID against NFE per cache count (Pareto front if multi-objective)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loomray.config import Config, ConfigError, dump_config, load_config_values
from loomray.sampling import FIXED_SOLVERS, parse_method

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
    "storage",
)
SAMPLER_KEYS = ("sampler.solver", "sampler.steps")
DOMAINS = ("choice", "int", "float", "loguniform")
RESOURCES = {
    "workers": "train.workers",
    "cpus_per_worker": "train.cpus_per_worker",
    "gpus_per_worker": "train.gpus_per_worker",
}
DEFAULT_STORAGE = "runs/sweeps"
TRIAL_MEMORY = 512 * 2**20  # bytes reserved by a trial's coordinating function
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    concurrency: int
    seed: int
    resources: dict[str, Any]
    scheduler: dict[str, Any] | None
    storage: Path
    source: str = ""

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
        solver = params.get("sampler.solver", self.sampler["solver"])
        steps = params.get("sampler.steps", self.sampler["steps"])
        return parse_method(solver if solver == "dopri5" else f"{solver}-{int(steps)}").name

    def trial_config(self, params: dict[str, Any]) -> tuple[Config, str]:
        """The full config a trial trains (evaluated at its sampler) and that sampler."""
        method = self.method_of(params)
        values = dict(self.overrides)
        values.update({RESOURCES[k]: v for k, v in self.resources.items()})
        values.update({k: v for k, v in params.items() if k not in SAMPLER_KEYS})
        values["eval.methods"] = [method]
        return load_config_values(self.base, values), method

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "overrides": dict(self.overrides),
            "space": {k: d.to_dict() for k, d in self.space.items()},
            "sampler": dict(self.sampler),
            "objective": list(self.objectives) if self.multi else self.metric,
            "trials": self.trials,
            "concurrency": self.concurrency,
            "seed": self.seed,
            "resources": dict(self.resources),
            "scheduler": dict(self.scheduler) if self.scheduler else None,
        }


def metric_of(cfg: Config) -> str:
    """The quality metric a config is scored with (see loomray.evaluate)."""
    return "energy" if cfg.data.name == "toy2d" else "fid"


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def spec_from_dict(raw: Any, source: str = "spec", storage: str | None = None) -> SweepSpec:
    """Validate a sweep spec; every problem is one sentence naming the key."""
    _need(isinstance(raw, dict), f"{source} must be a mapping of sweep fields")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    _need(
        not unknown,
        f"{source}: unknown field {unknown[0] if unknown else ''!r}; "
        f"a sweep spec has {', '.join(SPEC_KEYS)}",
    )
    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "sweep"
    name = raw.get("name", default_name)
    _need(
        isinstance(name, str) and bool(_NAME.match(name)),
        f"{source}: name must be letters, digits, '.', '_' or '-', got {name!r}",
    )
    base = raw.get("base")
    _need(isinstance(base, str) and bool(base), f"{source}: base must name a preset or YAML file")
    if not Path(base).is_absolute() and source.endswith((".yaml", ".yml")):
        beside = Path(source).parent / base  # a base YAML next to the spec
        base = str(beside) if beside.is_file() else base
    overrides = raw.get("overrides") or {}
    _need(isinstance(overrides, dict), f"{source}: overrides must be a mapping of config keys")
    overrides = _flatten(overrides)
    resources = raw.get("resources") or {}
    _need(isinstance(resources, dict), f"{source}: resources must be a mapping")
    bad = sorted(set(resources) - set(RESOURCES))
    _need(
        not bad, f"{source}: unknown resource {bad[0] if bad else ''!r}; use {', '.join(RESOURCES)}"
    )

    def config_with(values: dict[str, Any], where: str) -> Config:
        try:
            merged = {**overrides, **{RESOURCES[k]: v for k, v in resources.items()}, **values}
            return load_config_values(base, merged)
        except ConfigError as err:
            raise SweepError(f"{where}: {err}") from err

    cfg = config_with({}, f"{source} base {base}")
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

    space_raw = raw.get("space")
    _need(
        isinstance(space_raw, dict) and bool(space_raw),
        f"{source}: space must map at least one config key to a domain",
    )
    space = {}
    for key, body in space_raw.items():
        _need(isinstance(key, str), f"{source}: space keys must be strings, got {key!r}")
        domain = Domain.parse(key, body)
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
        space[key] = domain

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

    def count(key: str, default: int, low: int) -> int:
        v = raw.get(key, default)
        _need(_is_int(v) and v >= low, f"{source}: {key} must be an integer >= {low}, got {v!r}")
        return v

    trials, concurrency, seed = (
        count("trials", 8, 1),
        count("concurrency", 1, 1),
        count("seed", 0, 0),
    )

    scheduler = raw.get("scheduler")
    if scheduler in (None, "none", "fifo"):
        scheduler = None
    else:
        _need(
            isinstance(scheduler, dict) and scheduler.get("kind") == "asha",
            f"{source}: scheduler is none or {{kind: asha, grace_steps: N}}, got {scheduler!r}",
        )
        bad = sorted(set(scheduler) - {"kind", "grace_steps", "reduction_factor"})
        _need(not bad, f"{source}: unknown scheduler field {bad[0] if bad else ''!r}")
        scheduler = {
            "kind": "asha",
            "grace_steps": scheduler.get("grace_steps", cfg.eval.every),
            "reduction_factor": scheduler.get("reduction_factor", 2),
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

    store = storage if storage is not None else raw.get("storage", DEFAULT_STORAGE)
    _need(isinstance(store, str) and bool(store), f"{source}: storage must be a directory path")
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
    )


def shipped_specs() -> list[str]:
    """The sweep specs that ship with loomray (also in the repository's sweeps/)."""
    from importlib import resources

    folder = resources.files("loomray.sweeps")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_spec(path: str | Path, storage: str | None = None) -> SweepSpec:
    """A spec file, or the name of a shipped spec (``caches``, ``caches-digits``)."""
    from importlib import resources

    source = str(path)
    if Path(source).is_file():
        text = Path(source).read_text()
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
        raise SweepError(f"sweep spec {source} is not valid YAML: {err}") from err
    return spec_from_dict(raw, source, storage)


def training_key(cfg: Config) -> str:
    """Trials whose configs differ only in evaluation share one trained model."""
    d = cfg.to_dict()
    d.pop("eval")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---- one trial ----------------------------------------------------------------
@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (flock: released by the OS if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _make_report_callback(metric: str, method: str):
    from ray.tune.integration.ray_train import TuneReportCallback

    class SweepReport(TuneReportCallback):
        """Forwards the training reports that carry this trial's score, renamed, to Tune
        (ASHA reads them); reports without a score would fail Tune's metric check."""

        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            if f"{metric}/{method}" not in m:
                return
            out = {metric: m[f"{metric}/{method}"], "nfe": m[f"nfe/{method}"], "step": m["step"]}
            super().after_report(run_context, [out], None)

    return SweepReport()


def _evaluate_checkpoint(checkpoint: str, method: str, n: int, threads: int) -> dict[str, Any]:
    """Score one sampler of a trained checkpoint (runs as a Ray task with worker resources)."""
    import torch

    from loomray.checkpoint import ema_model_of, load_checkpoint
    from loomray.evaluate import evaluate_model, make_evaluator

    torch.set_num_threads(max(1, threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    payload = load_checkpoint(checkpoint)
    cfg, model = ema_model_of(payload)
    evaluator = make_evaluator(cfg, "train", None, device)
    row = evaluate_model(model, cfg, [method], n, evaluator, device)[0]
    return {
        "value": row.value,
        "nfe": row.nfe,
        "step": int(payload["step"]),
        "seconds": row.seconds,
    }


def _train_model(cfg: Config, method: str, model_dir: Path, metric: str) -> dict[str, Any]:
    from loomray.checkpoint import resolve_checkpoint
    from loomray.train.launch import launch
    from loomray.train.worker import CHECKPOINT_FILE

    result = launch(
        cfg,
        model_dir,
        resume=(model_dir / "config.yaml").is_file(),  # an interrupted trial's run goes on
        progress=False,
        quiet=True,
        callbacks=[_make_report_callback(metric, method)],
    )
    if result.checkpoint is not None:
        ckpt = result.checkpoint / CHECKPOINT_FILE
    else:
        ckpt = resolve_checkpoint(model_dir / "train")
    done = {"checkpoint": str(ckpt), "seconds": result.seconds, "step": result.step}
    if f"{metric}/{method}" in result.metrics:  # the final in-training evaluation
        done["eval"] = {
            "value": result.metrics[f"{metric}/{method}"],
            "nfe": result.metrics[f"nfe/{method}"],
            "step": result.step,
        }
    return done


def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """The Tune function trainable: train (or reuse) the model of these settings, score it."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg, method = spec.trial_config(params)
    key = training_key(cfg)
    model_dir = spec.dir / "models" / key
    started = time.time()
    with _locked(spec.dir / "models" / f"{key}.lock"):
        done = _read_json(model_dir / "done.json")
        if done is None:
            done = _train_model(cfg, method, model_dir, spec.metric)
            ev = done.pop("eval", None)
            if ev is not None:
                _write_json(model_dir / "evals" / f"{method}.json", ev)
            done["trial"] = trial_id
            _write_json(model_dir / "done.json", done)
    # a trial restarted by --resume after it had trained still counts as the trainer
    trained = done.get("trial") == trial_id
    ev = _read_json(model_dir / "evals" / f"{method}.json")
    if ev is None:
        t = cfg.train
        task = ray.remote(_evaluate_checkpoint).options(
            num_cpus=t.cpus_per_worker,
            num_gpus=t.gpus_per_worker,
            scheduling_strategy="DEFAULT",  # not inside the trial's (memory-only) bundle
        )
        ev = ray.get(task.remote(done["checkpoint"], method, cfg.eval.n, int(t.cpus_per_worker)))
        _write_json(model_dir / "evals" / f"{method}.json", ev)
    record = {
        spec.metric: float(ev["value"]),
        "nfe": float(ev["nfe"]),
        "step": int(ev["step"]),
        "method": method,
        "model": key,
        "trained": trained,
        "trial_seconds": time.time() - started,
    }
    _write_json(spec.dir / "trials" / f"{trial_id}.json", {**record, "params": params})
    tune.report(record)


# ---- the sweep ----------------------------------------------------------------
@dataclass
class SweepResult:
    dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    trained: int
    finished: int
    interrupted: bool
    files: dict[str, Path]
    seconds: float


def prepare_sweep_dir(spec: SweepSpec, resume: bool) -> bool:
    """Check the sweep dir before anything runs; True when it holds this sweep."""
    d = spec.dir
    spec_path = d / "spec.yaml"
    if spec_path.is_file():
        old, new = yaml.safe_load(spec_path.read_text()), spec.to_dict()
        if not resume:
            raise SweepError(
                f"{d} holds sweep {spec.name} already; pass --resume to continue it, "
                "or --storage DIR for a new one"
            )
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise SweepError(
                f"{d} holds sweep {spec.name} with another spec (changed: {', '.join(changed)}); "
                "resume it with its own spec, or pass --storage DIR for a new sweep"
            )
        return True
    if resume:
        raise SweepError(f"nothing to resume: {d} holds no sweep")
    if d.exists() and any(d.iterdir()):
        raise SweepError(f"{d} is not empty and holds no sweep; pass another --storage")
    return False


def _searcher(spec: SweepSpec):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(spec.dir / "optuna.journal")))
    return OptunaSearch(
        space={k: d.optuna() for k, d in spec.space.items()},
        metric=list(spec.objectives) if spec.multi else spec.metric,
        mode=["min"] * len(spec.objectives) if spec.multi else "min",
        study_name=spec.name,
        storage=storage,
        seed=spec.seed,
    )


def _scheduler(spec: SweepSpec, steps: int):
    if spec.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step",
        metric=spec.metric,
        mode="min",
        # Rungs strictly below the last step: stopping a trial that has finished
        # training would only lose its final score.
        max_t=max(1, steps - 1),
        grace_period=spec.scheduler["grace_steps"],
        reduction_factor=spec.scheduler["reduction_factor"],
        stop_last_trials=False,  # a trial that trained to the end still records its score
    )


def run_sweep(
    spec: SweepSpec,
    resume: bool = False,
    address: str | None = None,
    quiet: bool = True,
    verbose: int = 1,
    on_dashboard=None,
    dashboard_host: str = "127.0.0.1",
) -> SweepResult:
    """Run (or resume) a sweep and write its table, best config and plot."""
    from ray import tune

    from loomray.data import build_dataset
    from loomray.train.launch import check_resources, connect

    resumed = prepare_sweep_dir(spec, resume)
    cfg, _ = spec.trial_config({})  # every trial has the spec's resources
    build_dataset(cfg)  # missing data fails here, not in every trial
    url = connect(address, quiet=quiet, dashboard_host=dashboard_host)
    if url and on_dashboard is not None:
        on_dashboard(url)
    check_resources(cfg)
    spec.dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        (spec.dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    # The trial function only coordinates: training runs in Train workers and scoring
    # in a task, each with the trial's resources, so it reserves memory and no CPU.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), {"cpu": 0, "memory": TRIAL_MEMORY}
    )
    started = time.time()
    tune_dir = spec.dir / "tune"
    if resumed and tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(
            str(tune_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        searched = spec.space.get("train.steps")
        steps = max([cfg.train.steps, *(int(v) for v in (searched.edges() if searched else ()))])
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec),
                scheduler=_scheduler(spec, steps),
                num_samples=spec.trials,
                max_concurrent_trials=spec.concurrency,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(spec.dir),
                verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    grid = tuner.fit()
    return summarize(spec, grid, time.time() - started)


def _trial_rows(spec: SweepSpec, grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        m = result.metrics or {}
        params = dict(result.config or m.get("config") or {})
        if "trial_id" not in m or not params:
            continue  # suggested but never started (an interrupted sweep); resume runs it
        if "trained" in m:  # the trial's own last report
            status = "done"
        elif result.error:
            status = "error"
        else:  # ASHA stopped it on an intermediate score, or the sweep was interrupted
            status = "stopped" if m.get(spec.metric) is not None else "pending"
        row = {
            "trial": m["trial_id"],
            "status": status,
            **{k: params.get(k) for k in spec.space},
            "method": m.get("method") or spec.method_of(params),
            "nfe": m.get("nfe"),
            spec.metric: m.get(spec.metric),
            "step": m.get("step"),
            "model": m.get("model"),
            "trained": bool(m.get("trained", False)),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r[spec.metric] is None, r[spec.metric] or 0.0))
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any(
            (c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def plot_sweep(spec: SweepSpec, rows: list[dict[str, Any]], path: Path) -> Path:
    """FID against NFE, one line per cache count (best score per NFE), and the rows
    marked ``pareto`` (by ``summarize``) as the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r[spec.metric] is not None]
    groups: dict[Any, dict[float, float]] = {}
    for r in done:
        caches = r.get("coupling.caches", "base")
        best = groups.setdefault(caches, {})
        best[r["nfe"]] = min(best.get(r["nfe"], math.inf), r[spec.metric])
    fig, ax = plt.subplots(figsize=(6, 4))
    for caches in sorted(groups, key=str):
        pts = sorted(groups[caches].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"K={caches}")
    front = sorted((r["nfe"], r[spec.metric]) for r in done if r.get("pareto"))
    if front:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            "k--",
            where="post",
            label="Pareto front",
            alpha=0.7,
        )
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in done})
    if nfes:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(nfes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE")
    ax.set_ylabel(spec.metric.upper() if spec.metric == "fid" else "energy distance")
    ax.set_title(f"sweep {spec.name}: best per NFE, {len(done)} trials")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize(spec: SweepSpec, grid, seconds: float) -> SweepResult:
    """Write trials.parquet, best.yaml and the plot from a finished (or stopped) sweep."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _trial_rows(spec, grid)
    done = [r for r in rows if r["status"] == "done" and r[spec.metric] is not None]
    front = set(pareto_front([(r[spec.metric], r["nfe"]) for r in done])) if spec.multi else set()
    for r in rows:
        r["pareto"] = False
    for i in front:
        done[i]["pareto"] = True
    files: dict[str, Path] = {}
    if rows:
        files["trials"] = spec.dir / "trials.parquet"
        table = pa.Table.from_pylist([{k: _plain(v) for k, v in r.items()} for r in rows])
        pq.write_table(table, files["trials"])
    best = None
    if done:
        # the best FID (with several objectives, it is on the Pareto front anyway)
        best = min(done, key=lambda r: r[spec.metric])
        params = {k: best[k] for k in spec.space}
        cfg, method = spec.trial_config(params)
        files["best"] = spec.dir / "best.yaml"
        files["best"].write_text(
            f"# Best of sweep {spec.name}: {spec.metric} {best[spec.metric]:.4f} with {method} "
            f"({best['nfe']:g} NFE), trial {best['trial']}.\n"
            f"# Its trained model: {spec.dir / 'models' / best['model']}\n"
            f"#   loomray evaluate --ckpt {spec.dir / 'models' / best['model']}\n"
            f"# Train it anew: loomray train --config {files['best']}\n" + dump_config(cfg)
        )
        files["plot"] = plot_sweep(spec, rows, spec.dir / "fid-vs-nfe.png")
    trained = sum(1 for r in rows if r["trained"])
    interrupted = len(rows) < spec.trials or any(r["status"] == "error" for r in rows)
    return SweepResult(
        dir=spec.dir,
        rows=rows,
        best=best,
        trained=trained,
        finished=len(done),
        interrupted=interrupted,
        files=files,
        seconds=seconds,
    )


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


__all__ = [
    "Domain",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "load_spec",
    "pareto_front",
    "plot_sweep",
    "run_sweep",
    "spec_from_dict",
    "training_key",
]
