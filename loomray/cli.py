"""The `loomray` command line: parse, validate, call the library."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table as RichTable

PRECISION_HELP = (
    "The network's precision when sampling: fp32 or bf16 (autocast, CUDA only). "
    "Default: the run's eval.precision (fp32)."
)


class Table(RichTable):
    """Rich's table whose cells wrap instead of being cut short with an ellipsis, so
    every figure stays readable in an 80-column terminal."""

    def add_column(self, *args, **kwargs) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


def _flags_show_no_type() -> None:
    """typer shows every option's type, a flag's as ``<bool>``; a flag takes no value,
    so its type column stays empty in loomray's help."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()
HELP_FLAGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="LOOM-CFM flow matching on Ray: train, sweep, evaluate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    context_settings=HELP_FLAGS,
)
bench_app = typer.Typer(
    help="Measure speed and quality; each prints a table (and writes its files to --out).",
    no_args_is_help=True,
    context_settings=HELP_FLAGS,
)
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        from loomray import __version__

        typer.echo(f"loomray {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """LOOM-CFM flow matching on Ray: train, sweep, evaluate, benchmark."""


# soft_wrap: long lines (paths) are never broken mid-word when output is not a terminal
console = Console(soft_wrap=True)


def plural(n: int, word: str) -> str:
    """``plural(1, "worker")`` -> "1 worker"; ``plural(2, "node")`` -> "2 nodes"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def fail(message: str) -> None:
    """End the command with one clear sentence and exit code 2."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


DASHBOARD_HOST_HELP = (
    "Address the dashboard of a local Ray listens on; anything but 127.0.0.1 is "
    "reachable by others (a warning says so)."
)


def _warn_exposure(dashboard_host: str) -> None:
    from rich.markup import escape

    from loomray.ray_cluster import security_warnings

    for warning in security_warnings(dashboard_host):
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _show_dashboard(url: str | None, run_dir: Path | None = None) -> None:
    """Once connected: the dashboard's URL and the command that shows the live numbers
    (of ``run_dir`` alone, when given)."""
    import shlex

    from loomray.ray_cluster import status_address

    if url:
        console.print(
            f"Ray dashboard: {url}  (token auth on; the token: `ray get-auth-token`)",
            soft_wrap=True,
            markup=False,
        )
    command = ["loomray", "status", "--address", status_address()]
    command += ["--run-dir", str(run_dir)] if run_dir is not None else []
    console.print(f"live numbers: {shlex.join(command)}", soft_wrap=True, markup=False)


def _starting(address: str | None) -> str:
    """What connecting to ``address`` (None: RAY_ADDRESS, else a local Ray) is about to do."""
    import os

    joined = address or os.environ.get("RAY_ADDRESS")
    if not joined:
        return "starting a local Ray..."
    return f"joining the Ray cluster at {joined}{'' if address else ' (RAY_ADDRESS)'}..."


def _node_count(stats: dict) -> int:
    """How many Ray nodes the ranks a coupling service serves run on."""
    return len({w["node"] for w in stats.get("workers", []) if w["node"]})


def _path_or_fail(check, path: str, what: str) -> Path:
    """``check`` (from loomray.paths) of a path argument, or one sentence and exit 2."""
    from loomray.paths import PathError

    try:
        return check(path, what)
    except PathError as err:
        fail(str(err))


@contextmanager
def locked_or_fail(folder: Path, what: str, advice: str | None = None) -> Iterator[Path]:
    """Hold ``folder`` for this command (loomray.locks), or one sentence naming the
    process that writes into it, and exit 2."""
    from loomray.locks import LockError, lock_folder

    stack = ExitStack()
    try:
        held = stack.enter_context(lock_folder(folder, what, advice=advice))
    except LockError as err:
        fail(str(err))
    with stack:
        yield held


def _worker_counts(text: str) -> list[int]:
    """``--workers 1,2`` -> [1, 2], or one sentence and exit 2."""
    try:
        counts = [int(w) for w in text.split(",")]
    except ValueError:
        fail(f"--workers must be comma-separated integers, got {text!r}")
    if any(c < 1 for c in counts):
        fail(f"--workers must be at least 1, got {text}")
    return counts


def gpus_or_fail(gpus: bool) -> None:
    """With ``--gpus``, a connected Ray cluster must have a GPU (tasks would wait forever)."""
    import ray

    if gpus and ray.cluster_resources().get("GPU", 0) < 1:
        fail("--gpus asks for GPU workers but the Ray cluster has no GPU; drop --gpus")


def shard_progress(unit: str, total: int):
    """A rich progress bar counting ``unit`` (pairs, images) with its rate, and the
    ``progress(done, total)`` callback that advances it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"[bold]{unit}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=2,
    )
    task = bar.add_task(unit, total=total, rate="")

    def update(done: int, total_: int) -> None:
        speed = bar.tasks[0].speed
        bar.update(task, completed=done, rate=f"{speed:.0f} {unit}/s" if speed else "")

    return bar, update


def scaling(runs, counts: list[int]) -> list[tuple[int, float, float]]:
    """(workers, median seconds, speed-up over the first count) of timed runs that have
    ``workers`` and ``seconds``."""
    import numpy as np

    def median(w: int) -> float:
        return float(np.median([r.seconds for r in runs if r.workers == w]))

    return [(w, median(w), median(counts[0]) / median(w)) for w in counts]


def _device_or_fail(device: str | None) -> str:
    """A --device: cpu, or cuda (cuda:N) on a machine with that GPU; default cuda when
    there is one."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(dev)
    except RuntimeError:
        parsed = None
    usable = parsed is not None and (
        parsed.type == "cpu"
        or (
            parsed.type == "cuda"
            and torch.cuda.is_available()
            and (parsed.index or 0) < torch.cuda.device_count()
        )
    )
    if usable:
        return dev
    if parsed is not None and parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            fail(f"--device {dev}: no CUDA device is visible here; pass --device cpu")
        fail(f"--device {dev}: this machine has {plural(count, 'CUDA device')} (cuda:0..)")
    fail(f"--device must be cpu or cuda (cuda:N), got {dev}")


def _device_name(dev: str) -> str:
    import torch

    device = torch.device(dev)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _config_or_fail(config: str, overrides: list[str]):
    from loomray.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))


@app.command("presets")
def presets_cmd() -> None:
    """List the shipped presets."""
    from loomray.config import load_config, preset_names

    table = Table()
    for col in ("preset", "data", "model", "coupling", "batch", "steps", "workers"):
        table.add_column(col, no_wrap=col == "preset")
    for name in preset_names():
        c = load_config(name)
        model = c.model.kind if c.model.kind == "mlp" else f"unet {c.model.channels}ch"
        table.add_row(
            name,
            f"{c.data.name} {'x'.join(map(str, c.sample_shape))}",
            model,
            c.coupling.kind + (f" K={c.coupling.caches}" if c.coupling.kind == "loom" else ""),
            str(c.train.batch),
            str(c.train.steps),
            f"{c.train.workers} x {'GPU' if c.train.gpus_per_worker else 'CPU'}",
        )
    console.print(table)


config_app = typer.Typer(
    help="Inspect configurations.", no_args_is_help=True, context_settings=HELP_FLAGS
)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
) -> None:
    """Print the resolved config and the model's parameter count."""
    from loomray.config import dump_config
    from loomray.models import build_model, count_parameters

    cfg = _config_or_fail(config, overrides or [])
    typer.echo(dump_config(cfg), nl=False)
    params = count_parameters(build_model(cfg))
    typer.echo(f"# model parameters: {params:,} ({params / 1e6:.2f}M)")


@config_app.command("reference")
def config_reference_cmd() -> None:
    """Print every config key with its type, default and meaning (docs/config.md)."""
    from loomray.config_reference import render_reference

    typer.echo(render_reference())


@app.command("import")
def import_cmd(
    path: str = typer.Argument(
        ..., help="The authors' released model.pth (Hugging Face cvg-unibe/loom-cfm_<preset>)."
    ),
    preset: str = typer.Option(
        ..., help="cifar10 (also for the cifar10_reflow release), imagenet32, imagenet64, ffhq256."
    ),
    run_dir: str = typer.Option(..., help="A new run directory to write."),
) -> None:
    """Bring the LOOM-CFM authors' released weights in as a loomray run (docs/reproduce.md)."""
    from loomray.official import ReleaseError, check_run_dir, import_official

    folder = Path(run_dir).expanduser()
    try:
        check_run_dir(folder)
        with locked_or_fail(folder, "run dir"):
            check_run_dir(folder)  # as it is now that nobody else can write into it
            with console.status(f"importing {path} as {preset}..."):
                done = import_official(path, preset, run_dir)
    except ReleaseError as err:
        fail(str(err))
    extra = f" and {done['autoencoder']} autoencoder tensors" if done["autoencoder"] else ""
    console.print(
        f"imported {done['keys']} tensors{extra} at step {done['step']} into {run_dir} "
        f"({done['checkpoint']}): {done['weights']}; try: loomray evaluate --ckpt {run_dir}",
        markup=False,
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
    from loomray.evaluate import sample_eval, with_precision
    from loomray.images import GRID_MOST, save_sample_array, save_samples
    from loomray.latents.autoencoder import AutoencoderError
    from loomray.latents.decode import to_images
    from loomray.paths import file_to_write
    from loomray.sampling import parse_method

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


def _resolve_train_config(config, overrides, workers, gpus):
    extra = list(overrides or [])
    if workers is not None:
        extra.append(f"train.workers={workers}")
    if gpus is False:
        extra.append("train.gpus_per_worker=0")
    cfg = _config_or_fail(config, extra)
    if gpus and cfg.train.gpus_per_worker == 0:
        cfg = _config_or_fail(config, [*extra, "train.gpus_per_worker=1"])
    return absolute_paths(cfg)


def absolute_paths(cfg):
    """Paths the workers read (pairs, latents, their autoencoder, weights to start from)
    made absolute, since workers run in other folders than the command; ``train.init``
    names one checkpoint file, so that every rank (and a restart) starts from the same."""
    from dataclasses import replace

    from loomray.checkpoint import CheckpointError, resolve_checkpoint

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    data = cfg.data
    if data.name in ("pairs", "latents"):
        data = replace(data, root=absolute(data.root))
    if data.autoencoder and Path(data.autoencoder).expanduser().exists():  # else a hub id
        data = replace(data, autoencoder=absolute(data.autoencoder))
    init = absolute(cfg.train.init)
    if init and Path(init).is_dir():
        try:
            init = str(resolve_checkpoint(Path(init)))
        except CheckpointError as err:
            fail(f"train.init: {err}")
    return replace(cfg, data=data, train=replace(cfg.train, init=init))


@app.command("train")
def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: int = typer.Option(None, help="Training workers (overrides train.workers)."),
    gpus: bool = typer.Option(
        None, "--gpus/--cpu", help="One GPU per worker, or CPU only. Default: the preset's."
    ),
    address: str = typer.Option(
        None,
        help="Ray cluster to join: auto, ray://host:10001, host:6379. Default: start a local Ray.",
    ),
    run_dir: str = typer.Option(None, help="Run directory (default runs/<config name>)."),
    resume: bool = typer.Option(
        False,
        help="Continue the run in --run-dir (rerunning into "
        "an existing run dir of the same config does too).",
    ),
    verbose: bool = typer.Option(False, help="Stream the workers' logs to this terminal."),
    dashboard_host: str = typer.Option("127.0.0.1", help=DASHBOARD_HOST_HELP),
) -> None:
    """Train with LOOM-CFM (or a baseline) on Ray: DDP workers + the coupling service."""
    from loomray.checkpoint import latest_step
    from loomray.data import DatasetError
    from loomray.paths import folder_to_write
    from loomray.train.launch import Interrupted, LaunchError, launch, prepare_run_dir

    cfg = _resolve_train_config(config, overrides, workers, gpus)
    run = _path_or_fail(folder_to_write, run_dir, "run dir") if run_dir else None
    run = run or Path("runs") / cfg.name
    _warn_exposure(dashboard_host)  # before anything can fail or start
    try:
        at = latest_step(run) if prepare_run_dir(cfg, run, resume, write=False) else None
    except LaunchError as err:
        fail(str(err))
    if at is not None and at >= cfg.train.steps:
        # Nothing to train: the run, its config and Ray are left alone.
        console.print(
            f"run {run} is already at step {at} (train.steps={cfg.train.steps}): nothing to "
            f"train; raise train.steps to extend it, or score it with "
            f"loomray evaluate --ckpt {run}",
            markup=False,
        )
        return

    try:
        with locked_or_fail(run, "run dir"):  # refused before anything starts
            console.print(_starting(address), markup=False)
            result = launch(
                cfg,
                run,
                address=address,
                resume=resume,
                quiet=not verbose,
                on_dashboard=lambda url: _show_dashboard(url, run.resolve()),
                dashboard_host=dashboard_host,
            )
    except (LaunchError, DatasetError) as err:
        fail(str(err))
    except ConnectionError as err:
        fail(f"cannot reach the Ray cluster at {address}: {err}")
    except Interrupted as stop:
        again = ["loomray", "train", "--config", config, *(overrides or [])]
        again += [*(["--workers", str(workers)] if workers is not None else [])]
        again += [*([] if gpus is None else ["--gpus" if gpus else "--cpu"])]
        again += [*(["--address", address] if address else []), "--run-dir", str(run)]
        _report_interrupt(stop, again)
    _report_training(cfg, result)


def _report_training(cfg, result) -> None:
    """What a finished `loomray train` did: steps, loss, the coupling, the model."""
    s = result.service
    loss = result.metrics.get("loss", float("nan"))
    console.print(
        f"[bold]{'resumed and ' if result.resumed else ''}trained {cfg.name}[/] to step "
        f"{result.step} in {result.seconds:.0f} s; loss {loss:.4f}"
    )
    if s.get("cost_post") is not None:
        console.print(
            f"coupling {s['kind']}: mean pair cost {s['cost_pre']:.3f} -> {s['cost_post']:.3f} "
            f"per solve, solve {s['solve_ms']:.1f} ms, worker wait {s.get('wait_ms', 0):.1f} ms"
        )
    if s.get("workers"):
        console.print(
            f"the coupling service served {plural(len(s['workers']), 'worker')} on "
            f"{plural(_node_count(s), 'node')} ("
            + ", ".join(f"rank {w['rank']}: {w['batches']} batches" for w in s["workers"])
            + ")"
        )
    quality = {k: v for k, v in result.metrics.items() if "/" in k and not k.startswith("nfe/")}
    if quality:
        console.print("EMA model: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    console.print(
        f"checkpoint: {result.checkpoint}\nsamples:    {result.run_dir / 'samples'}", markup=False
    )


def _report_interrupt(stop, again: list[str]) -> None:
    """Ctrl-C during training: where it stopped, what is saved, how to go on; exit 130."""
    import shlex

    where = f"near step {stop.step}" if stop.step is not None and stop.step > 0 else "early"
    if stop.checkpoint_step is None:
        saved = "no checkpoint was written yet, so the run starts again from step 0"
    else:
        saved = f"the last checkpoint holds step {stop.checkpoint_step}, where the run goes on"
    console.print(
        f"interrupted {where}; {saved}. Continue with:\n  {shlex.join(again)}", markup=False
    )
    raise typer.Exit(code=130)


@app.command("sweep")
def sweep_cmd(
    spec: str = typer.Argument(
        ...,
        help="Sweep spec YAML, or a shipped spec by name (caches, caches-digits); docs/sweeps.md.",
    ),
    overrides: list[str] = typer.Argument(
        None,
        help="key=value: the spec's own keys (trials=8, concurrency=2, "
        "scheduler.grace_steps=50) or config keys for every trial (train.steps=200).",
    ),
    storage: str = typer.Option(None, help="Where sweeps go (overrides the spec's storage)."),
    resume: bool = typer.Option(False, help="Continue the interrupted sweep of this spec."),
    address: str = typer.Option(
        None,
        help="Ray cluster to join: auto, ray://host:10001, host:6379. Default: start a local Ray.",
    ),
    verbose: bool = typer.Option(False, help="Stream the trials' logs to this terminal."),
    dashboard_host: str = typer.Option("127.0.0.1", help=DASHBOARD_HOST_HELP),
    concurrency: str = typer.Option(
        None,
        help="Trials at once (overrides the spec's; may change on --resume): N, or auto "
        "for as many as the cluster can hold.",
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the models, trials, GPU-hours and wall clock; start nothing."
    ),
    plan_gpus: int = typer.Option(
        None, "--gpus", help="With --plan: the GPUs to plan for (default: concurrency's worth)."
    ),
    plan_gpu: str = typer.Option("H100", "--gpu", help="With --plan: the GPU of the step rate."),
    rate: float = typer.Option(None, help="With --plan: training steps/s instead of measured."),
) -> None:
    """Search caches, batch size, sampler NFE (any config key) for the best FID with Tune."""
    from loomray.data import DatasetError
    from loomray.sweep import SweepError, load_spec, prepare_sweep_dir, run_sweep
    from loomray.train.launch import LaunchError

    try:
        sweep = load_spec(spec, storage, overrides or [])
        if concurrency is not None:
            sweep.concurrency = _concurrency_or_fail(concurrency)
        if plan:
            return _print_plan(sweep, plan_gpus, plan_gpu, rate)
        prepare_sweep_dir(sweep, resume)  # checks only; run_sweep checks again
        console.print(
            f"sweep [bold]{sweep.name}[/]: {sweep.trials} trials over "
            f"{', '.join(sweep.space)}; objective {' + '.join(sweep.objectives)}; "
            f"writing to {sweep.dir}"
        )
        _warn_exposure(dashboard_host)
        result = run_sweep(
            sweep,
            resume=resume,
            address=address,
            quiet=not verbose,
            on_dashboard=_show_dashboard,
            dashboard_host=dashboard_host,
        )
    except (SweepError, LaunchError, DatasetError) as err:
        fail(str(err))
    except ConnectionError as err:
        fail(f"cannot reach the Ray cluster at {address}: {err}")
    _sweep_table(sweep, result)
    if result.busy and result.busy[1]:
        resource, most, share = result.busy
        console.print(
            f"{resource} time held by trials: {100 * share:.0f}% of {most:g} {resource}s over "
            f"{result.seconds:.0f} s, {plural(result.concurrency, 'trial')} at once; trials "
            f"waited {result.waited_s:.0f} s in their slots for another trial's training",
            markup=False,
        )
    if sweep.multi:
        console.print("* on the Pareto front of (" + ", ".join(sweep.objectives) + ")")
    if result.best is not None:
        b, metric = result.best, sweep.metric
        console.print(
            f"best: {metric} {b[metric]:.3f} with {b['method']} ({b['nfe']:g} NFE), "
            + ", ".join(f"{k}={b[k]}" for k in sweep.space if not k.startswith("sampler."))
        )
    for what, path in result.files.items():
        console.print(f"{what + ':':8s}{path}")
    if result.interrupted:
        console.print(
            f"the sweep stopped with {result.finished} of {sweep.trials} trials finished; "
            f"continue it with: loomray sweep {spec} --resume"
            + (f" --storage {storage}" if storage else ""),
            markup=False,
        )
        raise typer.Exit(code=1)


def _sweep_table(sweep, result) -> None:
    """The trials of a finished sweep, best first, and what they trained."""
    metric = sweep.metric
    keys = [k for k in sweep.space if not k.startswith("sampler.")]
    table = Table(title=f"sweep {sweep.name}: trials by {metric}")
    for col in ("trial", *(k.split(".")[-1] for k in keys), "sampler", "NFE", metric, "model"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in result.rows:
        value = r[metric]
        table.add_row(
            r["trial"],
            *(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys),
            r["method"],
            f"{r['nfe']:g}" if r["nfe"] is not None else "-",
            f"{value:.3f}" if value is not None else "-",
            (r["model"][:8] + ("+" if r["trained"] else "")) if r["model"] else "-",
            r["status"] + (" *" if r.get("pareto") else ""),
        )
    console.print(table)
    console.print("model: the trained model's key under models/ (+: this trial trained it)")
    failed = [r for r in result.rows if r.get("error")]
    if failed:
        console.print(
            f"{plural(len(failed), 'trial')} failed; trial {failed[0]['trial']}: "
            f"{failed[0]['error']}",
            markup=False,
        )
    pruned = sum(r["status"] == "pruned" for r in result.rows)
    stopped = sum(r["status"] == "pruned" and r["trained"] for r in result.rows)
    console.print(
        f"{result.finished} trial{'s' if result.finished != 1 else ''} finished "
        + (f"and {pruned} pruned (ASHA stopped their training) " if pruned else "")
        + f"in {result.seconds:.0f} s; "
        f"{result.trained} model{'s' if result.trained != 1 else ''} trained for them"
        + (f", {stopped} of them stopped early by ASHA" if stopped else "")
        + " (trials that differ only in sampler reuse a trained model)"
    )


def _print_plan(sweep, gpus: int | None, gpu: str, rate: float | None) -> None:
    """`loomray sweep --plan`: what the sweep will train and cost; nothing starts."""
    from loomray.sweep import SweepError
    from loomray.sweep.plan import duration, plan_sweep

    if gpus is not None and gpus < 1 or rate is not None and rate <= 0:
        fail("--gpus must be at least 1 and --rate positive")
    try:
        p = plan_sweep(sweep, gpus, gpu, rate)
    except SweepError as err:
        fail(str(err))
    keys = list(p.models[0].params) if p.models else []
    table = Table(title=f"sweep {sweep.name}: the models it may train")
    for col in (*(k.split(".")[-1] for k in keys), "steps", "images", f"{p.device}s", "hours"):
        table.add_column(col, justify="right")
    for m in p.models:
        row = [str(m.params[k]) for k in keys]
        table.add_row(
            *row, f"{m.steps:,}", f"{m.steps * m.batch:,}", f"{m.gpus:g}", f"{m.hours:.2f}"
        )
    console.print(table)
    more = f" of {p.configurations}" if p.configurations > len(p.models) else ""
    console.print(
        f"{sweep.trials} trials, {len(p.models)}{more} models trained at most (trials that "
        f"differ only in sampler score a trained model)\n"
        "training alone, estimated low (one process's step; DDP and the service add):\n"
        f"training: {p.gpu_hours:.1f} {p.device}-hours at {p.rate:g} steps/s "
        f"({p.rate_source}); about {duration(p.wall_hours)} of wall clock on {p.gpus:g} "
        f"{p.device}s "
        f"({plural(p.slots, 'training')} at once)\n"
        f"in-training evaluation, not priced: {p.evaluations} evaluations, {p.samples:,} "
        f"samples, {p.nfe:,.0f} network evaluations; ASHA stops some trainings early",
        markup=False,
    )


def _concurrency_or_fail(text: str) -> int:
    """``--concurrency``: N >= 1, or auto (0)."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        fail(f"--concurrency must be an integer >= 1 or auto, got {text!r}")
    return int(text)


@app.command("table")
def table_cmd(
    path: str = typer.Argument(
        ..., help="table.parquet, a checkpoint folder holding one, or a run dir (latest)."
    ),
) -> None:
    """Check an assignment table (checksum, seed multiset) and describe it."""
    from loomray.checkpoint import CheckpointError, resolve_checkpoint
    from loomray.coupling import AssignmentTable
    from loomray.train.worker import TABLE_FILE

    target = Path(path)
    try:
        if target.is_dir():
            beside = target / TABLE_FILE
            target = beside if beside.is_file() else resolve_checkpoint(target).parent / TABLE_FILE
        if not target.is_file():
            raise ValueError(f"no assignment table at {target}")
        t = AssignmentTable.load(target)  # checks checksum, shape and seed multiset
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    console.print(
        f"{target}: {t.rows:,} rows x {t.caches} caches at step {t.step}; checksum ok; "
        f"the same seed multiset it was created with (fingerprint {t.fingerprint[:16]})",
        soft_wrap=True,
    )


def _pick_local_cluster() -> str:
    """The local Ray cluster `loomray status` looks at: the one on this machine, or the
    one the user picks from the list (exit 2 with the list when nobody can pick)."""
    import sys

    from loomray.ray_cluster import local_clusters

    clusters = local_clusters()
    if not clusters:
        console.print("no Ray cluster runs on this machine; pass the --address of a remote one")
        raise typer.Exit(code=1)
    if len(clusters) == 1:
        return clusters[0]["address"]
    table = Table(title="Ray clusters on this machine", title_justify="left")
    for col in ("#", "address", "loomray commands (pid)", "since", "dashboard"):
        table.add_column(col, overflow="fold")
    for i, c in enumerate(clusters, 1):
        uses = c["commands"]
        since = time.strftime("%H:%M:%S", time.localtime(uses[0]["since"])) if uses else "-"
        who = "; ".join(f"{u['command']} ({u['pid']})" for u in uses) or "- (not loomray's)"
        dashboard = next((u["dashboard"] for u in uses if u.get("dashboard")), None)
        table.add_row(str(i), c["address"], who, since, dashboard or "-")
    console.print(table)
    if sys.stdin.isatty():
        pick = typer.prompt("which one", type=click.IntRange(1, len(clusters)))
        return clusters[pick - 1]["address"]
    fail(
        f"{len(clusters)} Ray clusters run on this machine; pass --address with one of them, "
        f"e.g. loomray status --address {clusters[-1]['address']}"
    )


def _status_table(s: dict) -> None:
    """One run's live numbers, from its coupling service's stats."""

    def num(key, fmt="{:.2f}"):
        return fmt.format(s[key]) if s.get(key) is not None else "-"

    title = f"run {s.get('run_dir') or s['run']}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("coupling", f"{s['kind']}, {plural(s['world'], 'worker')}"),
        ("step", str(s["step"]) if s.get("phase", "training") == "training" else s["phase"]),
        ("steps/s", num("steps_per_s")),
        ("loss", num("loss", "{:.4f}")),
        (
            "pair cost before -> after solve",
            f"{num('cost_pre', '{:.4f}')} -> {num('cost_post', '{:.4f}')}",
        ),
        (
            "cost trend (per 50 solves)",
            " ".join(f"{c:.3f}" for c in (s.get("cost_trend") or [])[-5:]) or "-",
        ),
        ("solve latency", f"{num('solve_ms', '{:.2f}')} ms"),
        ("solves prepared ahead", f"{s.get('prepared_ahead', 0)} of {s.get('solves', 0)}"),
        ("worker wait", f"{num('wait_ms', '{:.2f}')} ms"),
        ("queue depth", str(s["queue_depth"])),
        (
            "workers (nodes)",
            f"{len(s.get('workers', []))} ({plural(_node_count(s), 'node')})",
        ),
        ("service restarts", str(s["restarts"])),
    ]
    if s.get("problem"):
        rows.append(("problem", s["problem"]))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("status")
def status_cmd(
    address: str = typer.Option(
        None,
        help="Ray cluster to look at (default: $RAY_ADDRESS, else the loomray cluster on "
        "this machine; with several, they are listed).",
    ),
    run_dir: str = typer.Option(
        None, help="Only this run (its run dir); default: every loomray run on the cluster."
    ),
) -> None:
    """Live numbers of the loomray runs on a Ray cluster (from their coupling services)."""
    import os

    import ray

    from loomray.ray_cluster import NAMESPACE, LaunchError, check_reachable, send_token
    from loomray.train.launch import SERVICE_PREFIX

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or _pick_local_cluster()
        try:
            check_reachable(address)
            send_token()
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        except LaunchError as err:
            fail(str(err))
        except ConnectionError as err:
            fail(f"no Ray cluster at {address}: {err}")
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == NAMESPACE and a["name"].startswith(SERVICE_PREFIX)
    ]
    if not names:
        where = f"the cluster at {address}" if address else "this cluster"
        console.print(f"no loomray run is active on {where}", markup=False)
        raise typer.Exit(code=1)
    mine = str(Path(run_dir).expanduser().resolve()) if run_dir else None
    shown = 0
    for name in sorted(names):
        try:
            s = ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote(), timeout=10)
        except Exception as err:  # the run may have ended between listing and asking
            if not mine:
                console.print(f"{name}: no answer ({err})")
            continue
        if mine and s.get("run_dir") != mine:
            continue
        shown += 1

        _status_table(s)
    if mine and not shown:
        console.print(f"run {mine} is not active on this cluster", markup=False)
        raise typer.Exit(code=1)


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

    from loomray.checkpoint import CheckpointError, ema_model_of, load_checkpoint, run_dir_of
    from loomray.data import DatasetError
    from loomray.evaluate import (
        EvaluationError,
        make_evaluator,
        method_names,
        read_results,
        weights_state,
        with_precision,
        write_results,
    )
    from loomray.train.launch import LaunchError

    if fid_weights:  # refused before anything starts when it is not plain tensors
        try:
            weights_state(fid_weights, protocol or "standard")
        except EvaluationError as err:
            fail(f"--fid-weights: {err}")
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    dev = _device_or_fail(device)
    errors = (CheckpointError, EvaluationError, DatasetError, LaunchError, ValueError)
    try:
        payload = load_checkpoint(ckpt)
        cfg, model = ema_model_of(payload)
        cfg = with_precision(cfg, precision)
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


def _eval_table(title: str, rows) -> None:
    table = Table(title=title)
    for col in ("sampler", "NFE", rows[0].metric, "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.method, f"{r.nfe:g}", f"{r.value:.4f}", f"{r.seconds:.1f}")
    console.print(table)


def _evaluate_here(model, cfg, names, count, evaluator, dev):
    """``evaluate_model`` in this process, with a status line."""
    from loomray.evaluate import evaluate_model

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


def _evaluate_on_workers(
    checkpoint, names, count, evaluator, workers, gpus, address, precision=None
):
    from loomray.evaluate_workers import evaluate_with_workers
    from loomray.ray_cluster import connect

    connect(address, quiet=True)
    if evaluator.metric == "fid":
        evaluator.reference_sums()  # computed (or read from the cache) once, here
    with console.status(f"sampling and scoring on {plural(workers, 'worker')}..."):
        return evaluate_with_workers(
            checkpoint, names, count, evaluator, workers, gpus, precision=precision
        )


@bench_app.command("coupling")
def bench_coupling_cmd(
    rows: int = typer.Option(100_000, help="Table rows (images, plus flips)."),
    caches: int = typer.Option(4, help="Noise caches per row (K)."),
    batch: int = typer.Option(128, help="Global batch solved per step."),
    dim: int = typer.Option(3072, help="Values per sample (3x32x32 = 3072)."),
    steps: int = typer.Option(300, help="Timed solves."),
    threads: int = typer.Option(1, help="Threads for noise and costs (coupling.service_cpus)."),
    solver: str = typer.Option(
        "lapjv", help="Assignment solver: lapjv (used), lap (the same, holding the GIL), scipy."
    ),
    data: str = typer.Option("random", help="random, or mnist: image rows (at most 5000)."),
    warmup: int = typer.Option(10, help="Untimed solves first (let an image table settle)."),
    lookahead: bool = typer.Option(
        True, help="Prepare the next step's noise and costs during this one's assignment."
    ),
) -> None:
    """Solves per second of the LOOM coupling and where the time goes."""
    from loomray.bench.coupling import PARTS, bench_coupling
    from loomray.coupling.ot import SOLVERS

    for name, value in (
        ("rows", rows),
        ("caches", caches),
        ("batch", batch),
        ("dim", dim),
        ("steps", steps),
        ("threads", threads),
    ):
        if value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if batch > rows:
        fail(f"--batch ({batch}) cannot exceed --rows ({rows})")
    if solver not in SOLVERS:
        fail(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if data not in ("random", "mnist"):
        fail(f"--data must be random or mnist, got {data!r}")
    if warmup < 0:
        fail(f"--warmup must be at least 0, got {warmup}")
    with console.status("timing LOOM solves..."):
        try:
            r = bench_coupling(
                rows,
                caches,
                batch,
                dim,
                steps,
                warmup,
                threads,
                solver=solver,
                data=data,
                lookahead=lookahead,
            )
        except ValueError as err:
            fail(str(err))
    console.print(
        f"LOOM coupling: rows={r.rows} K={r.caches} batch={r.batch} dim={r.dim} "
        f"data={r.data} solver={r.solver} (timed after {r.warmup} solves)"
        + (", next step prepared during each assignment" if r.lookahead and r.threads > 1 else "")
    )
    table = Table()
    table.add_column("part")
    table.add_column("ms / solve", justify="right")
    table.add_column("share", justify="right")
    for part in PARTS:
        ms = r.ms_per_part[part]
        table.add_row(part, f"{ms:.3f}", f"{100 * ms / r.ms_per_solve:.0f}%")
    table.add_row("total", f"{r.ms_per_solve:.3f}", "100%")
    console.print(table)
    console.print(
        f"[bold]{r.solves_per_s:.1f} solves/s[/] on {r.threads} thread(s), {r.steps} steps"
    )
    from loomray.coupling.wire import wire_bytes

    floats, packed = wire_bytes(r.batch, r.dim, 1)
    console.print(
        f"bytes per step through the service: {floats / 1e6:.1f} MB as float32 batch and "
        f"noise, {packed / 1e6:.2f} MB as uint8 images and seeds ({floats / packed:.1f}x fewer)"
    )


@bench_app.command("train")
def bench_train_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: str = typer.Option(
        None,
        help="Training workers; several (1,2) measure scaling: LOOM at each count with "
        "the same --batch-per-rank.",
    ),
    batch_per_rank: int = typer.Option(None, help="With several --workers (default 64)."),
    steps: int = typer.Option(1000, help="Steps of each run."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
    repeats: int = typer.Option(1, help="Alternating loom/independent pairs to run."),
) -> None:
    """Steps/s with the LOOM service vs independent coupling, and the workers' wait."""
    import numpy as np

    from loomray.bench.train import bench_train
    from loomray.data import DatasetError
    from loomray.ray_cluster import LaunchError, connect

    counts = _worker_counts(workers) if workers else []
    extra = [*(overrides or []), f"train.steps={steps}", f"train.ckpt_every={steps}"]
    if len(counts) > 1:
        return _bench_scaling(config, extra, counts, batch_per_rank or 64, steps, address)
    cfg = _resolve_train_config(config, extra, counts[0] if counts else None, None)
    log_every = max(1, steps // 10)
    cfg.train.log_every = log_every
    if repeats < 1:
        fail(f"--repeats must be at least 1, got {repeats}")
    try:
        connect(address, quiet=True)
        with console.status(f"training {cfg.name} {2 * repeats} times for {steps} steps..."):
            runs = bench_train(cfg, repeats)
    except (LaunchError, DatasetError) as err:
        fail(str(err))
    table = Table()
    columns = ("repeat", "coupling", "steps/s", "wait / step", "wait share", "solve ms", "journal")
    for col in columns:
        table.add_column(col, justify="right")
    for i, pair in enumerate(runs):
        for r in pair:
            table.add_row(
                str(i + 1),
                r.kind,
                f"{r.steps_per_s:.2f}",
                f"{r.wait_ms:.2f} ms",
                f"{100 * r.wait_fraction:.2f}%",
                f"{r.solve_ms:.2f}",
                f"{r.journal_bytes_per_step:,.0f} B/step",
            )
    console.print(
        f"{cfg.name}: {plural(cfg.train.workers, 'worker')}, batch {cfg.train.batch}, "
        f"{steps} steps per run (first of 10 windows left out)"
    )
    console.print(table)
    ratios = [loom.steps_per_s / ind.steps_per_s for loom, ind in runs]
    waits = [loom.wait_fraction for loom, _ in runs]
    console.print(
        f"[bold]ratio loom / independent: {np.mean(ratios):.3f}[/] "
        f"(per repeat {', '.join(f'{x:.3f}' for x in ratios)}); LOOM wait "
        f"{100 * np.mean(waits):.2f}% of step time"
    )


def _bench_scaling(config, extra, counts, per_rank, steps, address) -> None:
    from loomray.bench.train import bench_scaling
    from loomray.data import DatasetError
    from loomray.ray_cluster import LaunchError, connect

    extra = [*extra, f"train.batch={max(counts) * per_rank}", f"train.workers={max(counts)}"]
    cfg = _config_or_fail(config, extra)
    cfg.train.log_every = max(1, steps // 10)
    try:
        connect(address, quiet=True)
        with console.status(f"training {cfg.name} at {', '.join(map(str, counts))} workers..."):
            runs = bench_scaling(cfg, counts, per_rank)
    except (LaunchError, DatasetError) as err:
        fail(str(err))
    table = Table(title=f"{cfg.name}: LOOM, {per_rank} images per rank, {steps} steps per run")
    for col in ("workers", "global batch", "images/s", "vs 1st", "wait share"):
        table.add_column(col, justify="right")
    for r in runs:
        ratio = r.images_per_s / runs[0].images_per_s
        table.add_row(
            str(r.workers),
            str(r.batch),
            f"{r.images_per_s:.0f}",
            f"{ratio:.2f}x",
            f"{100 * r.wait_fraction:.2f}%",
        )
    console.print(table)


@bench_app.command("eval")
def bench_eval_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: str = typer.Option("1,2", help="Comma-separated worker counts to time."),
    n: int = typer.Option(None, help="Samples per sampler (default: eval.n)."),
    steps: int = typer.Option(300, help="Training steps of the model evaluated."),
    repeats: int = typer.Option(2, help="Timed rounds over the worker counts."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
) -> None:
    """Wall time of one evaluation (every eval.methods sampler) with 1, 2, ... workers."""

    from loomray.bench.eval import bench_eval
    from loomray.data import DatasetError
    from loomray.evaluate import EvaluationError
    from loomray.ray_cluster import LaunchError, connect

    counts = sorted(set(_worker_counts(workers)))
    if steps < 1 or repeats < 1:
        fail(f"--steps and --repeats must be at least 1, got {steps} and {repeats}")
    cfg = _config_or_fail(config, list(overrides or []))
    count = n or cfg.eval.n
    try:
        connect(address, quiet=True)
        with console.status(f"{cfg.name}: evaluating {count} samples per sampler..."):
            runs = bench_eval(cfg, counts, count, steps, repeats)
    except (LaunchError, DatasetError, EvaluationError) as err:
        fail(str(err))
    methods = list(cfg.eval.methods)
    table = Table(title=f"{cfg.name}: {count} samples x {', '.join(methods)}")
    for col in ("workers", "seconds (median)", "speed-up", *methods):
        table.add_column(col, justify="right")
    for w, seconds, speedup in scaling(runs, counts):
        values = [f"{next(r for r in runs if r.workers == w).values[m]:.4f}" for m in methods]
        table.add_row(str(w), f"{seconds:.1f}", f"{speedup:.2f}x", *values)
    console.print(table)
    console.print(f"per round: {', '.join(f'{r.workers}w {r.seconds:.1f}s' for r in runs)}")


@bench_app.command("quality")
def bench_quality_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    seeds: int = typer.Option(3, help="Seeds per coupling."),
    steps: int = typer.Option(None, help="Training steps of every run (default: the config's)."),
    n: int = typer.Option(None, help="Samples per score (default: eval.n)."),
    out: str = typer.Option("bench-quality", help="Folder for the table (JSON) and the plot."),
    methods: str = typer.Option(
        None, help="Samplers to score, comma-separated (default: the config's eval.methods)."
    ),
    jobs: int = typer.Option(1, help="Runs side by side, one process and one thread each."),
) -> None:
    """Independent vs minibatch-OT vs LOOM: same model, steps and seeds; quality per NFE."""

    from loomray.bench.quality import run_quality
    from loomray.data import DatasetError
    from loomray.evaluate import EvaluationError, method_names
    from loomray.paths import folder_to_write

    extra = list(overrides or []) + ([f"train.steps={steps}"] if steps else [])
    cfg = _config_or_fail(config, extra)
    folder = _path_or_fail(folder_to_write, out, "--out")
    if seeds < 1 or jobs < 1:
        fail(f"--seeds and --jobs must be at least 1, got {seeds} and {jobs}")
    try:
        names = method_names(methods, cfg)
    except EvaluationError as err:
        fail(str(err))
    keep_results(folder, "quality.json")
    with locked_or_fail(folder, "output folder"):
        try:
            runs, global_pair, metric = run_quality(
                cfg, seeds, names, n, log=lambda line: console.print(line), jobs=jobs
            )
        except (EvaluationError, DatasetError) as err:
            fail(str(err))
        _quality_table(cfg, seeds, runs, metric, global_pair)
        _write_quality(folder, cfg, seeds, runs, metric, global_pair)


def keep_results(folder: Path, name: str) -> None:
    """Refuse an --out folder that holds an earlier benchmark's results: they took
    hours, and are kept."""
    if (folder / name).exists():
        fail(
            f"--out {folder} already holds {name} from an earlier run; pass another --out "
            "(or move that folder away) to keep both"
        )


def _quality_table(cfg, seeds: int, runs, metric: str, global_pair: float) -> None:
    import numpy as np

    from loomray.bench.quality import KINDS, summarize

    methods = list(runs[0].scores)
    summary = summarize(runs, methods)
    table = Table(
        title=f"{cfg.name}: {metric.upper()} (mean ± std over {seeds} seeds), "
        f"{cfg.train.steps} steps"
    )
    table.add_column("sampler (NFE)")
    for kind in KINDS:
        table.add_column(kind, justify="right")
    for m in methods:
        nfe = np.mean([r.nfe[m] for r in runs])
        table.add_row(
            f"{m} ({nfe:.0f})", *(f"{summary[k][m][0]:.3f} ± {summary[k][m][1]:.3f}" for k in KINDS)
        )
    table.add_row("pair cost", *(f"{summary[k]['pair_cost'][0]:.4f}" for k in KINDS))
    table.add_row("global OT pair cost", *(f"{global_pair:.4f}" for _ in KINDS))
    console.print(table)


def _write_quality(folder: Path, cfg, seeds: int, runs, metric: str, global_pair: float) -> None:
    import json

    from loomray.bench.quality import plot_quality, summarize

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quality.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "metric": metric,
                "global_ot_pair_cost": global_pair,
                "runs": [r.__dict__ for r in runs],
            },
            indent=2,
        )
    )
    plot = plot_quality(
        summarize(runs, list(runs[0].scores)),
        runs,
        metric,
        folder / "quality.png",
        f"{cfg.name}: {cfg.train.steps} steps, {seeds} seeds",
    )
    console.print(f"wrote {folder / 'quality.json'} and {plot}", markup=False)


# the commands of other modules register themselves on `app` when imported
from loomray import cli_bench, cli_latents, cli_reflow  # noqa: E402,F401
