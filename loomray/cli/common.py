"""What every command shares: the typer apps, the console, one-sentence failures, and
the checks and reports several commands use. It imports no command module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

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

    from loomray.cluster.connect import security_warnings

    for warning in security_warnings(dashboard_host):
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _show_dashboard(url: str | None, run_dir: Path | None = None) -> None:
    """Once connected: the dashboard's URL and the command that shows the live numbers
    (of ``run_dir`` alone, when given)."""
    import shlex

    from loomray.cluster.connect import status_address

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


def _path_or_fail(check, path: str, what: str) -> Path:
    """``check`` (from loomray.paths) of a path argument, or one sentence and exit 2."""
    from loomray.paths import PathError

    try:
        return check(path, what)
    except PathError as err:
        fail(str(err))


@contextmanager
def locked_or_fail(folder: Path, what: str, advice: str | None = None) -> Iterator[Path]:
    """Hold ``folder`` for this command (loomray.files.locks), or one sentence naming the
    process that writes into it, and exit 2."""
    from loomray.files.locks import LockError, lock_folder

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


def _config_or_fail(config: str, overrides: list[str]):
    from loomray.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))


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


def _evaluate_on_workers(
    checkpoint, names, count, evaluator, workers, gpus, address, precision=None
):
    from loomray.cluster.connect import connect
    from loomray.evaluation.workers import evaluate_with_workers

    connect(address, quiet=True)
    if evaluator.metric == "fid":
        evaluator.reference_sums()  # computed (or read from the cache) once, here
    with console.status(f"sampling and scoring on {plural(workers, 'worker')}..."):
        return evaluate_with_workers(
            checkpoint, names, count, evaluator, workers, gpus, precision=precision
        )


def keep_results(folder: Path, name: str) -> None:
    """Refuse an --out folder that holds an earlier benchmark's results: they took
    hours, and are kept."""
    if (folder / name).exists():
        fail(
            f"--out {folder} already holds {name} from an earlier run; pass another --out "
            "(or move that folder away) to keep both"
        )
