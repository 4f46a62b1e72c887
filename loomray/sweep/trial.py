"""One trial: the Tune function trainable that trains (or reuses) a model and scores it.

``run_trial`` stays a module-level function: Ray Tune pickles it by reference
(``tune.with_parameters(run_trial, spec=spec)``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from loomray.config import Config
from loomray.sweep.reuse import _locked, _read_json, _write_json, pruned_training, training_key
from loomray.sweep.spec import SweepSpec


def _make_report_callback(
    metric: str, reference: str, model: str, final_step: int, scale: float = 1.0
):
    """Forwards the training's reference-sampler score to Tune for ASHA (see
    ``loomray.sweep.search``): ``prune_<metric>`` at ``prune_step``, tagged with the
    training key, for every in-training evaluation before the last step. With
    same_images, ``prune_step`` counts steps of the reference batch (``scale``: this
    training's steps per reference step), so ASHA's rungs compare equal images."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class SweepReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            if f"{metric}/{reference}" not in m or m["step"] >= final_step:
                return
            step = round(m["step"] / scale)
            out = {f"prune_{metric}": m[f"{metric}/{reference}"], "prune_step": step}
            # "trained": this trial trains the model, whether ASHA stops it or not
            super().after_report(run_context, [{**out, "model": model, "trained": True}], None)

    return SweepReport()


def _evaluate_checkpoint(checkpoint: str, method: str, n: int, threads: int) -> dict[str, Any]:
    """Score one sampler of a trained checkpoint (runs as a Ray task with worker resources)."""
    import torch

    from loomray.checkpoint import ema_model_of, load_checkpoint
    from loomray.evaluation.evaluate import evaluate_model
    from loomray.evaluation.evaluator import make_evaluator

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


def _train_model(
    cfg: Config,
    method: str,
    model_dir: Path,
    metric: str,
    reference: str | None,
    holder: str,
    scale: float = 1.0,
) -> dict[str, Any]:
    from loomray.checkpoint import resolve_checkpoint
    from loomray.train.launch import launch
    from loomray.train.worker import CHECKPOINT_FILE

    callbacks = []
    if reference is not None:  # ASHA: evaluate the reference sampler while training too
        methods = tuple(dict.fromkeys((method, reference)))
        cfg = replace(cfg, eval=replace(cfg.eval, methods=methods))
        callbacks.append(
            _make_report_callback(metric, reference, model_dir.name, cfg.train.steps, scale)
        )
    result = launch(
        cfg,
        model_dir,
        resume=(model_dir / "config.yaml").is_file(),  # an interrupted trial's run goes on
        progress=False,
        quiet=True,
        callbacks=callbacks,
        holder=holder,
        require_evaluation=True,  # its score is the point: fail now, not after training
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


def _pruned(spec: SweepSpec, trial_id: str, key: str, method: str, pruned: dict) -> None:
    """End a trial whose training ASHA stopped: no score, reported as pruned."""
    from ray import tune

    record = {
        "final": False,
        "pruned": True,
        "method": method,
        "model": key,
        "step": pruned.get("step"),
        "trained": False,
    }
    _write_json(spec.dir / "trials" / f"{trial_id}.json", record)
    tune.report(record)


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
        pruned = pruned_training(model_dir) if done is None else None
        if pruned is not None:
            return _pruned(spec, trial_id, key, method, pruned)
        if done is None:
            reference = spec.scheduler["sampler"] if spec.scheduler else None
            holder = f"trial {trial_id} of sweep {spec.dir}"
            scale = spec.batch_scale(cfg.train.batch)
            done = _train_model(cfg, method, model_dir, spec.metric, reference, holder, scale)
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
        "final": True,
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
