"""`loomray bench loop`: the overlapped noise source changes timing, never results."""

import json

import numpy as np
from typer.testing import CliRunner

from loomray.bench.loop import ThreadedNoise, bench_loop
from loomray.cli import app
from loomray.config import load_config
from loomray.coupling import make_coupling
from loomray.data import BatchPlan, build_dataset, iterate_batches
from loomray.train.loop import LocalNoise, make_table


def test_threaded_noise_equals_inline_noise():
    cfg = load_config("toy2d", ["train.batch=64", "coupling.caches=2"])
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)

    def source(cls):
        coupling = make_coupling("loom", make_table(cfg, len(dataset)), cfg.coupling.cost)
        return cls(coupling, cfg.coupling.seed), coupling

    inline, c1 = source(LocalNoise)
    threaded, c2 = source(ThreadedNoise)
    batches = list(iterate_batches(dataset, plan, 0, 30, 0, 1, 0))
    for step, rows, x in batches[:3]:  # submitted ahead, as the loop does
        threaded.submit(step, rows, x.numpy())
    for i, (step, rows, x) in enumerate(batches):
        if i + 3 < len(batches):
            s, r, xx = batches[i + 3]
            threaded.submit(s, r, xx.numpy())
        inline.submit(step, rows, x.numpy())
        assert np.array_equal(inline.receive(step), threaded.receive(step))
    threaded.close()
    assert np.array_equal(c1.table.seeds, c2.table.seeds)


def test_bench_loop_runs_every_mode_on_cpu():
    cfg = load_config("toy2d", ["train.batch=64"])
    runs = bench_loop(cfg, "cpu", steps=5, warmup=2)
    assert [r.mode for r in runs] == ["independent", "loom-inline", "loom-overlap"]
    assert all(r.steps_per_s > 0 and np.isfinite(r.loss) for r in runs)


def test_bench_loop_cli(tmp_path):
    out = tmp_path / "loop.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "loop",
            "--config",
            "toy2d",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "loom-overlap" in result.output and out.is_file()
    bad = CliRunner().invoke(app, ["bench", "loop", "--config", "toy2d", "--steps", "0"])
    assert bad.exit_code == 2 and "--steps must be >= 1" in bad.output


def test_bench_loop_profiles_each_mode(tmp_path):
    out = tmp_path / "profile"
    result = CliRunner().invoke(
        app,
        ["bench", "loop", "--config", "toy2d", "--steps", "2", "--warmup", "1", "--device",
         "cpu", "--modes", "independent,loom-overlap", "--profile", str(out)],
    )
    assert result.exit_code == 0, result.output
    for mode in ("independent", "loom-overlap"):
        summary = json.loads((out / f"{mode}.json").read_text())
        assert summary["steps"] == 10 and summary["wall_ms"] > 0 and summary["cpu_ms"] > 0
        assert summary["device_ms"] == 0 and summary["top"]  # a CPU: no device time
        assert "Self CPU" in (out / f"{mode}.txt").read_text()
