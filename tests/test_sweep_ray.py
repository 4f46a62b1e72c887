"""A real sweep on a local Ray: Tune + OptunaSearch + TorchTrainer trials on digits.

It is interrupted with SIGINT (Ctrl-C) once a trial has finished and resumed with
``--resume``; the resumed sweep must continue the same Optuna study, keep the
finished trial's result, train each training config once and only evaluate for
trials that differ in sampler alone.
"""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from loomray.config import load_config

TRIALS = 6
SPEC = {
    "name": "small",
    "base": "digits",
    "overrides": {
        "model.hidden": 128,
        "train.batch": 64,
        "train.steps": 300,
        "train.ema": 0.9,
        "train.log_every": 50,
        "train.ckpt_every": 100,
        "eval.every": 100,
        "eval.n": 300,
    },
    "space": {
        "coupling.caches": {"choice": [1, 4]},
        "sampler.solver": {"choice": ["euler", "midpoint"]},
        "sampler.steps": {"int": [1, 2]},
    },
    "objective": ["fid", "nfe"],
    "trials": TRIALS,
    "concurrency": 2,
    "seed": 3,
    "resources": {"workers": 1, "cpus_per_worker": 1},
}


def _sweep(spec_path, storage, *extra):
    return [
        sys.executable,
        "-m",
        "loomray",
        "sweep",
        str(spec_path),
        "--storage",
        str(storage),
        *extra,
    ]


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    spec_path = tmp / "small.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    storage = tmp / "out"
    sweep_dir = storage / "small"
    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.Popen(
        _sweep(spec_path, storage),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:
        if list((sweep_dir / "trials").glob("*.json")):
            break
        time.sleep(1)
    finished_before = {
        p.stem: json.loads(p.read_text()) for p in (sweep_dir / "trials").glob("*.json")
    }
    first.send_signal(signal.SIGINT)  # what Ctrl-C does
    out1, _ = first.communicate(timeout=180)
    second = subprocess.run(
        _sweep(spec_path, storage, "--resume"),
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    return sweep_dir, first.returncode, out1, finished_before, second


def test_interrupt_says_how_to_resume(interrupted_and_resumed):
    _, code, out, finished_before, _ = interrupted_and_resumed
    assert finished_before, out[-3000:]
    assert code == 1, out[-3000:]
    assert "--resume" in out


def test_resumed_sweep_finishes_every_trial_once(interrupted_and_resumed):
    sweep_dir, _, _, finished_before, second = interrupted_and_resumed
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {"done"}
    by_trial = {r["trial"]: r for r in rows}
    # what finished before the interruption is kept, not rerun
    for trial, record in finished_before.items():
        assert by_trial[trial]["fid"] == pytest.approx(record["fid"])
        assert by_trial[trial]["model"] == record["model"]
    # every trial tried a new configuration
    assert len({tuple(r[k] for k in SPEC["space"]) for r in rows}) == TRIALS
    # the same Optuna study went on: all complete, each with its trial's values (a
    # repeat TPE proposed was told its known values and not run)
    study = optuna.load_study(
        study_name="small",
        storage=JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal"))),
    )
    state = optuna.trial.TrialState
    complete = [t for t in study.trials if t.state == state.COMPLETE]
    assert len(complete) >= TRIALS
    # a proposal that repeated a running trial was closed as a marked FAIL, nothing else
    for t in study.trials:
        assert t.state == state.COMPLETE or (
            t.state == state.FAIL and "repeat" in t.user_attrs.get("loomray", "")
        )
    by_config = {
        (r["coupling.caches"], r["method"]): (r["fid"], r["nfe"]) for r in rows
    }
    for t in complete:
        p = t.params
        method = f"{p['sampler.solver']}-{p['sampler.steps']}"
        assert tuple(t.values) == pytest.approx(by_config[p["coupling.caches"], method])


def test_sampler_only_trials_reuse_the_trained_model(interrupted_and_resumed):
    sweep_dir, _, _, _, second = interrupted_and_resumed
    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    models = {r["model"] for r in rows}
    trained = [r for r in rows if r["trained"]]
    # one training per training config, however many trials and interruptions
    assert len(models) <= 2 and len(trained) == len(models)
    assert {r["model"] for r in trained} == models
    assert len(rows) > len(trained)  # the other trials only evaluated
    for key in models:
        done = json.loads((sweep_dir / "models" / key / "done.json").read_text())
        assert done["step"] == 300
    # a model's score at a sampler does not depend on which trial asked for it
    seen = {}
    for r in rows:
        seen.setdefault((r["model"], r["method"]), set()).add(round(r["fid"], 6))
    assert all(len(v) == 1 for v in seen.values())
    # NFE is what the sampler spent
    for r in rows:
        solver, steps = r["method"].split("-")
        assert r["nfe"] == int(steps) * (2 if solver == "midpoint" else 1)
    text = " ".join(second.stdout.split())
    assert f"{len(trained)} model{'s' if len(trained) > 1 else ''} trained for them" in text


def test_without_asha_trials_report_their_final_score_only(interrupted_and_resumed):
    sweep_dir, *_ = interrupted_and_resumed
    for result in (sweep_dir / "tune").glob("run_trial_*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        # in-training scores go to Tune only for ASHA (test_sweep_asha.py)
        assert [x["final"] for x in lines] == [True] and lines[0]["step"] == 300
    # the training still evaluated at eval.every, into each model's eval/ folder
    for model in (sweep_dir / "models").iterdir():
        if model.is_dir():
            assert (model / "eval" / "eval-step0000100-train.json").is_file()


def test_outputs_best_config_and_plot(interrupted_and_resumed):
    sweep_dir, *_ = interrupted_and_resumed
    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    best = min(rows, key=lambda r: r["fid"])
    cfg = load_config(str(sweep_dir / "best.yaml"))
    assert cfg.coupling.caches == best["coupling.caches"]
    assert cfg.eval.methods == (best["method"],) and cfg.train.steps == 300
    assert cfg.name == f"{sweep_dir.name}-best"  # trained anew into runs/<sweep>-best
    assert (sweep_dir / "fid-vs-nfe.png").stat().st_size > 10_000
    assert sum(bool(r["pareto"]) for r in rows) >= 1
