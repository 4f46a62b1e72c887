"""Finding a run's checkpoints by step, and runs from before a config key existed."""

import os

import pytest
import torch
import yaml

from loomray.checkpoint import latest_step, resolve_checkpoint, run_dir_of, save_checkpoint
from loomray.config import dump_config, load_config
from loomray.train.launch import LaunchError, prepare_run_dir


def test_the_latest_readable_checkpoint_is_found_by_step(tmp_path):
    cfg = load_config("toy2d")
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    for step in (900, 100, 200):  # written out of order: the step decides, not the time
        save_checkpoint(tmp_path / "train" / f"step-{step:07d}" / "checkpoint.pt", {
            "config": cfg.to_dict(), "step": step, "w": torch.zeros(3)
        })
    broken = tmp_path / "train" / "step-0000900" / "checkpoint.pt"
    broken.write_bytes(broken.read_bytes()[:40])  # a copy cut short by Ctrl-C
    assert resolve_checkpoint(tmp_path / "train") == broken
    assert latest_step(tmp_path) == 200
    assert latest_step(tmp_path / "nowhere") is None
    assert run_dir_of(broken) == tmp_path.resolve()
    loose = save_checkpoint(tmp_path / "elsewhere" / "mine.pt", {"config": {}, "step": 1})
    assert run_dir_of(loose) == loose.parent.resolve()


def test_older_layouts_are_ordered_by_time(tmp_path):
    (tmp_path / "config.yaml").write_text(dump_config(load_config("toy2d")))
    old = tmp_path / "train" / "checkpoint_2026-01-01" / "checkpoint.pt"
    new = tmp_path / "train" / "checkpoint_2026-01-02" / "checkpoint.pt"
    for i, path in enumerate((old, new)):
        save_checkpoint(path, {"config": {}, "step": i})
        os.utime(path, (1000 + i, 1000 + i))
    assert resolve_checkpoint(tmp_path) == new


def test_a_run_begun_before_the_ema_warm_up_keeps_a_fixed_decay(tmp_path):
    raw = load_config("digits").to_dict()
    del raw["train"]["ema_warmup"]  # written by an earlier loomray
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(LaunchError, match="train.ema_warmup: False -> True"):
        prepare_run_dir(load_config("digits"), tmp_path, resume=True, write=False)
    same = load_config("digits", ["train.ema_warmup=false"])
    assert prepare_run_dir(same, tmp_path, resume=True, write=False)
