"""How many trials a cluster can run at once without any of them waiting forever.

Each running trial may hold, at the same time: its coupling service's CPUs (for
the whole trial: Tune reserves them as the trial's own bundle, so that a trial
only starts when its service can), and its training's workers (a placement group
of Ray Train's), or, once trained, one worker's worth for scoring. A sweep whose
trials cannot all hold that at once would deadlock: every running trial has its
service, and no training's workers can be placed. So ``concurrency`` is checked
up front against what the cluster can ever hold (``loomray.cluster.capacity``: its
autoscaler's maximum where it has one), and ``concurrency: auto`` takes as many
as fit.
"""

from __future__ import annotations

from pathlib import Path

from loomray.cluster.capacity import Capacity
from loomray.config import Config
from loomray.sweep.spec import SweepError, SweepSpec

AUTO = 0  # spec.concurrency of ``concurrency: auto``


def trial_need(cfg: Config) -> dict[str, float]:
    """What one trial holds at most, in all: its service and its training's workers."""
    from loomray.train.resources import training_need

    return training_need(cfg)


def trials_that_fit(cfg: Config, capacity: Capacity) -> int | None:
    """How many trials the cluster can hold at once, node by node (None: an autoscaler
    may add nodes up to a limit that cannot be read)."""
    from loomray.cluster.capacity import trainings_that_fit
    from loomray.train.resources import training_bundles

    return trainings_that_fit(capacity, *training_bundles(cfg))


def _describe(cfg: Config, n: int) -> str:
    t, need = cfg.train, trial_need(cfg)
    gpu = f" + {t.gpus_per_worker:g} GPU" if t.gpus_per_worker else ""
    total = " and ".join(f"{n * v:g} {k}s" for k, v in sorted(need.items(), reverse=True))
    return (
        f"{n} trial{'s' if n != 1 else ''} at once, each {t.workers} workers x "
        f"({t.cpus_per_worker:g} CPU{gpu}) + {cfg.coupling.service_cpus:g} CPU for its "
        f"coupling service: {total}"
    )


def resolve_concurrency(spec: SweepSpec, cfg: Config, capacity: Capacity) -> int:
    """The trials to run at once: the spec's (or ``auto``: as many as fit), refused in
    one sentence with the numbers when the cluster can never hold them."""
    fit = trials_that_fit(cfg, capacity)
    if spec.concurrency == AUTO:
        if fit is None:
            raise SweepError(
                "concurrency: auto needs to know how large the cluster can grow, and its "
                "autoscaler's limits cannot be read here; give concurrency a number"
            )
        if fit < 1:
            resource = max(trial_need(cfg), key=lambda k: trial_need(cfg)[k])
            raise SweepError(
                f"sweep {spec.name} cannot run even one trial: {_describe(cfg, 1)}, but "
                f"{capacity.describe(resource)}"
            )
        return min(fit, spec.trials)
    if fit is not None and spec.concurrency > fit:
        most = capacity.most or {}
        short = [k for k, v in trial_need(cfg).items() if spec.concurrency * v > most.get(k, 0)]
        short.sort(key=lambda k: k != "GPU")  # the scarce one first
        where = (
            capacity.describe(short[0])
            if short
            else "they do not fit on the cluster's nodes (a worker must fit on one node)"
        )
        raise SweepError(
            f"sweep {spec.name} asks for {_describe(cfg, spec.concurrency)}, but {where}; "
            f"lower concurrency to {max(fit, 1)}, or concurrency: auto"
        )
    return spec.concurrency


CONCURRENCY_FILE = "concurrency"


def set_concurrency(sweep_dir: Path, n: int) -> None:
    """The trials a sweep runs at once, for this run of it: written to its dir, where
    the searcher and the scheduler read it (not Tune's ConcurrencyLimiter, whose
    restored state would keep the first run's number on --resume)."""
    (Path(sweep_dir) / CONCURRENCY_FILE).write_text(f"{int(n)}\n")


def concurrency_of(sweep_dir: Path) -> int:
    try:
        return max(1, int((Path(sweep_dir) / CONCURRENCY_FILE).read_text()))
    except (OSError, ValueError):
        return 1
