"""How a sweep searches and prunes: Optuna proposes, ASHA prunes *trainings*.

Pruning compares like with like. The sampler does not change training, so ASHA
never sees a trial's score at its own sampler: the trial that trains a model
reports, at every ``eval.every`` steps, the FID of its EMA model at one fixed
reference sampler (``scheduler.sampler``) as ``prune_fid`` at ``prune_step``.
Trials that only evaluate a trained model report nothing before their final
score, so they never enter ASHA's rungs. When ASHA stops a training, the
training key is marked pruned (``models/<key>/pruned.json``) and every other
trial of that key ends pruned too instead of training it again.

Optuna only learns final scores: a trial whose last result is not final (ASHA
stopped it, or its training was pruned) reaches the study as PRUNED, never as
COMPLETE with a partial-budget value. TPE on a small discrete space proposes
configurations it has tried: such a proposal is answered with the known score
(training and scoring are deterministic; FAIL, marked as a repeat, while that
configuration still runs) and Optuna is asked again, so every trial slot goes to
a new configuration.

This module imports Ray Tune; ``loomray.sweep.run`` imports it when a sweep runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from loomray.sweep.reuse import PRUNED_FILE, _write_json
from loomray.sweep.spec import SweepSpec


def prune_metric(metric: str) -> str:
    return f"prune_{metric}"


# Proposals asked for per trial before a repeated configuration is accepted.
ASKS = 50
logger = logging.getLogger(__name__)


class SweepSearch(OptunaSearch):
    """OptunaSearch that tells the study final scores only and spends no trial on a
    configuration already scored (see the module docstring)."""

    def suggest(self, trial_id: str):
        """A configuration no trial has had yet (after ASKS proposals, a repeat)."""
        scored, keys = self.__dict__.setdefault("scored", {}), self.__dict__.setdefault("keys", {})
        for attempt in range(ASKS):
            params = super().suggest(trial_id)
            if not isinstance(params, dict):
                return params
            key = json.dumps(params, sort_keys=True)
            if key not in keys.values() or attempt == ASKS - 1:
                break
            self._withdraw(trial_id, scored.get(key))
        keys[trial_id] = key
        return params

    def _withdraw(self, trial_id: str, score) -> None:
        """Close Optuna's proposal of a configuration another trial has or had. Training
        and scoring are deterministic, so a scored one is told its score again; one
        still running (or pruned, or failed) is closed as FAIL, marked as a repeat."""
        import optuna

        ot_trial = self._ot_trials.pop(trial_id)
        try:
            if score is not None:
                self._ot_study.tell(ot_trial, score)
            else:
                ot_trial.set_user_attr("loomray", "repeat of another trial's configuration")
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        except Exception as err:  # as OptunaSearch itself does (a grid that is done)
            logger.warning(err)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate results are ASHA's reference-sampler FID, not the objective.
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result is not None and not result.get("final"):
            result = None  # stopped before its final score: PRUNED (FAIL on error)
        if result is not None and not error and trial_id in self.__dict__.get("keys", {}):
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [result[m] for m in metrics]
            self.scored[self.keys[trial_id]] = values if len(values) > 1 else values[0]
        return super().on_trial_complete(trial_id, result=result, error=error)


class SweepASHA(ASHAScheduler):
    """ASHA on the reference-sampler FID that records the trainings it stops."""

    def __init__(self, models_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models_dir = models_dir

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("model"):
            _write_json(
                Path(self.models_dir) / result["model"] / PRUNED_FILE,
                {
                    "step": result.get(self._time_attr),
                    "value": result.get(self._metric),
                    "trial": trial.trial_id,
                },
            )
        return decision


def make_searcher(spec: SweepSpec) -> SweepSearch:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(spec.dir / "optuna.journal")))
    if spec.search == "grid":
        grid = {k: list(d.grid()) for k, d in spec.space.items()}
        sampler, seed = optuna.samplers.GridSampler(grid, seed=spec.seed), None
    else:
        sampler, seed = None, spec.seed
    return SweepSearch(
        space={k: d.optuna() for k, d in spec.space.items()},
        metric=list(spec.objectives) if spec.multi else spec.metric,
        mode=["min"] * len(spec.objectives) if spec.multi else "min",
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        seed=seed,
    )


def make_scheduler(spec: SweepSpec, steps: int) -> SweepASHA | None:
    if spec.scheduler is None:
        return None
    return SweepASHA(
        models_dir=str(spec.dir / "models"),
        time_attr="prune_step",
        metric=prune_metric(spec.metric),
        mode="min",
        # Rungs strictly below the last step: stopping a trial that has finished
        # training would only lose its final score.
        max_t=max(1, steps - 1),
        grace_period=spec.scheduler["grace_steps"],
        reduction_factor=spec.scheduler["reduction_factor"],
        stop_last_trials=False,
    )
