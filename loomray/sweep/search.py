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

No trial waits in a slot for another trial's training: a proposal whose model is
being trained by a running trial is put aside (it keeps its Optuna trial) and
Optuna is asked for another; once that training ends, the put-aside proposal is
the next trial started, and only scores the trained model. Proposals are put aside
only while the trials handed out and put aside stay within the sweep's ``trials``,
so every one of them becomes a trial.

This module imports Ray Tune; ``loomray.sweep.run`` imports it when a sweep runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from loomray.sweep.budget import concurrency_of
from loomray.sweep.reuse import PRUNED_FILE, _write_json
from loomray.sweep.spec import SweepSpec


def prune_metric(metric: str) -> str:
    return f"prune_{metric}"


# Proposals asked for per trial before a repeated configuration is accepted.
ASKS = 50
logger = logging.getLogger(__name__)
class _Capped:
    """A scheduler that starts no trial while ``concurrency`` run: every trial counts,
    those Tune requeues on --resume (unfinished or errored) included."""

    sweep_dir: str

    def choose_trial_to_run(self, tune_controller):
        running = sum(t.status == Trial.RUNNING for t in tune_controller.get_trials())
        if running >= concurrency_of(Path(self.sweep_dir)):
            return None
        return super().choose_trial_to_run(tune_controller)


@dataclass
class _PutAside:
    """A proposal waiting for the training of its model to end."""

    params: dict
    ot_trial: Any
    key: str  # the configuration, as JSON
    model: str  # its training key


class SweepSearch(OptunaSearch):
    """OptunaSearch that tells the study final scores only, spends no trial on a
    configuration already scored, and starts no trial that would wait for another's
    training (see the module docstring). ``plan(params) -> training key`` and
    ``trained(key) -> bool`` come from the sweep (``make_searcher``)."""

    def suggest(self, trial_id: str):
        """A configuration no trial has had yet (after ASKS proposals, a repeat) whose
        model no running trial trains; None while there is none (Tune asks again)."""
        state = self.__dict__
        keys = state.setdefault("keys", {})  # trial id -> configuration
        training = state.setdefault("training", {})  # training key -> trial training it
        aside = state.setdefault("aside", [])
        live = state.setdefault("live", set())
        if len(live) >= concurrency_of(self.sweep_dir):
            return None  # as many trials as may run: none is suggested ahead of time
        for waiting in aside:  # a put-aside proposal whose training has ended goes first
            if waiting.model not in training:
                aside.remove(waiting)
                self._ot_trials[trial_id] = waiting.ot_trial
                keys[trial_id] = waiting.key
                live.add(trial_id)
                if not self.trained(waiting.model):  # its trainer failed: this one trains
                    training[waiting.model] = trial_id
                return waiting.params
        for attempt in range(ASKS):
            if len(keys) + len(aside) >= self.limit:
                return None  # the rest of the sweep's trials are put aside already
            params = super().suggest(trial_id)
            if not isinstance(params, dict):
                return params
            key = json.dumps(params, sort_keys=True)
            taken = set(keys.values()) | {w.key for w in aside}
            if key in taken and attempt < ASKS - 1:
                self._withdraw(trial_id, state.setdefault("scored", {}).get(key))
                continue
            model = self.plan(params)
            if model in training and getattr(self, "put_aside", True):  # being trained now
                aside.append(_PutAside(params, self._ot_trials.pop(trial_id), key, model))
                continue
            if not self.trained(model):
                training[model] = trial_id
            keys[trial_id] = key
            live.add(trial_id)
            return params
        return None

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
        training = self.__dict__.setdefault("training", {})
        for model in [m for m, t in training.items() if t == trial_id]:
            del training[model]  # trained, pruned or failed: its put-aside ones may go
        self.__dict__.setdefault("live", set()).discard(trial_id)
        if result is not None and not result.get("final"):
            result = None  # stopped before its final score: PRUNED (FAIL on error)
        if result is not None and not error and trial_id in self.__dict__.get("keys", {}):
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [result[m] for m in metrics]
            scored = self.__dict__.setdefault("scored", {})
            scored[self.keys[trial_id]] = values if len(values) > 1 else values[0]
        return super().on_trial_complete(trial_id, result=result, error=error)


class SweepFIFO(_Capped, FIFOScheduler):
    """Trials in the order they come, ``concurrency`` at a time."""

    def __init__(self, sweep_dir: str) -> None:
        super().__init__()
        self.sweep_dir = sweep_dir


class SweepASHA(_Capped, ASHAScheduler):
    """ASHA on the reference-sampler FID that records the trainings it stops,
    ``concurrency`` trials at a time."""

    def __init__(self, models_dir: str, sweep_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models_dir = models_dir
        self.sweep_dir = sweep_dir

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("model"):
            models = Path(self.models_dir)
            step, value = result.get(self._time_attr), result.get(self._metric)
            _write_json(
                models / result["model"] / PRUNED_FILE,
                {"step": step, "value": value, "trial": trial.trial_id},
            )
            # the trial that trained it has its record too, as every other trial does
            _write_json(
                models.parent / "trials" / f"{trial.trial_id}.json",
                {
                    "final": False,
                    "pruned": True,
                    "model": result["model"],
                    "step": step,
                    "prune_value": value,
                    "trained": True,
                    "params": dict(getattr(trial, "config", None) or {}),
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
    searcher = SweepSearch(
        space={k: d.optuna() for k, d in spec.space.items()},
        metric=list(spec.objectives) if spec.multi else spec.metric,
        mode=["min"] * len(spec.objectives) if spec.multi else "min",
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        seed=seed,
    )
    searcher.plan = partial(_model_of, spec)
    searcher.trained = partial(_trained, spec.dir / "models")
    searcher.limit = spec.trials
    searcher.put_aside = spec.put_aside
    searcher.sweep_dir = spec.dir
    return searcher


def _model_of(spec: SweepSpec, params: dict) -> str:
    """The training key of a proposal (Optuna's flat keys)."""
    from loomray.sweep.reuse import training_key

    return training_key(spec.trial_config(params)[0])


def _trained(models: Path, key: str) -> bool:
    """Whether a model is trained, or its training was pruned: nothing to wait for."""
    return (models / key / "done.json").is_file() or (models / key / PRUNED_FILE).is_file()


def make_scheduler(spec: SweepSpec, steps: int) -> SweepASHA | SweepFIFO:
    if spec.scheduler is None:
        return SweepFIFO(str(spec.dir))
    return SweepASHA(
        models_dir=str(spec.dir / "models"),
        sweep_dir=str(spec.dir),
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
