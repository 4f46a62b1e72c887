import json

from typer.testing import CliRunner

from loomray.cli import app


def test_bench_quality_runs_all_couplings_and_writes_table_and_plot(tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(
        app,
        [
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
        ],
    )
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
