"""Reflow pairs on disk: seeds and images round-trip, shards resume exactly, a torn
shard is never taken for finished, and a folder of other pairs is refused."""

from pathlib import Path

import numpy as np
import pytest
import torch

from loomray.checkpoint import load_checkpoint, save_checkpoint
from loomray.config import ConfigError, load_config
from loomray.coupling import make_coupling, noise_from_seeds, step_rng
from loomray.data import DatasetError, build_dataset
from loomray.data.pairs import (
    PairsDataset,
    PairsError,
    finished_shards,
    open_folder,
    read_manifest,
    read_shard,
)
from loomray.evaluation.evaluator import to_uint8
from loomray.files.shards import shard_path
from loomray.flow.sampling import sample
from loomray.models import build_model
from loomray.reflow.generate import generate_pairs, make_shard, plan_pairs

TINY = ["model.hidden=32", "model.layers=2", "train.workers=1"]


def _source(tmp: Path, seed: int = 0) -> tuple[dict, torch.nn.Module]:
    cfg = load_config("digits", TINY)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    path = tmp / f"src{seed}" / "checkpoint.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "step": 7, "ema": model.state_dict()})
    return load_checkpoint(path), model


def _shards(folder: Path, manifest) -> list[tuple[np.ndarray, np.ndarray]]:
    return [read_shard(folder, manifest, i) for i in range(manifest.shards)]


def test_pairs_round_trip(tmp_path):
    payload, model = _source(tmp_path)
    manifest = plan_pairs(payload, 250, "euler-3", batch=50, shard_size=100)
    assert manifest.shards == 3 and manifest.shape == (1, 8, 8)
    made = generate_pairs(payload, tmp_path / "pairs", manifest, 0)
    assert made.made == 3 and made.rows_made == 250
    pairs = PairsDataset(tmp_path / "pairs")
    assert len(pairs) == 250 and pairs.data.dtype == torch.uint8
    # The seed of a pair gives its noise, and its image is the sampler's output of that
    # noise (in its batch of 50), rounded to uint8.
    rows = np.arange(150, 200)
    z = noise_from_seeds(pairs.seeds[rows], manifest.shape)
    expected = to_uint8(sample(model, torch.from_numpy(z), "euler-3").x)
    assert torch.equal(pairs.data[torch.from_numpy(rows)], expected)
    assert len(set(pairs.seeds.tolist())) == 250
    # the pairs coupling trains each row against exactly that noise
    coupling = make_coupling("pairs", seeds=pairs.seeds)
    x = pairs.batch(rows[::-1].copy()).numpy()
    noise, stats = coupling.step(rows[::-1].copy(), x, step_rng(0, 3))
    assert np.array_equal(noise, z[::-1])
    assert np.array_equal(stats.seeds, pairs.seeds[rows[::-1]])
    seeds, _ = coupling.replay(rows[::-1].copy(), stats.perm, step_rng(0, 3))
    assert np.array_equal(seeds, stats.seeds)


def test_dopri5_pairs_are_its_samples(tmp_path):
    payload, model = _source(tmp_path)
    manifest = plan_pairs(payload, 40, "dopri5", batch=20)
    seeds, images, nfe = make_shard(model, manifest, 0)
    result = sample(model, torch.from_numpy(noise_from_seeds(seeds[20:], manifest.shape)), "dopri5")
    assert np.array_equal(images[20:], to_uint8(result.x).numpy())
    assert nfe > 6


def test_a_resumed_generation_makes_the_same_shards(tmp_path):
    payload, model = _source(tmp_path)
    manifest = plan_pairs(payload, 300, "midpoint-2", batch=50, shard_size=100)
    whole = tmp_path / "whole"
    generate_pairs(payload, whole, manifest, 0)
    cut = tmp_path / "cut"
    open_folder(cut, manifest)
    # shard 0 finished; shard 1 cut mid-write (a temporary file), shard 2 torn under its
    # final name (e.g. a disk that filled up): neither counts as finished
    from loomray.data.pairs import write_shard

    write_shard(cut, manifest, 0, *make_shard(model, manifest, 0))
    (cut / ".shard-00001.parquet.tmp-123").write_bytes(b"PAR1 half")
    good = shard_path(whole, 2).read_bytes()
    shard_path(cut, 2).write_bytes(good[: len(good) // 2])
    assert finished_shards(cut, manifest) == {0}
    before = shard_path(cut, 0).stat().st_mtime_ns
    made = generate_pairs(payload, cut, manifest, 0)
    assert made.made == 2  # shard 0 was kept, not made again
    assert shard_path(cut, 0).stat().st_mtime_ns == before
    for (s1, i1), (s2, i2) in zip(_shards(whole, manifest), _shards(cut, manifest), strict=True):
        assert np.array_equal(s1, s2) and np.array_equal(i1, i2)


def test_a_folder_of_other_pairs_is_refused(tmp_path):
    payload, _ = _source(tmp_path)
    other, _ = _source(tmp_path, seed=1)
    folder = tmp_path / "pairs"
    open_folder(folder, plan_pairs(payload, 100, "euler-2", batch=50))
    assert open_folder(folder, plan_pairs(payload, 100, "euler-2", batch=50))  # the same
    for manifest, what in [
        (plan_pairs(other, 100, "euler-2", batch=50), "source_fingerprint"),
        (plan_pairs(payload, 100, "euler-4", batch=50), "sampler"),
        (plan_pairs(payload, 200, "euler-2", batch=50), "pairs"),
    ]:
        with pytest.raises(PairsError, match=f"holds other pairs \\({what}"):
            open_folder(folder, manifest)
    assert read_manifest(folder).sampler == "euler-2"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(PairsError, match="is not empty and holds no pairs"):
        open_folder(tmp_path / "notes", plan_pairs(payload, 100, "euler-2"))


def test_requests_that_cannot_work(tmp_path):
    payload, _ = _source(tmp_path)
    with pytest.raises(PairsError, match="multiple of --batch"):
        plan_pairs(payload, 100, "euler-2", batch=30, shard_size=50)
    with pytest.raises(PairsError, match="unknown sampler"):
        plan_pairs(payload, 100, "rk45")
    toy = load_config("toy2d")
    save_checkpoint(
        tmp_path / "toy.pt",
        {"config": toy.to_dict(), "step": 0, "ema": build_model(toy).state_dict()},
    )
    with pytest.raises(PairsError, match="reflow pairs are images"):
        plan_pairs(load_checkpoint(tmp_path / "toy.pt"), 100)


def test_pairs_dataset_through_the_config(tmp_path):
    payload, model = _source(tmp_path)
    manifest = plan_pairs(payload, 200, "euler-1", batch=100, shard_size=100)
    folder = tmp_path / "pairs"
    open_folder(folder, manifest)
    from loomray.data.pairs import write_shard

    write_shard(folder, manifest, 0, *make_shard(model, manifest, 0))
    pairs = ["data.name=pairs", f"data.root={folder}", "coupling.kind=pairs"]
    cfg = load_config("digits-reflow", [*pairs, "train.batch=50"])
    with pytest.raises(DatasetError, match="is incomplete \\(1 of 2 shards\\)"):
        build_dataset(cfg)
    generate_pairs(payload, folder, manifest, 0)
    assert len(build_dataset(cfg)) == 200
    with pytest.raises(DatasetError, match="holds images of shape"):
        build_dataset(load_config("digits-reflow", [*pairs, "data.resolution=16"]))
    with pytest.raises(ConfigError, match="data.name=pairs goes with coupling.kind=pairs"):
        load_config("digits", ["coupling.kind=pairs"])
    with pytest.raises(ConfigError, match="data.flip must be false for pairs"):
        load_config("digits-reflow", ["data.flip=true"])


def test_the_same_weights_elsewhere_make_the_same_pairs(tmp_path):
    import shutil

    payload, _ = _source(tmp_path)
    manifest = plan_pairs(payload, 100, "euler-2", batch=50)
    generate_pairs(payload, tmp_path / "pairs", manifest, 0)
    shutil.copytree(tmp_path / "src0", tmp_path / "copied")
    copied = load_checkpoint(tmp_path / "copied")
    moved = plan_pairs(copied, 100, "euler-2", batch=50)
    assert moved.source != manifest.source and moved.digest == manifest.digest
    assert generate_pairs(copied, tmp_path / "pairs", moved, 0).made == 0
    assert len(PairsDataset(tmp_path / "pairs")) == 100
