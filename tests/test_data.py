import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from loomray.config import load_config
from loomray.data import BatchPlan, DatasetError, build_dataset, iterate_batches


def write_fake_cifar(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        batches[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0] * n_per_batch}, f)
    return batches


def test_cifar10_python_batches(tmp_path):
    batches = write_fake_cifar(tmp_path)
    cfg = load_config("cifar10", [f"data.root={tmp_path}", "train.batch=8", "train.workers=1"])
    ds = build_dataset(cfg)
    assert len(ds) == 2 * 20  # 5 batches of 4, plus flips
    x = ds.batch(np.array([0, 20, 19]))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    first = batches["data_batch_1"][0].reshape(3, 32, 32).astype(np.float32) / 127.5 - 1
    assert np.allclose(x[0].numpy(), first, atol=1e-6)
    assert np.allclose(x[1].numpy(), first[:, :, ::-1], atol=1e-6)  # row N is image 0 mirrored
    last = batches["data_batch_5"][3].reshape(3, 32, 32).astype(np.float32) / 127.5 - 1
    assert np.allclose(x[2].numpy(), last, atol=1e-6)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    write_fake_cifar(tmp_path)
    evil = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    evil.write_bytes(pickle.dumps({"data": Exploit()}))
    cfg = load_config("cifar10", [f"data.root={tmp_path}", "train.batch=8", "train.workers=1"])
    with pytest.raises(DatasetError, match="data_batch_3.*not allowed"):
        build_dataset(cfg)


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_missing_says_where_and_how(tmp_path):
    cfg = load_config("cifar10", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="cifar-10-batches-py.*data.download=true"):
        build_dataset(cfg)


def test_npz_batches(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (5, 3 * 32 * 32), dtype=np.uint8) for _ in range(2)]
    for i, a in enumerate(arrays):
        np.savez(tmp_path / f"train_data_batch_{i + 1}.npz", data=a, labels=np.zeros(5))
    cfg = load_config("imagenet32", [f"data.root={tmp_path}", "train.batch=8", "train.workers=1"])
    ds = build_dataset(cfg)
    assert len(ds) == 20  # 10 images and their mirrors (the preset flips, as the authors)
    x = ds.batch(np.array([7]))
    assert np.allclose(x[0].numpy(), arrays[1][2].reshape(3, 32, 32) / 127.5 - 1, atol=1e-6)
    np.savez(tmp_path / "train_data_batch_3.npz", data=np.zeros((2, 100), np.uint8))
    with pytest.raises(DatasetError, match="expected 3x32x32"):
        build_dataset(cfg)


def test_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(2)
    for i in range(6):
        arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # not square: center crop
        Image.fromarray(arr).save(tmp_path / "a" / f"img{i}.png")
    cfg = load_config(
        "imagenet64",
        [f"data.root={tmp_path}", "train.batch=4", "train.workers=1", "data.flip=true"],
    )
    ds = build_dataset(cfg)
    assert len(ds) == 12
    x = ds.batch(np.array([0, 6]))
    assert x.shape == (2, 3, 64, 64)
    assert torch.allclose(x[1], torch.flip(x[0], dims=[-1]))
    # a prefetching loader gives the same batches as the in-process path
    plan = BatchPlan(len(ds), 4, seed=0)
    direct = list(iterate_batches(ds, plan, 0, 3))
    loaded = list(iterate_batches(ds, plan, 0, 3, workers=2))
    for (s1, r1, x1), (s2, r2, x2) in zip(direct, loaded, strict=True):
        assert s1 == s2 and np.array_equal(r1, r2) and torch.equal(x1, x2)


def test_empty_folder_and_broken_image(tmp_path):
    cfg = load_config("imagenet32", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="no image files.*npz"):
        build_dataset(cfg)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    ds = build_dataset(
        load_config("imagenet32", [f"data.root={tmp_path}", "train.batch=1", "train.workers=1"])
    )
    with pytest.raises(DatasetError, match="broken.png cannot be read"):
        ds.batch(np.array([0]))
    with pytest.raises(DatasetError, match="not a folder"):
        build_dataset(load_config("imagenet32", [f"data.root={tmp_path / 'nope'}"]))


def test_digits_and_toy2d_offline():
    ds = build_dataset(load_config("digits"))
    assert len(ds) == 1797
    x = ds.batch(np.arange(10))
    assert x.shape == (10, 1, 8, 8) and x.min() == -1 and x.max() == 1
    toy = build_dataset(load_config("toy2d"))
    pts = toy.batch(np.arange(4096))
    assert pts.shape == (4096, 2)
    assert 0.5 < pts.std() < 2.0  # about the spread of the N(0, I) source


def test_missing_latents_say_how_to_make_them(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder; make it with loomray encode"):
        build_dataset(load_config("ffhq256", [f"data.root={tmp_path / 'none'}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is not a latents folder: it has no latents.json"):
        build_dataset(load_config("ffhq256", [f"data.root={tmp_path / 'empty'}"]))


def test_batch_plan_is_a_function_of_seed_and_step():
    plan = BatchPlan(rows=50, batch=8, seed=3)
    epoch = np.concatenate([plan.global_rows(s) for s in range(6)])
    assert len(np.unique(epoch)) == 48  # no row twice within an epoch
    again = BatchPlan(rows=50, batch=8, seed=3)
    assert np.array_equal(again.global_rows(13), plan.global_rows(13))
    assert np.array_equal(again.global_rows(2), plan.global_rows(2))
    ranks = [plan.local_rows(4, r, 2) for r in range(2)]
    assert np.array_equal(np.concatenate(ranks), plan.global_rows(4))
    with pytest.raises(DatasetError):
        BatchPlan(rows=4, batch=8, seed=0)


def test_synthetic_images_for_speed_runs():
    cfg = load_config("cifar10", ["data.name=synthetic", "data.limit=300"])
    ds = build_dataset(cfg)
    assert len(ds) == 600  # flips included
    x = ds.batch(np.array([0, 300]))
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x[1], torch.flip(x[0], dims=[-1]))
