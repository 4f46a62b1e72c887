import numpy as np
import torch
from typer.testing import CliRunner

from loomray.checkpoint import load_checkpoint, save_checkpoint
from loomray.cli import app
from loomray.config import load_config
from loomray.coupling import noise_from_seeds
from loomray.flow.sampling import sample
from loomray.train.loop import train_local

STEPS = 500


def straightness(model, n=1000):
    """Mean distance between 1-step Euler and the dopri5 solution of the same model."""
    z = torch.from_numpy(noise_from_seeds(np.arange(n) + 10**9, (2,)))
    ref = sample(model, z, "dopri5", rtol=1e-6, atol=1e-6).x
    return float((sample(model, z, "euler-1").x - ref).norm(dim=1).mean())


def test_loom_learns_a_straighter_flow_than_independent(tmp_path):
    torch.set_num_threads(1)
    runs = {}
    for kind in ("independent", "loom"):
        cfg = load_config(
            "toy2d", [f"coupling.kind={kind}", f"train.steps={STEPS}", "train.batch=128"]
        )
        runs[kind] = train_local(cfg)
    errors = {k: straightness(r.state.ema.model) for k, r in runs.items()}
    print(f"1-step Euler vs dopri5 after {STEPS} steps: {errors}")
    assert errors["loom"] < 0.5 * errors["independent"]
    loom = runs["loom"]
    # the coupling improved: later solves start from a cheaper table
    stats = loom.noise.stats
    assert np.mean([s.pre_cost for s in stats[-50:]]) < np.mean([s.pre_cost for s in stats[:50]])
    assert loom.noise.coupling.table.is_permutation_of_origin()
    assert np.mean(loom.history.losses[-50:]) < np.mean(loom.history.losses[:50])

    # the checkpoint of this run samples through the CLI
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", loom.state.payload(loom.cfg))
    assert load_checkpoint(tmp_path / "run")["step"] == STEPS
    out = tmp_path / "scatter.png"
    result = CliRunner().invoke(
        app,
        ["sample", "--ckpt", str(path), "--method", "midpoint-2", "--n", "256", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "4 NFE" in result.output and out.stat().st_size > 1000


def test_digits_grid_and_bad_sample_inputs(tmp_path):
    cfg = load_config("digits", ["train.steps=20"])
    run = train_local(cfg)
    path = save_checkpoint(tmp_path / "checkpoint.pt", run.state.payload(cfg))
    out = tmp_path / "grid.png"
    runner = CliRunner()
    ok = runner.invoke(app, ["sample", "--ckpt", str(path), "--n", "16", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    from PIL import Image

    # a 4x4 grid of 8x8 digits scaled up to 32x32, padding scaled alike: viewable
    assert Image.open(out).size == (4 * 36 + 4, 4 * 36 + 4)
    args = ["sample", "--ckpt", str(path), "--n", "16", "--out", str(out), "--scale", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert Image.open(out).size == (4 * 9 + 1, 4 * 9 + 1)  # as sampled
    for args, message in [
        (["--ckpt", str(tmp_path / "nope.pt")], "does not exist"),
        (["--ckpt", str(path), "--method", "midpoint-0"], "unknown sampler"),
        (["--ckpt", str(path), "--n", "0"], "at least 1"),
        (["--ckpt", str(path), "--scale", "0"], "--scale must be in 1..64"),
    ]:
        bad = runner.invoke(app, ["sample", *args, "--out", str(tmp_path / "x.png")])
        assert bad.exit_code == 2 and message in bad.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    bad = runner.invoke(app, ["sample", "--ckpt", str(junk)])
    assert bad.exit_code == 2 and "cannot be read" in bad.output


def test_a_short_digits_run_has_a_usable_ema_model():
    """1500 steps at the preset's decay 0.999: with the EMA warm-up the EMA model
    scores close to the raw one; a fixed decay would still be near the initial
    weights (noise, FID in the hundreds)."""
    from loomray.evaluation.evaluate import evaluate_model
    from loomray.evaluation.evaluator import make_evaluator

    torch.set_num_threads(1)
    scores = {}
    for warmup in (True, False):
        cfg = load_config(
            "digits", ["train.workers=1", "train.steps=1500", f"train.ema_warmup={warmup}"]
        )
        run = train_local(cfg)
        evaluator = make_evaluator(cfg, "train", None, "cpu")
        for name, model in (("raw", run.state.model.eval()), ("ema", run.state.ema.model)):
            (row,) = evaluate_model(model, cfg, ["euler-4"], 500, evaluator, "cpu")
            scores[warmup, name] = row.value
    print(scores)
    raw = scores[True, "raw"]
    assert scores[False, "raw"] == raw  # the EMA never changes training
    assert scores[True, "ema"] < 1.25 * raw
    assert scores[False, "ema"] > 3 * raw
