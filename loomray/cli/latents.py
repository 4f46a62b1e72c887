"""`loomray encode`: images to latent shards, for latent-space training."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from loomray.cli.common import (
    Table,
    app,
    bench_app,
    console,
    fail,
    gpus_or_fail,
    locked_or_fail,
    plural,
    shard_progress,
)

SD_SCALE = 0.18215  # Stable Diffusion's latent factor for its KL-f8 autoencoder

def _images_config(data: str, images: str, resolution: int, channels: int, flip: bool, limit):
    from loomray.config import ConfigError, config_from_dict

    raw = {"name": data, "root": str(Path(images).expanduser().resolve()), "flip": flip}
    raw |= {"resolution": resolution, "channels": channels, "limit": limit}
    try:
        return config_from_dict({"name": f"{data}-images", "data": raw})
    except ConfigError as err:
        fail(str(err))


def one_size(root: Path) -> tuple[int, int] | None:
    """The size of an image folder's images (read from the headers); refuse a folder
    whose images are not all of one size: loomray would crop and resize them silently."""
    from PIL import Image

    from loomray.data import IMAGE_SUFFIXES, DatasetError

    first = None
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as img:
                size = img.size
        except OSError as err:
            raise DatasetError(f"image {path} cannot be read: {err}") from err
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise DatasetError(
                f"image folder {root} holds images of different sizes ({first[0].name} is "
                f"{first[1][0]}x{first[1][1]}, {path.name} {size[0]}x{size[1]}); bring them "
                "to one size first"
            )
    return first[1] if first else None


@app.command("encode")
def encode_cmd(
    images: str = typer.Option(..., help="The image data: a folder (or data.root of --data)."),
    out: str = typer.Option(..., help="Latents folder (made, or resumed when it holds these)."),
    autoencoder: str = typer.Option(
        ...,
        help="diffusers AutoencoderKL: a save_pretrained folder, an LDM .ckpt/.safetensors "
        "file (e.g. vae-ft-mse-840000-ema-pruned.ckpt), or a hub id (needs internet).",
    ),
    data: str = typer.Option("folder", help="Image dataset kind: folder, cifar10, imagenet64..."),
    resolution: int = typer.Option(256, help="Image side in pixels."),
    channels: int = typer.Option(3, help="Image channels."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Also encode mirrored images."),
    limit: int = typer.Option(None, help="Encode only the first N images."),
    upsample: bool = typer.Option(
        False, "--upsample", help="Allow images smaller than --resolution (scaled up)."
    ),
    batch: int = typer.Option(32, help="Images per autoencoder call."),
    shard_size: int = typer.Option(None, help="Rows per shard (default ~2048, whole batches)."),
    workers: int = typer.Option(1, help="Ray workers that share the shards (0: in this process)."),
    gpus: bool = typer.Option(False, "--gpus/--cpu", help="One GPU per worker."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
) -> None:
    """Encode an image data set into latent shards (posterior mean and std, resumable)."""
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data import DatasetError
    from loomray.data.latents import latents_folder
    from loomray.files.shards import ShardsError
    from loomray.latents.autoencoder import AutoencoderError, load_autoencoder
    from loomray.latents.encode import plan_latents

    if workers < 0:
        fail(f"--workers must be at least 0, got {workers}")
    cfg = _images_config(data, images, resolution, channels, flip, limit)
    folder = Path(out).expanduser()
    try:
        if data == "folder" and Path(images).expanduser().is_dir():
            size = one_size(Path(images).expanduser())
            if size and min(size) < resolution and not upsample:
                raise DatasetError(
                    f"the images in {images} are {size[0]}x{size[1]}, smaller than "
                    f"--resolution {resolution}: encoding would scale them up; pass "
                    f"--resolution {min(size)}, or --upsample to scale them up"
                )
        vae = load_autoencoder(autoencoder)
        local = Path(autoencoder).expanduser()
        spec = str(local.resolve()) if local.exists() else autoencoder  # else a hub id
        manifest = plan_latents(cfg, spec, vae, batch, shard_size)
        shards = latents_folder(folder, manifest)
        shards.check()
        if workers:
            connect(address, quiet=True)
    except (AutoencoderError, DatasetError, ShardsError, LaunchError) as err:
        fail(str(err))
    if workers:
        gpus_or_fail(gpus)
    again = ["loomray", "encode", "--images", images, "--out", out]
    again += ["--autoencoder", autoencoder, "--data", data]
    again += ["--resolution", str(resolution), "--channels", str(channels)]
    again += ["--flip" if flip else "--no-flip", "--batch", str(manifest.batch)]
    again += ["--shard-size", str(manifest.shard_size), "--workers", str(workers)]
    again += [*(["--limit", str(limit)] if limit else []), *(["--gpus"] if gpus else [])]
    again += ["--upsample"] if upsample else []
    again += [*(["--address", address] if address else [])]
    with locked_or_fail(folder, "latents folder"):
        _encode(vae, cfg, folder, shards, manifest, workers, gpus, again)
    _report_scale(folder, manifest)


def _encode(vae, cfg, folder, shards, manifest, workers, gpus, again) -> None:
    """The missing shards, with a progress bar; Ctrl-C keeps the finished ones."""
    from loomray.latents.encode import encode_latents

    done = shards.finished(manifest.shards) if folder.is_dir() else set()
    if len(done) < manifest.shards:
        bar, update = shard_progress("rows", manifest.rows)
        try:
            with bar:
                made = encode_latents(vae, cfg, folder, manifest, workers, gpus, progress=update)
        except KeyboardInterrupt:
            console.print(
                f"interrupted; finished shards are kept in {folder}. Continue with:\n  "
                + shlex.join(again),
                markup=False,
            )
            raise typer.Exit(code=130) from None
        console.print(
            f"encoded {made.rows_made} rows in {made.seconds:.1f} s on "
            f"{plural(max(workers, 1), 'worker')} ({made.rows_per_s:.1f} rows/s)",
            markup=False,
        )


def _report_scale(folder: Path, manifest) -> None:
    import numpy as np

    from loomray.data.latents import latents_folder, latents_info

    _, scale = latents_info(folder)  # from the shards' sums: no latents read
    first = latents_folder(folder, manifest).read(0)
    rng = np.random.default_rng(0)
    b = min(manifest.batch, len(first["mean"]))
    m, s = first["mean"][:b].astype(np.float64), first["std"][:b].astype(np.float64)
    first_std = float((m + s * rng.standard_normal(m.shape)).std())
    console.print(
        f"{manifest.rows} rows ({manifest.items} images"
        f"{', and mirrored' if manifest.rows > manifest.items else ''}) of latents "
        f"{'x'.join(map(str, manifest.latent_shape))} in {folder}\n"
        f"latent scale 1/std = {scale:.5f} (std {1 / scale:.4f} over the data set; Stable "
        f"Diffusion uses {SD_SCALE}, std {1 / SD_SCALE:.4f}; the first batch of {b} alone "
        f"gives std {first_std:.4f}, the authors' estimate)",
        markup=False,
    )


@bench_app.command("latents")
def bench_latents_cmd(
    config: str = typer.Option("ffhq256", "--config", "-c", help="Latent preset or YAML."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    autoencoder: str = typer.Option(
        "tiny", help="tiny (a random f8 AutoencoderKL that a CPU runs), or one to load."
    ),
    resolution: int = typer.Option(64, help="Image side in pixels."),
    images: int = typer.Option(256, help="Random images in the data set."),
    batch: int = typer.Option(32, help="Batch per step."),
    steps: int = typer.Option(20, help="Timed steps per mode."),
) -> None:
    """Training steps/s on pre-encoded latents vs encoding every batch (the authors' way)."""
    from loomray.bench.latents import bench_latents, tiny_autoencoder
    from loomray.cli.common import _config_or_fail
    from loomray.config import ConfigError, config_from_dict
    from loomray.data import DatasetError
    from loomray.latents.autoencoder import AutoencoderError, load_autoencoder

    if min(resolution, images, batch, steps) < 1 or batch > images:
        fail("--resolution, --images, --batch and --steps must be positive, --batch <= --images")
    cfg = _config_or_fail(config, list(overrides or []))
    try:
        vae = tiny_autoencoder() if autoencoder == "tiny" else load_autoencoder(autoencoder)
        data = {"name": "synthetic", "resolution": resolution, "channels": 3, "limit": images}
        pixels = config_from_dict({"data": {**data, "flip": False}, "train": {"batch": batch}})
        with console.status(f"{cfg.name}: {steps} steps of {batch}, two ways..."):
            runs, encode_s, scale = bench_latents(cfg, pixels, vae, steps, batch)
    except (AutoencoderError, DatasetError, ConfigError) as err:
        fail(str(err))
    table = Table(title=f"{cfg.name} on {resolution}x{resolution} images, batch {batch}")
    for col in ("latents", "steps/s", "ms/step"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r.mode, f"{r.steps_per_s:.2f}", f"{1e3 / r.steps_per_s:.1f}")
    console.print(table)
    console.print(
        f"pre-encoded / encode every batch: {runs[0].steps_per_s / runs[1].steps_per_s:.2f}x; "
        f"encoding the {images} images once took {encode_s:.1f} s (latent scale {scale:.4f})",
        markup=False,
    )
