"""Running a sweep: the sweep dir, the Optuna searcher, the ASHA scheduler and the Tuner."""

from __future__ import annotations

import os
import time

import yaml

from loomray.cluster.storage import StorageError, check_shared
from loomray.files.locks import holds_anything, lock_folder
from loomray.paths import PathError, folder_to_write
from loomray.sweep.spec import SweepError, SweepSpec
from loomray.sweep.summary import SweepResult, summarize
from loomray.sweep.trial import run_trial
from loomray.sweep.usage import Occupancy

TRIAL_MEMORY = 512 * 2**20  # bytes reserved by a trial's coordinating function


def prepare_sweep_dir(spec: SweepSpec, resume: bool) -> bool:
    """Check the sweep dir before anything runs; True when it holds this sweep."""
    try:
        folder_to_write(spec.storage, "sweep storage")
    except PathError as err:
        raise SweepError(str(err)) from err
    d = spec.dir
    spec_path = d / "spec.yaml"
    if spec_path.is_file():
        # the trials at once may follow the cluster: they change nothing that is computed
        old, new = yaml.safe_load(spec_path.read_text()), spec.to_dict()
        old.pop("concurrency", None)
        new.pop("concurrency", None)
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
    if holds_anything(d):
        raise SweepError(f"{d} is not empty and holds no sweep; pass another --storage")
    return False


def run_sweep(
    spec: SweepSpec,
    resume: bool = False,
    address: str | None = None,
    quiet: bool = True,
    verbose: int = 1,
    on_dashboard=None,
    dashboard_host: str = "127.0.0.1",
) -> SweepResult:
    """Run (or resume) a sweep and write its table, best config and plot. The sweep
    dir is locked meanwhile: a second sweep into it is refused, naming this one."""
    prepare_sweep_dir(spec, resume)  # nothing is made for a wrong one
    with lock_folder(spec.dir, "sweep dir", advice=SWEEP_BUSY, error=SweepError):
        return _run_sweep(spec, resume, address, quiet, verbose, on_dashboard, dashboard_host)


SWEEP_BUSY = "wait for it to finish, or pass --storage DIR for a new sweep"


def _run_sweep(spec, resume, address, quiet, verbose, on_dashboard, dashboard_host):

    from loomray.cluster.connect import connect
    from loomray.data import build_dataset
    from loomray.sweep.budget import resolve_concurrency, set_concurrency
    from loomray.train.resources import check_resources

    resumed = prepare_sweep_dir(spec, resume)
    # Intermediate results carry ASHA's reference-sampler score and final ones the
    # objective (loomray.sweep.search); Tune's check that every result carries every
    # metric would refuse that split. Set before connecting: with ray:// the Tuner runs
    # on the cluster, and connect() sends this setting along (driver_settings).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    cfg, _ = spec.trial_config({})  # every trial has the spec's resources
    build_dataset(cfg)  # missing data fails here, not in every trial
    url = connect(address, quiet=quiet, dashboard_host=dashboard_host)
    if on_dashboard is not None:
        on_dashboard(url)
    capacity = check_resources(cfg)
    concurrency = resolve_concurrency(spec, cfg, capacity)
    spec.dir.mkdir(parents=True, exist_ok=True)
    try:
        check_shared(spec.dir, "sweep storage")
    except StorageError as err:
        raise SweepError(str(err)) from None
    if not resumed:
        (spec.dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    set_concurrency(spec.dir, concurrency)  # read by the searcher and the scheduler
    started = time.time()
    tuner = _tuner(spec, cfg, resumed, verbose)
    resource = "GPU" if cfg.train.gpus_per_worker else "CPU"
    with Occupancy(resource, (capacity.most or capacity.now).get(resource, 0.0)) as busy:
        grid = tuner.fit()
    result = summarize(spec, grid, time.time() - started)
    result.busy = (resource, busy.most, busy.share)
    result.concurrency = concurrency
    return result


def trial_resources(cfg):
    """What Tune reserves for a trial: a bundle for its coordinating function (memory
    only) and one for its coupling service's CPUs (the service is made in the trial,
    and Tune places it there, so no trial starts that its service could not). Its
    training's workers are a placement group of Ray Train's, and its scoring a task
    with a worker's resources; loomray.sweep.budget checks that every running trial
    can hold them at once."""
    from ray import tune

    service = cfg.coupling.service_cpus
    bundles = [{"CPU": 0, "memory": TRIAL_MEMORY}, *([{"CPU": service}] if service else [])]
    return tune.PlacementGroupFactory(bundles)


def _tuner(spec: SweepSpec, cfg, resumed: bool, verbose: int):
    from ray import tune

    from loomray.sweep.search import make_scheduler, make_searcher

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), trial_resources(cfg)
    )
    tune_dir = spec.dir / "tune"
    if resumed and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(
            str(tune_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    searched = spec.space.get("train.steps")
    steps = max([cfg.train.steps, *(int(v) for v in (searched.edges() if searched else ()))])
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec, steps),
            num_samples=spec.trials,  # concurrency: the searcher and scheduler read it
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(spec.dir),
            verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
