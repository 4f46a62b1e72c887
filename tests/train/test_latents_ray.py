"""Latents on a real local Ray: 2 encoding workers write what one process does, and
LOOM trains on latents through Ray Train and the coupling service, its samples decoded
to images for grids and FID (Inception with random weights: the real code path)."""

import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from loomray.cluster.connect import connect
from loomray.config import load_config
from loomray.data.latents import read_latents
from loomray.latents.autoencoder import load_autoencoder
from loomray.latents.encode import encode_latents, plan_latents
from loomray.train.launch import launch

SIDE = 16


@pytest.fixture(scope="module")
def ray_with_fid(random_inception_weights):
    """Ray started with LOOMRAY_FID_WEIGHTS set, so every worker scores with those."""
    import ray

    old = os.environ.get("LOOMRAY_FID_WEIGHTS")
    os.environ["LOOMRAY_FID_WEIGHTS"] = str(random_inception_weights)
    connect(None, quiet=True)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("LOOMRAY_FID_WEIGHTS")
    else:
        os.environ["LOOMRAY_FID_WEIGHTS"] = old


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_vae):
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    for i in range(8):
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
    tiny_vae(0).save_pretrained(root / "vae")
    vae = load_autoencoder(str(root / "vae"))
    images = load_config(
        "digits",
        ["data.name=folder", f"data.root={root / 'images'}", f"data.resolution={SIDE}",
         "data.channels=3", "data.flip=true", "model.kind=unet", "model.channel_mult=[1]"],
    )  # fmt: skip
    manifest = plan_latents(images, str(root / "vae"), vae, batch=4, shard_size=4)
    encode_latents(vae, images, root / "latents", manifest, workers=0)
    return root, vae, images, manifest


def test_two_ray_workers_encode_what_one_process_does(ray_with_fid, encoded):
    root, vae, images, manifest = encoded
    made = encode_latents(vae, images, root / "two", manifest, workers=2)
    assert made.made == 4 and made.rows_made == 16
    a, b = read_latents(root / "latents"), read_latents(root / "two")
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_loom_trains_on_latents_and_scores_decoded_images(ray_with_fid, encoded, tmp_path):
    root = encoded[0]
    cfg = load_config(
        "ffhq256",
        [f"data.root={root / 'latents'}", "data.resolution=8", "data.loader_workers=0",
         "model.kind=mlp", "model.hidden=64", "train.workers=2", "train.gpus_per_worker=0",
         "train.cpus_per_worker=1", "coupling.service_cpus=0", "train.batch=8",
         "train.steps=20", "train.log_every=5", "train.ckpt_every=100", "train.warmup=5",
         "train.sample_every=0", "eval.methods=[euler-1]", "eval.n=16", "eval.batch=8",
         "eval.every=0"],
    )  # fmt: skip
    result = launch(cfg, tmp_path / "run", progress=False)
    assert result.step == 20 and result.service["kind"] == "loom"
    assert result.service["solves"] == 20 and np.isfinite(result.metrics["fid/euler-1"])
    (grid,) = (tmp_path / "run" / "samples").glob("*euler-1.png")
    with Image.open(grid) as img:
        assert img.mode == "RGB"  # decoded images, not 4-channel latents
    app = __import__("loomray.cli").cli.app
    args = ["evaluate", "--ckpt", str(tmp_path / "run"), "--methods", "euler-1", "--n", "16"]
    scored = CliRunner().invoke(app, args)
    assert scored.exit_code == 0, scored.output
    assert f"{result.metrics['fid/euler-1']:.4f}" in scored.output  # the same figure
