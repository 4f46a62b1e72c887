"""Latents without Ray: a tiny random AutoencoderKL written with save_pretrained (the
real loading path) encodes a small image folder; shapes, flipped rows, the scale,
exact resume, posterior draws, decoding, the authors' ae.* layout, bad input."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from loomray.cli import app
from loomray.config import load_config
from loomray.data import build_dataset
from loomray.data.latents import LatentDataset, latent_scale, posterior_seeds, read_latents
from loomray.latents.autoencoder import AutoencoderError, from_ldm, load_autoencoder

IMAGES, SIDE = 6, 16


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_vae):
    """An image folder, two autoencoders saved with save_pretrained, one folder of latents."""
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:02d}.png")
    tiny_vae(0).save_pretrained(root / "vae")
    tiny_vae(1).save_pretrained(root / "other-vae")
    result = encode(root, "latents", "--batch", "4", "--shard-size", "4")
    assert result.exit_code == 0, result.output
    return root


def encode(root, out, *extra, vae="vae"):
    args = ["encode", "--images", str(root / "images"), "--out", str(root / out)]
    args += ["--autoencoder", str(root / vae), "--resolution", str(SIDE), "--workers", "0"]
    return CliRunner().invoke(app, [*args, *extra])


def test_encode_writes_mean_and_std_of_every_row_and_its_mirror(files):
    manifest, mean, std, scale = read_latents(files / "latents")
    assert (manifest.items, manifest.rows, manifest.shards) == (IMAGES, 2 * IMAGES, 3)
    assert mean.shape == std.shape == (2 * IMAGES, 4, 8, 8) and mean.dtype == np.float16
    vae = load_autoencoder(str(files / "vae"))
    folder = load_config(
        "digits",
        [
            "data.name=folder",
            f"data.root={files / 'images'}",
            f"data.resolution={SIDE}",
            "data.channels=3",
            "data.flip=true",
            "model.kind=unet",
            "model.channel_mult=[1]",
        ],
    )
    pixels = build_dataset(folder).batch(np.arange(2 * IMAGES))  # rows N + i mirrored
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    np.testing.assert_allclose(mean, posterior.mean.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(std, posterior.std.numpy(), rtol=2e-3, atol=2e-3)
    assert not np.allclose(mean[IMAGES], mean[0])  # a mirrored latent is its own row
    # the scale: 1 / std of posterior samples over all rows, from the stored values
    m, s = mean.astype(np.float64), std.astype(np.float64)
    var = (m**2 + s**2).mean() - m.mean() ** 2
    assert scale == pytest.approx(1 / np.sqrt(var), rel=1e-9)


def test_a_resumed_encode_writes_the_same_shards(files):
    from loomray.files.shards import shard_path

    cut = files / "cut"
    assert encode(files, "cut", "--batch", "4", "--shard-size", "4").exit_code == 0
    shard_path(cut, 1).unlink()  # lost
    torn = shard_path(cut, 2).read_bytes()
    shard_path(cut, 2).write_bytes(torn[: len(torn) // 3])  # torn under its final name
    kept = shard_path(cut, 0).stat().st_mtime_ns
    result = encode(files, "cut", "--batch", "4", "--shard-size", "4")
    assert result.exit_code == 0 and "encoded 8 rows" in result.output, result.output
    assert shard_path(cut, 0).stat().st_mtime_ns == kept
    a, b = read_latents(files / "latents"), read_latents(cut)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_posterior_draws_are_a_function_of_seed_step_and_row(files):
    data = LatentDataset(files / "latents", "sample", seed=3)
    rows = np.array([5, 0, 11])
    x = data.batch_at(rows, 7)
    assert torch.equal(x, data.batch_at(rows, 7))  # a replay draws the same
    assert torch.equal(x[1], data.batch_at(np.array([0]), 7)[0])  # whatever the batch
    assert not torch.equal(x, data.batch_at(rows, 8))
    assert not torch.equal(x, LatentDataset(files / "latents", "sample", 4).batch_at(rows, 7))
    mean = LatentDataset(files / "latents", "mean")
    assert torch.equal(mean.batch_at(rows, 7), mean.batch(rows))
    fixed = LatentDataset(files / "latents", "mean", scale=0.18215)  # data.latent_scale
    assert torch.allclose(fixed.batch(rows), mean.batch(rows) / mean.scale * 0.18215)
    seeds = posterior_seeds(0, np.arange(1000)[:, None], np.arange(1000)[None, :])
    assert len(np.unique(seeds)) == seeds.size and seeds.min() >= 0
    # the scaled data set has unit variance in expectation
    draws = torch.cat([data.batch_at(np.arange(len(data)), s) for s in range(50)])
    assert float(draws.std()) == pytest.approx(1.0, rel=0.05)
    assert latent_scale([{"n": 4, "sum": 0.0, "sq": 4.0}]) == 1.0


def _ldm_layout(vae) -> dict:
    """A diffusers AutoencoderKL's weights under the original LDM names (as the authors'
    ae.* and SD's first_stage_model.* hold them): the inverse of diffusers' converter."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        k = key
        for side in ("encoder", "decoder"):
            k = k.replace(f"{side}.conv_norm_out", f"{side}.norm_out")
            k = re.sub(
                rf"{side}\.mid_block\.resnets\.(\d)",
                lambda m, side=side: f"{side}.mid.block_{int(m.group(1)) + 1}",
                k,
            )
            k = k.replace(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", k)
        k = re.sub(
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.",
            k,
        )
        k = re.sub(r"(decoder\.up\.\d+)\.resnets", r"\1.block", k)
        k = re.sub(r"(decoder\.up\.\d+)\.upsamplers\.0", r"\1.upsample", k)
        k = k.replace("conv_shortcut", "nin_shortcut")
        k = k.replace("attn_1.group_norm", "attn_1.norm").replace(
            "attn_1.to_out.0", "attn_1.proj_out"
        )
        k = re.sub(r"attn_1\.to_([qkv])", r"attn_1.\1", k)
        if ".attn_1." in k and k.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention uses 1x1 convolutions
        out[k] = value
    return out


def test_the_authors_ae_weights_convert_to_diffusers(tiny_vae):
    vae = tiny_vae(2)
    ae = {f"ae.{k}": v for k, v in _ldm_layout(vae).items()}
    assert "ae.encoder.down.1.block.0.conv1.weight" in ae
    assert "ae.decoder.up.0.block.0.conv1.weight" in ae
    ae["ae.scale"] = torch.tensor([4.5])
    converted = from_ldm(ae)
    x = torch.rand(2, 3, SIDE, SIDE) * 2 - 1
    with torch.no_grad():
        a, b = vae.encode(x).latent_dist.mean, converted.encode(x).latent_dist.mean
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(vae.decode(a).sample, converted.decode(a).sample, atol=1e-6)
    from loomray.train.official import convert_autoencoder

    _, scale = convert_autoencoder({k[3:]: v for k, v in ae.items()})
    assert scale == pytest.approx(1 / 4.5)
    ae.pop("ae.quant_conv.weight")
    with pytest.raises(AutoencoderError, match="do not convert"):
        from_ldm(ae)


def test_sample_decodes_latents_to_images(files, tmp_path):
    from loomray.checkpoint import save_checkpoint
    from loomray.models import build_model

    cfg = load_config(
        "ffhq256",
        [
            f"data.root={files / 'latents'}",
            "data.resolution=8",
            "model.kind=mlp",
            "model.hidden=32",
            "train.workers=1",
            "train.gpus_per_worker=0",
        ],
    )
    model = build_model(cfg)
    save_checkpoint(
        tmp_path / "m.pt", {"config": cfg.to_dict(), "step": 0, "ema": model.state_dict()}
    )
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--ckpt",
            str(tmp_path / "m.pt"),
            "--n",
            "4",
            "--method",
            "euler-2",
            "--out",
            str(out),
            "--scale",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as grid:
        assert grid.mode == "RGB" and grid.width >= 2 * SIDE  # decoded 16x16 images, not latents
    from loomray.checkpoint import load_checkpoint
    from loomray.data.pairs import PairsError
    from loomray.reflow.generate import plan_pairs

    with pytest.raises(PairsError, match="a latent model makes latents"):
        plan_pairs(load_checkpoint(tmp_path / "m.pt"), 10)


def test_encode_bad_input_is_one_sentence(files, tmp_path):
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (8, 16)).save(tmp_path / "mixed" / "b.png")
    cases = [
        (["--autoencoder", str(tmp_path / "nope")], "does not exist"),
        (["--autoencoder", str(files / "images")], "has no config.json"),
        (["--autoencoder", str(files / "other-vae")], "other latents (autoencoder_fingerprint"),
        (["--resolution", "8"], "holds other latents"),
        (["--batch", "0"], "--batch must be at least 1, got 0"),
        (["--channels", "1"], "cannot encode 1x16x16 images"),
        (["--images", str(tmp_path / "mixed")], "holds images of different sizes"),
        (["--resolution", str(4 * SIDE)], f"are {SIDE}x{SIDE}, smaller than --resolution"),
    ]
    before = json.loads((files / "latents" / "latents.json").read_text())
    for extra, message in cases:
        args = ["encode", "--images", str(files / "images"), "--out", str(files / "latents")]
        args += ["--autoencoder", str(files / "vae"), "--resolution", str(SIDE), "--workers", "0"]
        merged = dict(zip(args[1::2], args[2::2], strict=True))
        merged |= dict(zip(extra[::2], extra[1::2], strict=True))
        result = CliRunner().invoke(app, ["encode", *[x for kv in merged.items() for x in kv]])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
    assert json.loads((files / "latents" / "latents.json").read_text()) == before


def test_bench_latents_times_both_ways():
    args = ["bench", "latents", "--config", "ffhq256", "model.kind=mlp", "model.hidden=32"]
    args += ["--resolution", "16", "--images", "16", "--batch", "8", "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "pre-encoded" in text and "encode every batch" in text
    assert re.search(r"pre-encoded / encode every batch: \d+\.\d\dx", text), text


def test_a_single_ldm_file_loads_as_the_same_autoencoder(tiny_vae, tmp_path):
    from safetensors.torch import save_file

    vae = tiny_vae(3)
    state = {f"first_stage_model.{k}": v.contiguous() for k, v in _ldm_layout(vae).items()}
    save_file(state, tmp_path / "vae.safetensors")
    torch.save({"state_dict": state}, tmp_path / "vae.ckpt")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean
        for name in ("vae.safetensors", "vae.ckpt"):
            got = load_autoencoder(str(tmp_path / name)).encode(x).latent_dist.mean
            assert torch.allclose(got, want, atol=1e-6), name


def test_a_missing_local_looking_autoencoder_fails_without_asking_the_hub(tmp_path, monkeypatch):
    """models/sd-vae-ft-mse looks like a hub id; with a models/ folder here it is a
    local path that is missing, said at once (offline, the hub costs ~30 s of retries)."""
    from diffusers import AutoencoderKL

    from loomray.latents.autoencoder import AutoencoderError, load_autoencoder

    def hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", hub)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AutoencoderError, match="autoencoder models/sd-vae-ft-mse does not exist"):
        load_autoencoder("models/sd-vae-ft-mse")
