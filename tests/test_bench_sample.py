"""`loomray bench sample`: each sampler's speed on a checkpoint, with its NFE."""

import json

from typer.testing import CliRunner

from loomray.bench.sample import bench_sample
from loomray.checkpoint import save_checkpoint
from loomray.cli import app
from loomray.config import load_config
from loomray.train.loop import train_local


def test_bench_sample_counts_every_sample_and_evaluation(tmp_path):
    cfg = load_config("digits", ["train.steps=5", "eval.batch=50"])
    run = train_local(cfg)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", run.state.payload(cfg))
    rows = bench_sample(run.state.ema.model, cfg, ["euler-1", "midpoint-2", "dopri5"], 120)
    assert [(r.method, r.images) for r in rows] == [("euler-1", 120), ("midpoint-2", 120),
                                                    ("dopri5", 120)]
    assert [r.nfe for r in rows][:2] == [1.0, 4.0] and rows[2].nfe > 4
    assert all(r.seconds > 0 and r.images_per_s > 0 for r in rows)

    out = tmp_path / "sample.json"
    result = CliRunner().invoke(
        app,
        ["bench", "sample", "--ckpt", str(ckpt), "--methods", "euler-2,rk4-2", "--n", "64",
         "--batch", "32", "--device", "cpu", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [(r["method"], r["nfe"], r["images"], r["batch"]) for r in records] == [
        ("euler-2", 2.0, 64, 32), ("rk4-2", 8.0, 64, 32)
    ]
    assert "images/s" in result.output
