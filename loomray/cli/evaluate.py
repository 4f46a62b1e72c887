"""`loomray evaluate` and `loomray sample`: score and draw from a trained model."""

from __future__ import annotations

import typer

from loomray.cli.common import (
    PRECISION_HELP,
    Table,
    _device_or_fail,
    _evaluate_on_workers,
    _path_or_fail,
    app,
    console,
    fail,
    locked_or_fail,
    plural,
)


@app.command("sample")
def sample_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    method: str = typer.Option(
        "midpoint-2", help="Sampler: euler-N, midpoint-N, heun-N, rk4-N (N steps) or dopri5."
    ),
    n: int = typer.Option(64, help="Number of samples."),
    out: str = typer.Option(
        "samples.png",
        help="A .png (grid, or scatter for toy2d; up to 4096 samples) or a .npz (the "
        "samples as an array, any number).",
    ),
    seed: int = typer.Option(0, help="Noise seed."),
    scale: int = typer.Option(
        None, help="Upscale each image N times in the grid (default: to at least 32 pixels)."
    ),
    precision: str = typer.Option(None, help=PRECISION_HELP),
) -> None:
    """Draw samples from a checkpoint's EMA model and write them as an image."""
    import torch

    from loomray.checkpoint import CheckpointError, ema_model_of, load_checkpoint
    from loomray.coupling import noise_from_seeds
    from loomray.data import DatasetError
    from loomray.evaluation.evaluate import sample_eval, with_precision
    from loomray.evaluation.images import GRID_MOST, save_sample_array, save_samples
    from loomray.flow.sampling import parse_method
    from loomray.latents.autoencoder import AutoencoderError
    from loomray.latents.decode import to_images
    from loomray.paths import file_to_write

    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    if scale is not None and not 1 <= scale <= 64:
        fail(f"--scale must be in 1..64, got {scale}")
    out = _path_or_fail(file_to_write, out, "--out")
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npz"):
        fail(
            f"--out {out} must end in .png (an image of the samples) or .npz (the samples "
            f"as an array), not {suffix or 'without an extension'}"
        )
    if suffix == ".png" and n > GRID_MOST:
        fail(
            f"--n {n} samples make too large an image (at most {GRID_MOST} in a .png); "
            f"--out {out.with_suffix('.npz')} writes them as an array"
        )
    try:
        parse_method(method)
        cfg, model = ema_model_of(load_checkpoint(ckpt))
        cfg = with_precision(cfg, precision)
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    z = torch.from_numpy(
        noise_from_seeds(seed * 1_000_003 + torch.arange(n).numpy(), cfg.sample_shape)
    )
    result = sample_eval(model, cfg, z, method)
    title = f"{cfg.name} {result.method} ({result.nfe} NFE)"
    try:
        images = to_images(cfg, result.x)  # a latent model's samples, decoded
    except (AutoencoderError, DatasetError) as err:
        fail(str(err))
    if suffix == ".npz":
        path = save_sample_array(images, out, seed)
    else:
        path = save_samples(images, out, title=title, scale=scale)
    console.print(f"wrote {n} samples ({result.method}, {result.nfe} NFE) to {path}", markup=False)


@app.command("evaluate")
def evaluate_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory."),
    methods: str = typer.Option(
        None,
        help="Comma-separated samplers (default: the run's "
        "eval.methods), e.g. midpoint-1,midpoint-2,midpoint-4,dopri5.",
    ),
    n: int = typer.Option(None, help="Samples per method (default: the run's eval.n)."),
    ref: str = typer.Option("train", help="Reference split: train or test."),
    fid_weights: str = typer.Option(
        None,
        help="torch-fidelity Inception weights (.pth); "
        "default $LOOMRAY_FID_WEIGHTS, else downloaded.",
    ),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    workers: int = typer.Option(
        1, help="Ray workers that share the sampling (one GPU each with --gpus, else one CPU)."
    ),
    gpus: bool = typer.Option(False, "--gpus/--cpu", help="Workers on GPUs (with --workers)."),
    address: str = typer.Option(None, help="Ray cluster for --workers (default: a local Ray)."),
    protocol: str = typer.Option(
        None,
        help="FID protocol: standard (torch-fidelity, as most papers) or paper (the LOOM-CFM "
        "authors'; docs/reproduce.md). Default: the run's eval.protocol.",
    ),
    precision: str = typer.Option(None, help=PRECISION_HELP),
) -> None:
    """FID (or energy distance for toy2d) and actual NFE per sampler for a checkpoint."""

    from loomray.checkpoint import run_dir_of
    from loomray.evaluation.evaluate import method_names, read_results, write_results
    from loomray.evaluation.evaluator import make_evaluator
    from loomray.evaluation.weights import EvaluationError, weights_state

    if fid_weights:  # refused before anything starts when it is not plain tensors
        try:
            weights_state(fid_weights, protocol or "standard")
        except EvaluationError as err:
            fail(f"--fid-weights: {err}")
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    dev = _device_or_fail(device)
    errors = _evaluation_errors()
    try:
        payload, cfg, model = _checkpoint_to_evaluate(ckpt, precision)
        names = method_names(methods, cfg)
        count = n if n is not None else cfg.eval.n
        if count < 2:
            raise EvaluationError(f"--n must be at least 2, got {count}")
        evaluator = make_evaluator(cfg, ref, fid_weights, dev, protocol=protocol)
    except errors as err:
        fail(str(err))
    step = payload["step"]
    # beside the run's in-training evaluations (<run>/eval/eval-step<N>-train.json)
    folder = run_dir_of(payload["path"]) / "eval"
    with locked_or_fail(folder, "eval folder", "wait for that evaluation to finish"):
        try:
            if workers > 1:
                rows = _evaluate_on_workers(
                    payload["path"], names, count, evaluator, workers, gpus, address, precision
                )
            else:
                rows = _evaluate_here(model, cfg, names, count, evaluator, dev)
        except errors as err:
            fail(str(err))
        stem = f"evaluate-step{step:07d}-{evaluator.split}"
        stem += "-paper" if evaluator.protocol == "paper" else ""
        pq_path, json_path = write_results(rows, folder, stem, keep=True)
    title = f"{cfg.name} step {step}: {evaluator.note}, n={count}, ref={evaluator.split}"
    _eval_table(title, rows)
    kept = len(read_results(json_path)) - len(rows)
    also = f" (beside {plural(kept, 'earlier row')})" if kept else ""
    console.print(f"wrote {pq_path} and {json_path}{also}", markup=False)


def _evaluation_errors() -> tuple[type[Exception], ...]:
    """What an evaluation reports in one sentence (exit code 2)."""
    from loomray.checkpoint import CheckpointError
    from loomray.data import DatasetError
    from loomray.evaluation.weights import EvaluationError
    from loomray.train.launch import LaunchError

    return (CheckpointError, EvaluationError, DatasetError, LaunchError, ValueError)


def _checkpoint_to_evaluate(ckpt: str, precision):
    """The checkpoint's payload, config (sampling in ``precision``) and EMA model."""
    from loomray.checkpoint import ema_model_of, load_checkpoint
    from loomray.evaluation.evaluate import with_precision

    payload = load_checkpoint(ckpt)
    cfg, model = ema_model_of(payload)
    return payload, with_precision(cfg, precision), model


def _eval_table(title: str, rows) -> None:
    table = Table(title=title)
    for col in ("sampler", "NFE", rows[0].metric, "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.method, f"{r.nfe:g}", f"{r.value:.4f}", f"{r.seconds:.1f}")
    console.print(table)


def _evaluate_here(model, cfg, names, count, evaluator, dev):
    """``evaluate_model`` in this process, with a status line."""
    from loomray.evaluation.evaluate import evaluate_model

    with console.status("sampling and scoring...") as status:
        return evaluate_model(
            model,
            cfg,
            names,
            count,
            evaluator,
            dev,
            progress=lambda i, total: status.update(f"{len(names)} samplers: {i}/{total} samples"),
        )
