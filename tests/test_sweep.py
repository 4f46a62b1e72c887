"""Sweep specs, training keys, the Pareto front and the plot; bad specs fail cleanly.

The real sweep on Ray (train, reuse, interrupt, resume) is in test_sweep_ray.py.
"""

import json

import pytest
import yaml
from typer.testing import CliRunner

from loomray.cli import app
from loomray.config import load_config
from loomray.sweep import (
    SweepError,
    load_spec,
    pareto_front,
    plot_sweep,
    prepare_sweep_dir,
    shipped_specs,
    spec_from_dict,
    training_key,
)

SPEC = {
    "name": "t",
    "base": "digits",
    "overrides": {"train.steps": 300, "eval.n": 200},
    "space": {
        "coupling.caches": {"choice": [1, 4]},
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "sampler.solver": {"choice": ["euler", "midpoint"]},
        "sampler.steps": {"int": [1, 4]},
    },
    "trials": 3,
    "resources": {"workers": 1},
}


def test_shipped_specs_load_and_map_to_trial_configs():
    assert {"caches", "caches-digits"} <= set(shipped_specs())
    for name in ("caches", "sweeps/caches-digits.yaml"):
        spec = load_spec(name)
        assert set(spec.space) >= {"coupling.caches", "train.batch", "sampler.steps"}
        cfg, method = spec.trial_config(
            {
                "coupling.caches": 8,
                "train.batch": 128,
                "sampler.solver": "midpoint",
                "sampler.steps": 2,
            }
        )
        assert cfg.coupling.caches == 8 and cfg.train.batch == 128
        assert method == "midpoint-2" and cfg.eval.methods == ("midpoint-2",)
        assert spec.objectives == ("fid", "nfe") and spec.scheduler["kind"] == "asha"
    cifar = load_spec("caches")
    cfg, _ = cifar.trial_config({})
    assert cfg.data.name == "cifar10" and cfg.train.workers == 4 and cfg.train.gpus_per_worker == 1


def test_trial_config_applies_overrides_resources_and_params():
    spec = spec_from_dict(SPEC, "t.yaml", storage="/tmp/x")
    cfg, method = spec.trial_config(
        {"coupling.caches": 4, "train.lr": 3e-3, "sampler.solver": "euler", "sampler.steps": 3}
    )
    assert (cfg.train.steps, cfg.eval.n, cfg.train.workers) == (300, 200, 1)
    assert cfg.coupling.caches == 4 and cfg.train.lr == pytest.approx(3e-3)
    assert method == "euler-3"
    # unsearched sampler keys come from the base config's first eval method
    assert spec.method_of({}) == load_config("digits").eval.methods[0]
    assert spec.method_of({"sampler.solver": "dopri5", "sampler.steps": 3}) == "dopri5"
    assert str(spec.dir) == "/tmp/x/t"


def test_grid_search_and_the_pruning_sampler():
    raw = {
        **SPEC,
        "space": {"coupling.caches": {"choice": [1, 4]}, "sampler.steps": {"int": [1, 3]}},
        "overrides": {"train.steps": 300, "eval.every": 100},
        "scheduler": {"kind": "asha"},
        "search": "grid",
    }
    raw.pop("trials")
    spec = spec_from_dict(raw, "t.yaml")
    assert spec.search == "grid" and spec.trials == 6  # every point once by default
    # ASHA compares every training at one sampler: by default the spec's sampler
    assert spec.scheduler["sampler"] == spec.method_of({}) == "euler-1"
    assert spec.to_dict()["search"] == "grid" and "search" not in spec_from_dict(SPEC).to_dict()
    raw["scheduler"] = {"kind": "asha", "sampler": "midpoint-2"}
    assert spec_from_dict(raw, "t.yaml").scheduler["sampler"] == "midpoint-2"


def test_pruned_trainings_and_partial_results_never_reach_optuna_as_complete(tmp_path):
    import optuna

    from loomray.sweep.budget import set_concurrency
    from loomray.sweep.reuse import pruned_training
    from loomray.sweep.search import make_scheduler, make_searcher

    raw = {
        **SPEC,
        "space": {"coupling.caches": {"choice": [1, 2, 4]}},
        "overrides": {"train.steps": 300, "eval.every": 100},
        "scheduler": {"kind": "asha", "grace_steps": 100, "reduction_factor": 2},
        "objective": ["fid", "nfe"],
    }
    spec = spec_from_dict(raw, "t.yaml", storage=str(tmp_path))
    spec.dir.mkdir(parents=True)
    set_concurrency(spec.dir, 3)
    searcher, scheduler = make_searcher(spec), make_scheduler(spec, 300)

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    trials = [Trial(f"t{i}") for i in range(3)]
    proposed = set()
    for t in trials:
        proposed.add(searcher.suggest(t.trial_id)["coupling.caches"])
        scheduler.on_trial_add(None, t)
    assert proposed == {1, 2, 4}  # three running trials, three configurations
    keep = scheduler.on_trial_result(
        None, trials[0], {"prune_fid": 50.0, "prune_step": 100, "model": "m0"}
    )
    cut = scheduler.on_trial_result(
        None, trials[1], {"prune_fid": 80.0, "prune_step": 100, "model": "m1"}
    )
    # a trial that only evaluated: its final score never enters a rung
    final = {"final": True, "fid": 95.0, "nfe": 1.0, "step": 300, "model": "m0"}
    assert scheduler.on_trial_result(None, trials[2], final) == "CONTINUE"
    assert (keep, cut) == ("CONTINUE", "STOP")
    assert pruned_training(spec.dir / "models" / "m1")["step"] == 100
    assert pruned_training(spec.dir / "models" / "m0") is None
    # the trial that trained the stopped model has its record, as its trainer
    record = json.loads((spec.dir / "trials" / "t1.json").read_text())
    assert record["pruned"] and record["trained"] and record["model"] == "m1"
    searcher.on_trial_complete("t1", {"prune_fid": 80.0, "prune_step": 100, "model": "m1"})
    searcher.on_trial_complete("t0", {"final": False, "pruned": True, "model": "m0"})
    searcher.on_trial_complete("t2", final)
    # (proposals that repeated a running trial were closed as marked FAILs)
    told = [t for t in searcher._ot_study.trials if "loomray" not in t.user_attrs]
    state = optuna.trial.TrialState
    assert [t.state for t in told] == [state.PRUNED, state.PRUNED, state.COMPLETE]
    assert told[2].values == [95.0, 1.0]
    repeats = [t for t in searcher._ot_study.trials if "loomray" in t.user_attrs]
    assert all(t.state == state.FAIL for t in repeats)


def test_tpe_spends_no_trial_on_a_configuration_already_scored(tmp_path):
    import optuna

    from loomray.sweep.search import make_searcher

    raw = {**SPEC, "space": {"coupling.caches": {"choice": [1, 2, 4]}}, "trials": 3, "seed": 1}
    spec = spec_from_dict(raw, "t.yaml", storage=str(tmp_path))
    spec.dir.mkdir(parents=True)
    searcher = make_searcher(spec)
    seen = []
    for i in range(3):
        params = searcher.suggest(f"t{i}")
        seen.append(params["coupling.caches"])
        searcher.on_trial_complete(f"t{i}", {"final": True, "fid": 10.0 + i})
    assert sorted(seen) == [1, 2, 4]  # three trials, three configurations
    study = searcher._ot_study
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(study.trials) >= 3
    # a repeat proposed on the way was told its known score, not run again
    for t in study.trials:
        assert t.value == 10.0 + seen.index(t.params["coupling.caches"])


def test_searched_keys_may_act_in_some_combinations_only():
    raw = {
        **SPEC,
        "space": {
            "coupling.kind": {"choice": ["loom", "minibatch-ot"]},
            "coupling.caches": {"choice": [1, 4]},
        },
        "trials": 4,
    }
    spec = spec_from_dict(raw, "t.yaml")
    cfg, _ = spec.trial_config({"coupling.kind": "minibatch-ot", "coupling.caches": 4})
    assert cfg.coupling.kind == "minibatch-ot"
    # a fixed override that never acts is still refused
    with pytest.raises(SweepError, match="coupling.caches has no effect"):
        spec_from_dict(
            {**SPEC, "overrides": {"coupling.kind": "independent", "coupling.caches": 2}}
        )


def test_training_key_ignores_the_sampler_only():
    spec = spec_from_dict(SPEC, "t.yaml")
    base = {"coupling.caches": 1, "train.lr": 1e-3}
    a, _ = spec.trial_config({**base, "sampler.solver": "euler", "sampler.steps": 1})
    b, _ = spec.trial_config({**base, "sampler.solver": "midpoint", "sampler.steps": 4})
    c, _ = spec.trial_config({**base, "coupling.caches": 4})
    d, _ = spec.trial_config({**base, "train.lr": 2e-3})
    assert training_key(a) == training_key(b)
    assert len({training_key(a), training_key(c), training_key(d)}) == 3


def test_pareto_front():
    pts = [(10.0, 1), (8.0, 2), (9.0, 2), (8.0, 4), (5.0, 8), (5.0, 8), (12.0, 1)]
    front = pareto_front(pts)
    assert [pts[i] for i in front] == [(5.0, 8), (5.0, 8), (8.0, 2), (10.0, 1)]
    assert pareto_front([]) == []


def test_plot_sweep_draws_one_line_per_cache_count(tmp_path):
    spec = spec_from_dict({**SPEC, "objective": ["fid", "nfe"]}, "t.yaml")
    rows = [
        {"status": "done", "coupling.caches": k, "nfe": n, "fid": 100.0 / n + k}
        for k in (1, 4)
        for n in (1, 2, 4)
    ] + [{"status": "stopped", "coupling.caches": 8, "nfe": 1, "fid": 3.0}]
    path = plot_sweep(spec, rows, tmp_path / "p.png")
    assert path.is_file() and path.stat().st_size > 10_000


def _bad(**changes):
    spec = {**SPEC, **changes}
    return {k: v for k, v in spec.items() if v is not None}


BAD_SPECS = [
    (_bad(colour="red"), "unknown field 'colour'"),
    (_bad(space={"coupling.cashes": {"choice": [1, 2]}}), "unknown config key coupling.cashes"),
    (_bad(space={"nope": {"choice": [1, 2]}}), "unknown config key nope"),
    (_bad(space={"coupling.caches": {"choice": []}}), "choice must be a non-empty list"),
    (_bad(space={"coupling.caches": {"int": [8, 1]}}), "low 8 must be below high 1"),
    (_bad(space={"coupling.caches": {"int": [1.5, 4]}}), "int bounds must be integers"),
    (_bad(space={"train.lr": {"loguniform": [0, 1e-2]}}), "log scale needs low > 0"),
    (_bad(space={"train.lr": {"uniform": [0, 1]}}), "unknown field 'uniform'"),
    (_bad(space={"coupling.caches": {"choice": [0, 2]}}), "coupling.caches must be at least 1"),
    (_bad(space={"coupling.caches": 4}), "must be a mapping like"),
    (_bad(space={}), "space must map at least one config key"),
    (_bad(space={"eval.n": {"choice": [10, 20]}}), "evaluation settings are fixed"),
    (_bad(space={"sampler.solver": {"choice": ["rk45"]}}), "unknown solver 'rk45'"),
    (_bad(space={"sampler.order": {"choice": [1]}}), "the sampler keys are"),
    (_bad(space={"train.workers": {"choice": [1, 2]}}), "resources are fixed per sweep"),
    (_bad(base=None), "base must name a preset or YAML file"),
    (_bad(base="cifar11"), "unknown preset 'cifar11'"),
    (_bad(overrides={"train.stepz": 3}), "unknown config key train.stepz"),
    (_bad(objective="energy"), "objective must start with 'fid'"),
    (_bad(objective=["fid", "seconds"]), "objective is 'fid' or [fid, nfe]"),
    (_bad(trials=0), "trials must be an integer >= 1"),
    (_bad(concurrency="two"), "concurrency must be an integer >= 1 or auto"),
    (_bad(same_images=True), "same_images scales the steps by the batch; search train.batch"),
    (_bad(same_images="yes"), "same_images must be true or false"),
    (_bad(resources={"gpus": 1}), "unknown resource 'gpus'"),
    (_bad(scheduler={"kind": "asha"}), "set overrides eval.every > 0"),
    (_bad(scheduler={"kind": "pbt"}), "scheduler is none or"),
    (
        _bad(
            overrides={"train.steps": 300, "eval.every": 100},
            scheduler={"kind": "asha", "grace_steps": 300},
        ),
        "grace_steps must be in 1..299",
    ),
    (_bad(sampler={"solver": "euler", "steps": 0}), "sampler.steps must be an integer >= 1"),
    (_bad(name="a b"), "name must be letters"),
    (
        _bad(
            overrides={"train.steps": 300, "eval.every": 100},
            scheduler={"kind": "asha", "sampler": "euler-0"},
        ),
        "scheduler sampler:",
    ),
    (_bad(search="random"), "search is tpe or grid"),
    (
        _bad(
            trials=5,
            space={"coupling.caches": {"choice": [1, 4]}, "sampler.steps": {"int": [1, 2]}},
        ),
        "the space has 4 configurations; trials must be at most 4",
    ),
    (_bad(search="grid"), "search grid needs choice or int domains, not float"),
    (
        _bad(search="grid", trials=9, space={"coupling.caches": {"choice": [1, 4]}}),
        "the space has 2 configurations; trials must be at most 2",
    ),
]


@pytest.mark.parametrize("raw,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_specs_fail_with_one_sentence_and_write_nothing(tmp_path, raw, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(path), "--storage", str(storage)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error:" in text and message in text
    assert "Traceback" not in result.output
    assert not storage.exists()


def test_bad_files_and_names(tmp_path):
    runner = CliRunner()
    for target, message in (
        (tmp_path / "missing.yaml", "does not exist; shipped specs are"),
        ("no-such-sweep", "does not exist; shipped specs are"),
    ):
        out = runner.invoke(app, ["sweep", str(target), "--storage", str(tmp_path / "o")])
        assert out.exit_code == 2 and message in " ".join(out.output.split())
    broken = tmp_path / "broken.yaml"
    broken.write_text("space: [unclosed")
    out = runner.invoke(app, ["sweep", str(broken), "--storage", str(tmp_path / "o")])
    assert out.exit_code == 2 and "is not valid YAML" in out.output
    assert not (tmp_path / "o").exists()


def test_sweep_dir_rules(tmp_path):
    spec = spec_from_dict(SPEC, "t.yaml", storage=str(tmp_path))
    with pytest.raises(SweepError, match="nothing to resume"):
        prepare_sweep_dir(spec, resume=True)
    assert prepare_sweep_dir(spec, resume=False) is False
    spec.dir.mkdir()
    (spec.dir / "stray.txt").write_text("x")
    with pytest.raises(SweepError, match="not empty and holds no sweep"):
        prepare_sweep_dir(spec, resume=False)
    (spec.dir / "stray.txt").unlink()
    (spec.dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    with pytest.raises(SweepError, match="pass --resume to continue it"):
        prepare_sweep_dir(spec, resume=False)
    assert prepare_sweep_dir(spec, resume=True) is True
    changed = spec_from_dict({**SPEC, "trials": 9}, "t.yaml", storage=str(tmp_path))
    with pytest.raises(SweepError, match=r"another spec \(changed: trials\)"):
        prepare_sweep_dir(changed, resume=True)
    # the CLI says the same in one sentence, exit 2, and leaves the sweep as it was
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "trials": 9}))
    before = (spec.dir / "spec.yaml").read_text()
    out = CliRunner().invoke(app, ["sweep", str(path), "--storage", str(tmp_path), "--resume"])
    assert out.exit_code == 2 and "another spec" in out.output
    assert (spec.dir / "spec.yaml").read_text() == before
    assert sorted(p.name for p in spec.dir.iterdir()) == ["spec.yaml"]


def test_toy2d_sweeps_energy_distance():
    spec = spec_from_dict(
        {"base": "toy2d", "space": {"coupling.caches": {"choice": [1, 2]}}}, "toy.yaml"
    )
    assert spec.objectives == ("energy",) and spec.metric == "energy"
    with pytest.raises(SweepError, match="objective must start with 'energy'"):
        spec_from_dict({"base": "toy2d", "space": SPEC["space"], "objective": "fid"}, "toy.yaml")


def test_same_images_scales_steps_and_asha_compares_equal_images():
    raw = {
        **SPEC,
        "space": {"train.batch": {"choice": [32, 64, 128]}},
        "overrides": {**SPEC.get("overrides", {}), "train.batch": 64, "train.steps": 300,
                      "train.ckpt_every": 100, "eval.every": 150},
        "same_images": True,
    }
    spec = spec_from_dict(raw, "spec")
    for batch, steps in ((32, 600), (64, 300), (128, 150)):
        cfg, _ = spec.trial_config({"train.batch": batch})
        assert cfg.train.steps == steps and cfg.train.steps * batch == 300 * 64
        assert cfg.train.ckpt_every * batch == 100 * 64 and cfg.eval.every * batch == 150 * 64
        base = spec_from_dict({**raw, "same_images": False}, "spec").trial_config({})[0]
        # the EMA's horizon, 1 / (1 - decay) steps, covers as many images
        horizon = batch / (1 - cfg.train.ema)
        assert horizon == pytest.approx(64 / (1 - base.train.ema))
        assert cfg.train.warmup * batch == pytest.approx(base.train.warmup * 64, abs=batch)
    assert spec.to_dict()["same_images"] is True


def test_resume_may_change_concurrency_only(tmp_path):
    from loomray.sweep import prepare_sweep_dir

    spec = spec_from_dict({**SPEC, "concurrency": 2}, "spec", storage=str(tmp_path))
    spec.dir.mkdir(parents=True)
    (spec.dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    wider = spec_from_dict({**SPEC, "concurrency": "auto"}, "spec", storage=str(tmp_path))
    assert prepare_sweep_dir(wider, resume=True)
    other = spec_from_dict({**SPEC, "concurrency": 2, "seed": 5}, "spec", storage=str(tmp_path))
    with pytest.raises(SweepError, match="changed: seed"):
        prepare_sweep_dir(other, resume=True)


def test_the_plan_of_caches_counts_models_steps_and_hours():
    """8 training configurations (4 cache counts x 2 batches); equal images: batch 256
    trains 50k steps; at 11.4 steps/s per H100 rank and 4 GPUs a model."""
    from loomray.sweep import load_spec
    from loomray.sweep.plan import plan_sweep

    plan = plan_sweep(load_spec("caches"), gpu="H100")
    assert len(plan.models) == 8 and plan.configurations == 8 and plan.trials == 48
    assert sorted({m.steps for m in plan.models}) == [50_000, 100_000]
    assert plan.gpu_hours == pytest.approx((4 * 100_000 + 4 * 50_000) / 11.4 / 3600 * 4)
    assert plan.slots == 4 and plan.gpus == 16
    # 4 lanes, each a 100k-step and a 50k-step model
    assert plan.wall_hours == pytest.approx(150_000 / 11.4 / 3600)
    assert plan_sweep(load_spec("caches"), gpus=8, gpu="H100").slots == 2
    with pytest.raises(SweepError, match="no step rate measured for cifar10 on A10G"):
        plan_sweep(load_spec("caches"), gpu="A10G")


def test_no_trial_is_started_to_wait_for_another_trials_training(tmp_path):
    """2 models x 3 samplers, 2 trials at once: a proposal whose model a running trial
    trains is put aside (never handed to a trial), another is asked for; once that
    training ends the put-aside one comes first; never more than 2 live trials."""
    from loomray.sweep.budget import set_concurrency
    from loomray.sweep.search import make_searcher

    raw = {
        **SPEC,
        "space": {"coupling.caches": {"choice": [1, 2]}, "sampler.steps": {"choice": [1, 2, 4]}},
        "trials": 6,
        "seed": 3,
    }
    spec = spec_from_dict(raw, "t.yaml", storage=str(tmp_path))
    spec.dir.mkdir(parents=True)
    set_concurrency(spec.dir, 2)
    searcher = make_searcher(spec)
    running: dict[str, str] = {}  # trial -> its model
    trainer: dict[str, str] = {}  # model -> the trial training it
    handed = 0
    for i in range(40):
        tid = f"t{i}"
        params = searcher.suggest(tid)
        if params is None:  # nothing may start now: the oldest running trial ends
            assert len(running) == 2 or searcher.aside
            done_id = next(iter(running))
            model = running.pop(done_id)
            if trainer.get(model) == done_id:
                (spec.dir / "models" / model).mkdir(parents=True, exist_ok=True)
                (spec.dir / "models" / model / "done.json").write_text("{}")
            searcher.on_trial_complete(done_id, {"final": True, "fid": 1.0, "nfe": 1.0})
            continue
        handed += 1
        model = searcher.plan(params)
        assert model not in {m for t, m in running.items() if trainer.get(m) == t}
        if not (spec.dir / "models" / model / "done.json").exists():
            trainer[model] = tid
        running[tid] = model
        assert len(running) <= 2
        if handed == 6:
            break
    assert handed == 6 and len(trainer) == 2  # each model trained once


def test_the_trials_at_once_follow_the_sweep_dir_on_resume(tmp_path):
    """Tune's own limiter would restore the first run's number; the sweep's scheduler
    reads this run's from the sweep dir and counts every running trial, those Tune
    requeued on --resume included."""
    from ray.tune.experiment import Trial

    from loomray.sweep.budget import set_concurrency
    from loomray.sweep.search import make_scheduler

    spec = spec_from_dict(SPEC, "t.yaml", storage=str(tmp_path))
    spec.dir.mkdir(parents=True)
    scheduler = make_scheduler(spec, 300)

    class Stub:
        def __init__(self, status):
            self.status = status

    class Controller:
        def __init__(self, trials):
            self.trials = trials

        def get_trials(self):
            return self.trials

    trials = [Stub(Trial.RUNNING), Stub(Trial.RUNNING), Stub(Trial.PENDING)]
    set_concurrency(spec.dir, 3)
    assert scheduler.choose_trial_to_run(Controller(trials)) is trials[2]
    set_concurrency(spec.dir, 2)  # --resume --concurrency 2 on a smaller cluster
    assert scheduler.choose_trial_to_run(Controller(trials)) is None


def test_key_value_overrides_shrink_a_sweep_from_the_command_line():
    from loomray.sweep.parse import load_spec

    spec = load_spec(
        "caches-digits", None, ["trials=3", "concurrency=1", "train.steps=1000", "seed=7"]
    )
    assert (spec.trials, spec.concurrency, spec.seed) == (3, 1, 7)
    assert spec.overrides["train.steps"] == 1000
    cfg, _ = spec.trial_config({k: v.edges()[0] for k, v in spec.space.items()})
    assert cfg.train.steps == 1000 or spec.same_images
