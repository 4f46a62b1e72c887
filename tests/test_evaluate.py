import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from loomray.checkpoint import save_checkpoint
from loomray.cli import app
from loomray.config import load_config
from loomray.evaluation.evaluate import evaluate_model
from loomray.evaluation.evaluator import energy_distance, make_evaluator, to_uint8
from loomray.evaluation.weights import EvaluationError
from loomray.train.loop import train_local


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LOOMRAY_CACHE", str(tmp_path_factory.getbasetemp() / "loomray-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    monkeypatch.delenv("LOOMRAY_FID_WEIGHTS", raising=False)


@pytest.mark.parametrize("preset", ["digits", "mnist"])
def test_classifier_fid_is_zero_on_itself_and_monotone_in_corruption(preset):
    ev = make_evaluator(load_config(preset))
    assert ev.extractor == f"loomray-{preset}-classifier"
    assert "accuracy" in ev.note
    accuracy = float(ev.note.split("accuracy ")[1].split("%")[0])
    assert accuracy > 90
    data = ev.reference.float() / 127.5 - 1
    assert abs(ev.score(data)) < 1e-6
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(data.shape, generator=gen)
    scores = [ev.score((data + s * noise).clamp(-1, 1)) for s in (0.05, 0.2, 0.5, 1.0)]
    print(f"{preset} FID under noise 0.05/0.2/0.5/1.0:", [round(x, 2) for x in scores])
    assert scores[0] > 0.1 and all(a < b for a, b in zip(scores, scores[1:], strict=False))


def test_energy_distance():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, 2, generator=gen)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    shifts = [energy_distance(x, x + s) for s in (0.1, 0.5, 2.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def fake_cifar(root, n=24):
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            data = rng.integers(0, 256, (n // 5 + 1, 3072), dtype=np.uint8)
            pickle.dump({"data": data, "labels": [0] * len(data)}, f)


def test_inception_path_with_random_weights(tmp_path, random_inception_weights):
    fake_cifar(tmp_path)
    cfg = load_config("cifar10", [f"data.root={tmp_path}", "train.batch=4", "train.workers=1"])
    ev = make_evaluator(cfg, fid_weights=str(random_inception_weights))
    assert ev.extractor == "inception-v3-compat" and ev.reference.shape[1:] == (3, 32, 32)
    data = ev.reference.float() / 127.5 - 1
    same = ev.score(data)
    shifted = ev.score((data * 0.2).clamp(-1, 1))
    assert abs(same) < 1e-3 < shifted


def test_missing_inception_weights_is_one_clear_sentence(tmp_path):
    fake_cifar(tmp_path)
    cfg = load_config("cifar10", [f"data.root={tmp_path}", "train.batch=4", "train.workers=1"])
    with pytest.raises(EvaluationError, match="Inception weights file .* does not exist"):
        make_evaluator(cfg, fid_weights=str(tmp_path / "nope.pth"))
    ev = make_evaluator(cfg)
    with pytest.raises(EvaluationError, match="--fid-weights PATH or set LOOMRAY_FID_WEIGHTS"):
        ev.score(ev.reference.float() / 127.5 - 1)


def test_to_uint8_round_trips_the_grid():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.7])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255]


def test_evaluate_cli_on_a_digits_checkpoint(tmp_path):
    cfg = load_config("digits", ["train.steps=30"])
    run = train_local(cfg)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", run.state.payload(cfg))
    result = CliRunner().invoke(
        app,
        ["evaluate", "--ckpt", str(ckpt), "--methods", "euler-1,midpoint-2,dopri5", "--n", "300"],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "run" / "eval"  # not a run dir: beside the checkpoint, in eval/
    records = json.loads((out / "evaluate-step0000030-train.json").read_text())
    assert [r["method"] for r in records] == ["euler-1", "midpoint-2", "dopri5"]
    assert [r["nfe"] for r in records][:2] == [1, 4] and records[2]["nfe"] > 4
    assert all(r["metric"] == "fid" and r["value"] > 0 for r in records)
    assert (out / "evaluate-step0000030-train.parquet").is_file()
    # a quick look with fewer samples and another sampler keeps the careful table
    quick = CliRunner().invoke(
        app, ["evaluate", "--ckpt", str(ckpt), "--methods", "euler-1,euler-2", "--n", "2"]
    )
    assert quick.exit_code == 0 and "beside 3 earlier rows" in " ".join(quick.output.split())
    after = json.loads((out / "evaluate-step0000030-train.json").read_text())
    assert after[:3] == records
    assert [(r["method"], r["n"]) for r in after[3:]] == [("euler-1", 2), ("euler-2", 2)]
    for args, message in [
        (["--methods", "midpoint-0"], "unknown sampler"),
        (["--ref", "val"], "--ref must be train or test"),
        (["--ref", "test"], "only known for cifar10"),
        (["--n", "1"], "at least 2"),
    ]:
        bad = CliRunner().invoke(app, ["evaluate", "--ckpt", str(ckpt), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_toy2d_uses_energy_distance():
    cfg = load_config("toy2d", ["train.steps=50"])
    run = train_local(cfg)
    ev = make_evaluator(cfg)
    rows = evaluate_model(run.state.ema.model, cfg, ["euler-1", "midpoint-2"], 500, ev)
    assert [r.metric for r in rows] == ["energy", "energy"] and all(r.value > 0 for r in rows)


def test_sampling_runs_in_fp32_unless_asked_whatever_training_ran_in():
    from loomray.evaluation.evaluate import sampling_in_bf16, with_precision

    trained_bf16 = load_config("cifar10", ["train.bf16=true"])
    assert trained_bf16.eval.precision == "fp32"
    assert not sampling_in_bf16(trained_bf16, "cuda")
    asked = with_precision(trained_bf16, "bf16")
    assert sampling_in_bf16(asked, "cuda") and not sampling_in_bf16(asked, "cpu")
    with pytest.raises(EvaluationError, match="--precision must be fp32 or bf16"):
        with_precision(trained_bf16, "fp16")


def test_mnist_is_mnist_5k_and_its_preset_trains_and_scores():
    from loomray.data import build_dataset, mnist_5k

    images, labels = mnist_5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10 and images.max() == 255
    cfg = load_config("mnist", ["train.steps=2", "train.batch=16", "data.limit=64"])
    assert len(build_dataset(cfg)) == 64
    run = train_local(cfg)
    rows = evaluate_model(run.state.ema.model, cfg, ["euler-1"], 32, make_evaluator(cfg))
    assert rows[0].metric == "fid" and rows[0].value > 0
    with pytest.raises(Exception, match="MNIST is 1x28x28"):
        build_dataset(load_config("mnist", ["data.resolution=32"]))
