"""Reflow on a real local Ray: pairs made by 1 or 2 workers are the same, training on
pairs runs through Ray Train, and `loomray reflow` chains it all and resumes.

One Ray per module; the source is a digits model trained for a few hundred steps in
this process, the pairs a few hundred."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from loomray.checkpoint import load_checkpoint, save_checkpoint
from loomray.config import load_config
from loomray.data.pairs import read_shard
from loomray.reflow.generate import generate_pairs, plan_pairs
from loomray.train.launch import launch
from loomray.train.loop import train_local

LOG = ["train.log_every=10", "train.ckpt_every=1000"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    cfg = load_config("digits", ["train.workers=1", "train.steps=300"])
    run = train_local(cfg)
    path = tmp_path_factory.mktemp("source") / "checkpoint.pt"
    save_checkpoint(path, run.state.payload(cfg))
    return path


@pytest.fixture(scope="module")
def pairs_by_one(ray_session, source, tmp_path_factory):
    payload = load_checkpoint(source)
    manifest = plan_pairs(payload, 600, "dopri5", batch=100, shard_size=200)
    folder = tmp_path_factory.mktemp("pairs") / "one"
    seen = []
    made = generate_pairs(payload, folder, manifest, 1, progress=lambda d, t: seen.append(d))
    assert made.made == 3 and seen[-1] == 600
    return payload, manifest, folder


def test_two_workers_make_the_same_pairs_as_one(pairs_by_one, tmp_path):
    payload, manifest, one = pairs_by_one
    made = generate_pairs(payload, tmp_path / "two", manifest, workers=2)
    assert made.made == 3 and made.rows_per_s > 0
    for i in range(manifest.shards):
        s1, x1 = read_shard(one, manifest, i)
        s2, x2 = read_shard(tmp_path / "two", manifest, i)
        assert np.array_equal(s1, s2) and np.array_equal(x1, x2)
    # a rerun finds every shard finished and makes none
    assert generate_pairs(payload, tmp_path / "two", manifest, workers=2).made == 0


def test_training_on_pairs_through_ray_train(pairs_by_one, tmp_path):
    _, _, folder = pairs_by_one
    cfg = load_config(
        "digits-reflow",
        [*LOG, f"data.root={folder}", "train.steps=120", "train.batch=100", "eval.n=100"],
    )
    result = launch(cfg, tmp_path / "run", progress=False)
    assert result.step == 120 and result.service["kind"] == "pairs"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses  # from scratch: it learns
    assert "fid/euler-1" in result.metrics


def test_reflow_command_chains_and_resumes(ray_session, source, tmp_path):
    run = tmp_path / "reflow"
    args = ["reflow", "--ckpt", str(source), "--pairs", "400", "--sampler", "euler-8"]
    args += ["--run-dir", str(run), *LOG, "train.steps=40", "eval.n=200"]
    first = CliRunner().invoke(__import__("loomray.cli").cli.app, args)
    assert first.exit_code == 0, first.output
    rows = json.loads((run / "eval" / "reflow.json").read_text())
    assert [r["method"] for r in rows] == ["euler-1", "euler-2", "midpoint-1"]
    assert all(np.isfinite([r["before"], r["after"]]).all() for r in rows)
    # the run started from the source's EMA weights, and scored it with the same noise
    cfg = load_checkpoint(run)["config"]
    assert cfg["train"]["init"] == str(source.resolve()) and cfg["coupling"]["kind"] == "pairs"
    src = load_checkpoint(source)
    before = json.loads(next((run / "eval").glob("source-step*.json")).read_text())
    assert src["step"] == 300 and {r["method"] for r in before} == {r["method"] for r in rows}
    # a rerun finds every stage done: no pairs made, no training, the same table
    stamp = {p: p.stat().st_mtime_ns for p in run.rglob("*.parquet")}
    again = CliRunner().invoke(__import__("loomray.cli").cli.app, args)
    assert again.exit_code == 0, again.output
    assert "all 400 are in" in again.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.parquet")} == stamp
    assert json.loads((run / "eval" / "reflow.json").read_text()) == rows
    assert torch.load(source, weights_only=True)["step"] == 300  # the source is untouched


def test_bench_pairs_times_one_and_two_workers(ray_session):
    args = ["bench", "pairs", "--config", "digits", "--workers", "1,2", "--n", "800"]
    result = CliRunner().invoke(__import__("loomray.cli").cli.app, [*args, "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "pairs/s" in result.output and "1.00x" in result.output
