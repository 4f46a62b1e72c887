"""One table of bad inputs across the CLI: each ends with one sentence, exit code 2,
no traceback, and leaves every existing file as it was (nothing written either).

All of these are caught before Ray starts, so the table runs in seconds."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from loomray.checkpoint import save_checkpoint
from loomray.config import dump_config, load_config
from loomray.coupling import AssignmentTable


class _Evil:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


def _setup(tmp: Path) -> None:
    """Files the cases point at (written before the snapshot of the tree)."""
    (tmp / "bad.yaml").write_text("data: [unclosed")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    # YAML that would run code under yaml.load; safe_load refuses the tag
    evil = f"name: !!python/object/apply:pathlib.Path.touch [{tmp / 'pwned'}]\n"
    (tmp / "evil.yaml").write_text(evil)
    (tmp / "evilspec.yaml").write_text(evil + "base: digits\n")
    (tmp / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 50)
    torch.save({"weights": torch.zeros(2)}, tmp / "foreign.pt")
    (tmp / "evil.pt").write_bytes(pickle.dumps(_Evil(tmp / "pwned")))
    cfg = load_config("toy2d", ["train.steps=1"])
    save_checkpoint(tmp / "noema.pt", {"format": 1, "config": cfg.to_dict(), "step": 0})
    from loomray.models import build_model

    ema = build_model(cfg).state_dict()
    save_checkpoint(tmp / "toy.pt", {"format": 1, "config": cfg.to_dict(), "step": 0, "ema": ema})
    # a folder of runs, and a sweep's layout (models/<key>/): neither stands for one
    for run in ("runs/a", "runs/b", "sweep/models/k1"):
        (tmp / run).mkdir(parents=True)
        (tmp / run / "config.yaml").write_text(dump_config(cfg))
        save_checkpoint(
            tmp / run / "train" / "step-0000001" / "checkpoint.pt",
            {"format": 1, "config": cfg.to_dict(), "step": 1, "ema": ema},
        )
    table = AssignmentTable.create(rows=16, caches=2, seed=0)
    table.save(tmp / "table.parquet")
    data = (tmp / "table.parquet").read_bytes()
    (tmp / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (tmp / "notparquet.parquet").write_text("rows,caches\n1,2\n")
    import pyarrow.parquet as pq

    t = pq.read_table(tmp / "table.parquet")
    seeds = t.column("cache_0").to_numpy().copy()
    seeds[0] += 1
    pq.write_table(t.set_column(0, "cache_0", [seeds]), tmp / "altered.parquet")
    (tmp / "occupied").mkdir()
    (tmp / "occupied" / "notes.txt").write_text("mine")
    (tmp / "other-run").mkdir()
    (tmp / "other-run" / "config.yaml").write_text(
        dump_config(load_config("digits", ["train.lr=0.5"]))
    )
    (tmp / "empty-run").mkdir()
    (tmp / "benched").mkdir()  # the results of earlier benchmarks
    (tmp / "benched" / "quality.json").write_text("{}")
    (tmp / "benched" / "reflow.json").write_text("{}")
    # a LOOM run whose latest checkpoint lost its table (an import would say imported_from)
    digits_cfg = load_config("digits")
    (tmp / "tableless").mkdir()
    (tmp / "tableless" / "config.yaml").write_text(dump_config(digits_cfg))
    save_checkpoint(
        tmp / "tableless" / "train" / "step-0000001" / "checkpoint.pt",
        {"format": 1, "config": digits_cfg.to_dict(), "step": 1},
    )
    spec = {"base": "digits", "space": {"coupling.caches": {"choice": []}}}
    (tmp / "emptychoice.yaml").write_text(yaml.safe_dump(spec))
    spec = {"base": "digits", "space": {"coupling.caches": {"int": [4, 2]}}}
    (tmp / "badbounds.yaml").write_text(yaml.safe_dump(spec))
    spec = {"base": "digits", "space": {"coupling.nope": {"choice": [1]}}}
    (tmp / "unknownkey.yaml").write_text(yaml.safe_dump(spec))
    spec = {"base": "digits", "space": {"coupling.caches": {"choice": [1, 2]}}}
    (tmp / "good.yaml").write_text(yaml.safe_dump(spec))
    np.save(tmp / "stray.npy", np.zeros(3))
    # the wrong kind of thing: a file where a folder goes, a folder where a file goes
    (tmp / "afile").write_text("not a folder")
    (tmp / "folder.yaml").mkdir()
    (tmp / "folder.pth").mkdir()
    (tmp / "text.pt").write_text("hello, not a checkpoint\n")
    (tmp / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    # a digits model, and a folder of pairs made by another model
    digits = load_config("digits")
    torch.manual_seed(0)
    weights = build_model(digits).state_dict()
    save_checkpoint(
        tmp / "digits.pt", {"format": 1, "config": digits.to_dict(), "step": 5, "ema": weights}
    )
    from loomray.checkpoint import load_checkpoint
    from loomray.data.pairs import open_folder
    from loomray.reflow.generate import plan_pairs

    other = plan_pairs(load_checkpoint(tmp / "digits.pt"), 1000, "dopri5")
    other.source_fingerprint = "0" * 16
    open_folder(tmp / "otherpairs", other)


CASES = [
    # configs
    ("train --config nope", "unknown preset 'nope'"),
    ("train --config digits train.lr=-1", "train.lr must be positive"),
    ("train --config digits train.lr2=1", "unknown config key train.lr2"),
    ("train --config digits trainlr", "is not of the form section.key=value"),
    ("train --config {tmp}/bad.yaml", "is not valid YAML"),
    ("train --config {tmp}/list.yaml", "must be a mapping of sections"),
    ("train --config {tmp}/evil.yaml", "is not valid YAML"),
    ("sweep {tmp}/evilspec.yaml", "is not valid YAML"),
    ("train --config {tmp}/missing.yaml", "does not exist"),
    ("train --config digits train.batch=7 --workers 2", "not divisible by train.workers"),
    ("config show --config digits model.kind=transformer", "model.kind must be one of"),
    # sweep specs
    ("sweep {tmp}/emptychoice.yaml --storage {tmp}/sw", "choice must be a non-empty list"),
    ("sweep {tmp}/badbounds.yaml --storage {tmp}/sw", "low 4 must be below high 2"),
    ("sweep {tmp}/unknownkey.yaml --storage {tmp}/sw", "unknown config key coupling.nope"),
    ("sweep {tmp}/good.yaml --storage {tmp}/sw --resume", "nothing to resume"),
    ("sweep {tmp}/nospec.yaml", "does not exist; shipped specs are"),
    # CLI arguments
    ("sample --ckpt {tmp}/toy.pt --n 0", "--n must be at least 1"),
    ("sample --ckpt {tmp}/toy.pt --method euler-0", "unknown sampler 'euler-0'"),
    ("evaluate --ckpt {tmp}/toy.pt --ref valid", "--ref must be train or test"),
    ("evaluate --ckpt {tmp}/toy.pt --n 1", "--n must be at least 2"),
    ("evaluate --ckpt {tmp}/toy.pt --methods rk45", "unknown sampler 'rk45'"),
    ("evaluate --ckpt {tmp}/toy.pt --device tpu", "--device must be cpu or cuda"),
    ("evaluate --ckpt {tmp}/toy.pt --device cuda", "--device cuda: no CUDA device is visible"),
    ("evaluate --ckpt {tmp}/toy.pt --methods ,", "--methods names no sampler"),
    ("evaluate --ckpt {tmp}/toy.pt --precision fp16", "--precision must be fp32 or bf16"),
    ("sample --ckpt {tmp}/toy.pt --precision half", "--precision must be fp32 or bf16"),
    ("train --config digits eval.precision=fp8", "eval.precision must be fp32 or bf16"),
    ("train --config digits train.lr=", "train.lr needs a value (train.lr=<float>)"),
    ("bench coupling --caches 0", "--caches must be"),
    ("bench sample --ckpt {tmp}/toy.pt --n 0", "--n must be at least 1"),
    ("bench sample --ckpt {tmp}/toy.pt --batch 0", "--batch must be at least 1"),
    ("bench sample --ckpt {tmp}/toy.pt --methods euler-1,rk45", "unknown sampler 'rk45'"),
    ("bench sample --ckpt {tmp}/toy.pt --device tpu", "--device must be cpu or cuda"),
    ("bench sample --ckpt {tmp}/noema.pt", "no usable EMA weights"),
    ("bench sample --ckpt {tmp}/toy.pt --out {tmp}/occupied", "--out {tmp}/occupied is a folder"),
    # corrupt checkpoints
    ("evaluate --ckpt {tmp}/garbage.pt", "cannot be read"),
    ("sample --ckpt {tmp}/foreign.pt", "is not a loomray checkpoint"),
    ("sample --ckpt {tmp}/evil.pt", "cannot be read"),
    ("evaluate --ckpt {tmp}/toy.pt --fid-weights {tmp}/evil.pt", "not a torch file of tensors"),
    ("evaluate --ckpt {tmp}/toy.pt --fid-weights {tmp}/garbage.pt", "not a torch file of tensors"),
    ("train --config digits name=../../x", "name must be letters, digits"),
    ("train --config digits --run-dir {tmp}/tableless --resume", "has no table.parquet"),
    ("sample --ckpt {tmp}/noema.pt", "no usable EMA weights"),
    ("sample --ckpt {tmp}/nothing-here", "does not exist"),
    ("evaluate --ckpt {tmp}/empty-run", "no checkpoint found under"),
    # a folder of several runs is refused with their names, never taken for one
    ("evaluate --ckpt {tmp}/runs", "holds 2 runs ({tmp}/runs/a, {tmp}/runs/b): pass one"),
    ("sample --ckpt {tmp}/runs", "holds 2 runs ({tmp}/runs/a, {tmp}/runs/b): pass one"),
    ("pairs --ckpt {tmp}/runs --out {tmp}/p", "holds 2 runs ({tmp}/runs/a, {tmp}/runs/b)"),
    ("reflow --ckpt {tmp}/runs", "holds 2 runs ({tmp}/runs/a, {tmp}/runs/b)"),
    ("table {tmp}/runs", "holds 2 runs ({tmp}/runs/a, {tmp}/runs/b)"),
    ("evaluate --ckpt {tmp}/sweep", "holds one run, {tmp}/sweep/models/k1: pass that"),
    ("evaluate --ckpt {tmp}", "holds 4 runs"),
    # corrupt tables
    ("table {tmp}/truncated.parquet", "is not a readable Parquet file"),
    ("table {tmp}/notparquet.parquet", "is not a readable Parquet file"),
    ("table {tmp}/altered.parquet", "fails its checksum"),
    ("table {tmp}/missing.parquet", "no assignment table at"),
    ("table {tmp}/empty-run", "no checkpoint found under"),
    # missing data
    ("train --config cifar10 --cpu data.root={tmp}/nocifar", "CIFAR-10"),
    ("train --config imagenet32 --cpu data.root={tmp}/noimagenet", "{tmp}/noimagenet"),
    # storage that is not a filesystem every node mounts
    ("sweep caches-digits --storage s3://bucket/sweeps", "storage s3://bucket/sweeps is a URI"),
    ("train --config digits --run-dir gs://bucket/run", "run dir gs://bucket/run is a URI, not a"),
    ("sweep caches --plan --gpu A10G", "no step rate measured for cifar10 on A10G"),
    ("sweep caches-digits --concurrency 0", "--concurrency must be an integer >= 1 or auto"),
    ("sweep caches-digits bogus=3", "'bogus' is neither a sweep spec key"),
    ("sweep caches-digits trials", "override 'trials' is not of the form key=value"),
    ("sweep caches-digits train.nope=3", "unknown config key train.nope"),
    # run directories
    ("train --config digits --run-dir {tmp}/occupied", "is not empty and holds no loomray run"),
    ("train --config digits --run-dir {tmp}/other-run", "holds a run with another config"),
    ("train --config digits --run-dir {tmp}/empty-run --resume", "nothing to resume"),
    # paths that name the wrong kind of thing
    ("train --config digits --run-dir {tmp}/afile", "run dir {tmp}/afile is a file, not a folder"),
    ("train --config digits --run-dir {tmp}/afile/run", "lies under {tmp}/afile, which is a file"),
    ("train --config {tmp}/folder.yaml", "config file {tmp}/folder.yaml is a folder, not a file"),
    ("train --config {tmp}/latin1.yaml", "config file {tmp}/latin1.yaml is not a text file"),
    ("config show --config {tmp}/folder.yaml", "is a folder, not a file"),
    ("sweep {tmp}/folder.yaml", "sweep spec {tmp}/folder.yaml is a folder, not a file"),
    ("sweep {tmp}/good.yaml --storage {tmp}/afile", "sweep storage {tmp}/afile is a file"),
    ("sweep {tmp}/good.yaml --storage {tmp}/afile/s", "lies under {tmp}/afile, which is a file"),
    ("sample --ckpt {tmp}/toy.pt --out {tmp}/occupied", "--out {tmp}/occupied is a folder"),
    ("sample --ckpt {tmp}/toy.pt --out {tmp}/grid", "must end in .png (an image of the"),
    ("sample --ckpt {tmp}/toy.pt --out {tmp}/grid.gif", "or .npz (the samples as an array)"),
    ("sample --ckpt {tmp}/toy.pt --n 100000", "--out samples.npz writes them as an array"),
    ("sample --ckpt {tmp}/toy.pt --out {tmp}/afile/x.png", "lies under {tmp}/afile"),
    ("sample --ckpt {tmp}/text.pt", "is not a file written by torch.save"),
    ("evaluate --ckpt {tmp}/toy.pt --fid-weights {tmp}/folder.pth", "is a folder, not a file"),
    ("evaluate --ckpt {tmp}/toy.pt --fid-weights {tmp}/none.pth", "none.pth does not exist"),
    ("bench loop --config toy2d --out {tmp}/occupied", "--out {tmp}/occupied is a folder"),
    ("bench loop --config toy2d --device tpu", "--device must be cpu or cuda"),
    ("bench loop --config toy2d --profile {tmp}/afile", "--profile {tmp}/afile is a file"),
    ("bench quality --config toy2d --out {tmp}/afile", "--out {tmp}/afile is a file, not a folder"),
    ("bench quality --config toy2d --out {tmp}/benched", "already holds quality.json"),
    ("bench reflow --config toy2d --out {tmp}/benched", "already holds reflow.json"),
    ("table {tmp}/afile", "is not a readable Parquet file"),
    # a cluster nothing answers at: one sentence in seconds, not minutes of retries
    ("train --config digits --address 127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
    ("status --address 127.0.0.1:1", "nothing answers on 127.0.0.1:1"),
    ("sweep {tmp}/good.yaml --storage {tmp}/sw --address 127.0.0.1:1", "cannot reach the Ray"),
    ("train --config digits --address nowhere", "--address nowhere is not host:port"),
    # reflow
    ("pairs --ckpt {tmp}/garbage.pt --out {tmp}/p", "cannot be read"),
    ("pairs --ckpt {tmp}/toy.pt --out {tmp}/p", "reflow pairs are images"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/otherpairs --n 1000", "holds other pairs"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/occupied --n 100", "is not empty and holds no"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/afile --n 100", "is a file, not a folder"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/p --sampler rk45", "unknown sampler 'rk45'"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/p --batch 30 --shard-size 50", "multiple of"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/p --workers 0", "--workers must be at least 1"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/p --n 0", "--n/--pairs must be at least 1, got 0"),
    ("pairs --ckpt {tmp}/digits.pt --out {tmp}/p --shard-size -5", "--shard-size must be at"),
    ("reflow --ckpt {tmp}/digits.pt --pairs 0", "--n/--pairs must be at least 1, got 0"),
    ("train --config digits train.init={tmp}/empty-run", "train.init: no checkpoint found"),
    ("reflow --ckpt {tmp}/digits.pt --pairs 100", "smaller than the training batch of 128"),
    ("reflow --ckpt {tmp}/toy.pt", "reflow pairs are images"),
    ("reflow --ckpt {tmp}/noema.pt", "no usable EMA weights"),
    ("reflow --ckpt {tmp}/digits.pt --run-dir {tmp}/occupied", "is not empty and holds no"),
    ("reflow --ckpt {tmp}/digits.pt --run-dir {tmp}/other-run", "holds a run with another"),
    ("reflow --ckpt {tmp}/digits.pt --run-dir {tmp}/r --pairs-dir {tmp}/otherpairs", "holds other"),
    ("reflow --ckpt {tmp}/digits.pt --config nope", "unknown preset 'nope'"),
    ("reflow --ckpt {tmp}/digits.pt train.lr=-1", "train.lr must be positive"),
    ("train --config digits coupling.kind=pairs", "data.name=pairs goes with coupling.kind"),
    ("train --config digits-reflow data.root={tmp}/otherpairs", "is incomplete (0 of 1 shards)"),
    ("train --config digits train.init={tmp}/toy.pt", "is a model of another shape"),
    ("train --config digits train.init={tmp}/noema.pt", "holds no EMA weights"),
    # keys that would change nothing
    ("train --config digits model.channel_mult=[1,2,2]", "model.channel_mult has no effect"),
    # YAML errors say where, in words
    ("train --config {tmp}/bad.yaml", "expected ',' or ']', but got '<stream end>' at line 1"),
    ("train --config {tmp}/evil.yaml", "the tag python/object/apply:pathlib.Path.touch is not"),
]


@pytest.mark.parametrize("command,message", CASES, ids=[c for c, _ in CASES])
def test_bad_input(tmp_path, command, message):
    _setup(tmp_path)
    before = _tree(tmp_path)
    args = command.format(tmp=tmp_path).split()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a default run dir (runs/<name>) would land here
    try:
        from loomray.cli import app

        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert text.count("error:") == 1, result.output
    assert message.format(tmp=tmp_path) in text.split("error: ", 1)[1], result.output
    assert "Traceback" not in result.output and "<unicode string>" not in result.output
    assert _tree(tmp_path) == before  # nothing changed, nothing added
    assert not (tmp_path / "pwned").exists()  # the pickle never ran
