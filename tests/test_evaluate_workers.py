"""`loomray evaluate --workers 2`: two Ray workers score a checkpoint as one does."""

import json

import pytest
from typer.testing import CliRunner

from loomray.checkpoint import save_checkpoint
from loomray.cli import app
from loomray.config import load_config
from loomray.train.loop import train_local


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    ray.shutdown()


def test_two_workers_give_one_workers_figures(ray_session, tmp_path):
    cfg = load_config("digits", ["train.workers=1", "train.steps=200", "eval.batch=100"])
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", train_local(cfg).state.payload(cfg))
    out = tmp_path / "eval" / "evaluate-step0000200-train.json"
    results = {}
    for workers in ("1", "2"):
        args = ["evaluate", "--ckpt", str(ckpt), "--methods", "euler-1,dopri5", "--n", "500"]
        run = CliRunner().invoke(app, [*args, "--workers", workers])
        assert run.exit_code == 0, run.output
        rows = json.loads(out.read_text())
        results[workers] = {r["method"]: (r["value"], r["nfe"]) for r in rows}
    for method, (value, nfe) in results["1"].items():
        assert results["2"][method][0] == pytest.approx(value, rel=1e-9)
        assert results["2"][method][1] == nfe
    bad = CliRunner().invoke(app, ["evaluate", "--ckpt", str(ckpt), "--workers", "0"])
    assert bad.exit_code == 2 and "--workers must be at least 1" in bad.output
