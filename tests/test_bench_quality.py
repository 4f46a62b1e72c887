import json

from typer.testing import CliRunner

from loomray.cli import app


def test_bench_quality_runs_all_couplings_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "q"
    args = [
        "bench",
        "quality",
        "--config",
        "toy2d",
        "data.toy_points=256",
        "coupling.caches=2",
        "train.batch=64",
        "--seeds",
        "1",
        "--steps",
        "60",
        "--n",
        "200",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "quality.json").read_text())
    kinds = [r["kind"] for r in report["runs"]]
    assert kinds == ["independent", "minibatch-ot", "loom"]
    assert report["metric"] == "energy"
    costs = {r["kind"]: r["pair_cost"] for r in report["runs"]}
    # couplings ordered as they must be, all above the physical limit
    assert report["global_ot_pair_cost"] < costs["loom"] < costs["independent"]
    assert costs["minibatch-ot"] < costs["independent"]
    assert (out / "quality.png").stat().st_size > 10_000
    # the same runs two at a time, each in a process of its own
    again = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "q2"), "--jobs", "2"])
    assert again.exit_code == 0, again.output
    runs = json.loads((tmp_path / "q2" / "quality.json").read_text())["runs"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in report["runs"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in runs] == strip


def test_bench_reflow_reflows_every_coupling_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "r"
    args = ["bench", "reflow", "--config", "digits", "train.steps=40", "model.hidden=64"]
    args += ["--seeds", "1", "--pairs", "300", "--steps", "30", "--n", "200", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "reflow.json").read_text())
    assert [r["kind"] for r in report["runs"]] == ["independent", "minibatch-ot", "loom"]
    for run in report["runs"]:
        assert set(run["before"]) == set(run["after"]) == {"euler-1", "euler-2", "midpoint-1"}
        assert run["before"] != run["after"] and run["pairs_nfe"] == 32  # rk4-8
        assert run["pairs_fid"] > 0 and run["reflow_loss"] > 0
    assert "pairs (rk4-8)" in result.output and "reflow loss" in result.output
    assert (out / "reflow.png").stat().st_size > 10_000


def test_bench_reflow_compares_the_chosen_couplings_only(tmp_path):
    out = tmp_path / "r"
    args = ["bench", "reflow", "--config", "digits", "train.steps=20", "model.hidden=32"]
    args += ["--seeds", "1", "--pairs", "200", "--steps", "20", "--n", "100", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--kinds", "loom"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "reflow.json").read_text())
    assert [r["kind"] for r in report["runs"]] == ["loom"]
    bad = CliRunner().invoke(app, [*args, "--kinds", "loom,exact"])
    assert bad.exit_code == 2 and "--kinds" in bad.output
