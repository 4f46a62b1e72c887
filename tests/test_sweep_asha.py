"""ASHA prunes trainings, not samplers: a real two-objective digits sweep on a local Ray.

A grid of 2 trainings (K = 1, 8) x 2 samplers (euler-1, euler-4) under ASHA. Under
a rule that compared each trial's FID at its own sampler, an euler-1 trial would
lose at the first rung against any euler-4 or midpoint FID; here ASHA compares
trainings at one reference sampler (midpoint-2), trials that only evaluate never
enter the rungs, and Optuna is told final scores only.
"""

import json
import os
import subprocess
import sys

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

STEPS = 400
SPEC = {
    "name": "asha",
    "base": "digits",
    "overrides": {
        "model.hidden": 256,
        "train.batch": 64,
        "train.steps": STEPS,
        "train.lr": 3e-3,
        "train.warmup": 20,
        "train.ema": 0.9,
        "train.log_every": 50,
        "train.ckpt_every": 100,
        "eval.every": 100,
        "eval.n": 300,
    },
    "space": {"coupling.caches": {"choice": [1, 8]}, "sampler.steps": {"choice": [1, 4]}},
    "sampler": {"solver": "euler", "steps": 1},
    "search": "grid",
    "objective": ["fid", "nfe"],
    "concurrency": 2,
    "seed": 0,
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "scheduler": {
        "kind": "asha",
        "grace_steps": 100,
        "reduction_factor": 2,
        "sampler": "midpoint-2",
    },
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, other_loomray_cluster):
    """The sweep runs beside another loomray command's local Ray, as on a shared
    workstation: Ray Train's helpers must not lose their way to their own cluster."""
    tmp = tmp_path_factory.mktemp("asha")
    (tmp / "asha.yaml").write_text(yaml.safe_dump(SPEC))
    run = subprocess.run(
        [sys.executable, "-m", "loomray", "sweep", str(tmp / "asha.yaml"), "--storage", str(tmp)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sweep_dir = tmp / "asha"
    results = {}
    for path in (sweep_dir / "tune").glob("run_trial_*/result.json"):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        results[lines[-1]["trial_id"]] = lines
    return sweep_dir, pq.read_table(sweep_dir / "trials.parquet").to_pylist(), results


def test_the_grid_covers_every_point_once_and_trainings_share_a_fate(sweep):
    _, rows, _ = sweep
    assert sorted((r["coupling.caches"], r["method"]) for r in rows) == [
        (1, "euler-1"),
        (1, "euler-4"),
        (8, "euler-1"),
        (8, "euler-4"),
    ]
    fates = {}
    for r in rows:
        assert r["status"] in ("done", "pruned")
        fates.setdefault(r["model"], set()).add(r["status"])
    # a sampler is never pruned on its own: a training and all its samplers, or nothing
    assert all(len(f) == 1 for f in fates.values()), fates
    assert "done" in {r["status"] for r in rows}
    # every trial has its record, and each model the one trial that trained it, pruned
    # or not
    sweep_dir = sweep[0]
    assert all((sweep_dir / "trials" / f"{r['trial']}.json").is_file() for r in rows)
    for model in fates:
        assert sum(r["trained"] for r in rows if r["model"] == model) == 1, model


def test_asha_only_sees_the_reference_sampler_of_trainings(sweep):
    sweep_dir, rows, results = sweep
    first_rung = []  # what ASHA compared at its first rung
    for r in rows:
        lines = results[r["trial"]]
        intermediate = [x for x in lines if "prune_step" in x]
        if r["trained"] or (r["status"] == "pruned" and intermediate):
            steps = [x["prune_step"] for x in intermediate]
            assert steps == sorted(steps) and set(steps) <= {100, 200, 300}
            first_rung += [x["prune_fid"] for x in intermediate if x["prune_step"] == 100]
            # the value ASHA read is the training's midpoint-2 FID at that step
            ev = json.loads(
                (sweep_dir / "models" / r["model"] / "eval" / "eval-step0000100-train.json")
                .read_text()
            )
            scores = {row["method"]: row["value"] for row in ev}
            assert intermediate[0]["prune_fid"] == pytest.approx(scores["midpoint-2"])
        else:  # only evaluated (or found its model pruned): it never entered a rung
            assert not intermediate and (lines[-1]["final"] or lines[-1].get("pruned"))
    assert first_rung
    # the scenario matters: each finished euler-1 trial scored worse than the euler-4
    # trial of its own training, so a rule comparing own-sampler FIDs at a rung would
    # cut it for its sampler
    done = {(r["model"], r["method"]): r["fid"] for r in rows if r["status"] == "done"}
    models = {m for m, _ in done}
    assert models and all(done[m, "euler-1"] > done[m, "euler-4"] for m in models)


def test_optuna_learns_final_scores_only(sweep):
    sweep_dir, rows, _ = sweep
    study = optuna.load_study(
        study_name="asha",
        storage=JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal"))),
    )
    state = optuna.trial.TrialState
    complete = sorted(tuple(t.values) for t in study.trials if t.state == state.COMPLETE)
    done = [r for r in rows if r["status"] == "done"]
    assert complete == sorted((r["fid"], r["nfe"]) for r in done)
    assert all(r["step"] == STEPS for r in done)  # full budget, every one
    pruned = sum(t.state == state.PRUNED for t in study.trials)
    assert pruned == sum(r["status"] == "pruned" for r in rows)
    assert len(study.trials) == len(rows) == 4
