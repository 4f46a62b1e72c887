"""`loomray pairs` and `loomray reflow`: the reflow commands of the command line."""

from __future__ import annotations

import shlex
from contextlib import ExitStack
from pathlib import Path

import typer

from loomray.cli.common import (
    DASHBOARD_HOST_HELP,
    Table,
    _config_or_fail,
    _path_or_fail,
    _report_interrupt,
    _show_dashboard,
    _starting,
    _warn_exposure,
    _worker_counts,
    app,
    bench_app,
    console,
    fail,
    gpus_or_fail,
    keep_results,
    locked_or_fail,
    plural,
    scaling,
    shard_progress,
)

SAMPLER_HELP = (
    "Sampler that makes the pairs: dopri5 (adaptive: the accurate endpoints reflow "
    "learns from) or euler-N, midpoint-N, heun-N, rk4-N."
)


def _generate(payload, folder: Path, manifest, workers: int, gpus: bool, again: list[str]):
    """Make the missing shards on Ray workers with a progress bar; Ctrl-C keeps the
    finished shards and says how to go on (exit 130)."""
    from loomray.data.pairs import finished_shards
    from loomray.reflow.generate import generate_pairs

    done = len(finished_shards(folder, manifest)) if folder.is_dir() else 0
    if done == manifest.shards:
        console.print(f"pairs: all {manifest.pairs} are in {folder}", markup=False)
        return None
    bar, update = shard_progress("pairs", manifest.pairs)
    try:
        with bar:
            return generate_pairs(payload, folder, manifest, workers, gpus, progress=update)
    except KeyboardInterrupt:
        kept = len(finished_shards(folder, manifest))
        console.print(
            f"interrupted; {kept} of {manifest.shards} shards are saved in {folder}. "
            f"Continue with:\n  {shlex.join(again)}",
            markup=False,
        )
        raise typer.Exit(code=130) from None


def _plan_or_fail(ckpt: str, n: int | None, sampler: str, batch=None, shard=None, seed=0):
    """(checkpoint payload, its config, the manifest of the pairs asked for)."""
    from loomray.checkpoint import CheckpointError, config_of, load_checkpoint
    from loomray.data.pairs import PairsError
    from loomray.reflow.chain import default_pairs
    from loomray.reflow.generate import plan_pairs

    try:
        payload = load_checkpoint(ckpt)
        source = config_of(payload)
        count = n if n is not None else default_pairs(source)
        return payload, source, plan_pairs(payload, count, sampler, batch, shard, seed)
    except (CheckpointError, PairsError) as err:
        fail(str(err))


@app.command("pairs")
def pairs_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory of the source model."),
    out: str = typer.Option(..., help="Pairs folder (made, or resumed when it holds these)."),
    n: int = typer.Option(None, "--n", "--pairs", help="Pairs to make (default: 1M; digits 50k)."),
    sampler: str = typer.Option("dopri5", help=SAMPLER_HELP),
    batch: int = typer.Option(None, help="Pairs sampled together (default: eval.batch)."),
    shard_size: int = typer.Option(None, help="Pairs per shard (default ~10k, whole batches)."),
    seed: int = typer.Option(0, help="Noise stream: seeds 3e12 + seed * 1e10 + pair index."),
    workers: int = typer.Option(1, help="Ray workers that share the shards."),
    gpus: bool = typer.Option(False, "--gpus/--cpu", help="One GPU per worker."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
) -> None:
    """Make reflow pairs (noise seed, sample) from a model, in resumable Parquet shards."""
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data.pairs import PairsError, check_folder

    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    payload, _, manifest = _plan_or_fail(ckpt, n, sampler, batch, shard_size, seed)
    folder = Path(out).expanduser()
    try:
        check_folder(folder, manifest)
        connect(address, quiet=True)
    except (PairsError, LaunchError) as err:
        fail(str(err))
    gpus_or_fail(gpus)
    again = ["loomray", "pairs", "--ckpt", ckpt, "--out", out, "--n", str(manifest.pairs)]
    again += ["--sampler", manifest.sampler, "--batch", str(manifest.batch)]
    again += ["--shard-size", str(manifest.shard_size), "--seed", str(manifest.seed)]
    again += ["--workers", str(workers), *(["--gpus"] if gpus else [])]
    again += [*(["--address", address] if address else [])]
    with locked_or_fail(folder, "pairs folder"):
        made = _generate(payload, folder, manifest, workers, gpus, again)
    if made is not None:
        console.print(
            f"made {made.rows_made} pairs ({manifest.sampler}) in {made.seconds:.1f} s on "
            f"{plural(workers, 'worker')}: {made.rows_per_s:.0f} pairs/s; {folder}",
            markup=False,
        )


@app.command("reflow")
def reflow_cmd(
    ckpt: str = typer.Option(..., help="Checkpoint file or run directory of the source model."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    config: str = typer.Option(
        None, "--config", "-c", help="Reflow preset or YAML (default: <source>-reflow)."
    ),
    pairs: int = typer.Option(None, help="Pairs to train on (default: 1M; digits 50k)."),
    sampler: str = typer.Option("dopri5", help=SAMPLER_HELP),
    pairs_dir: str = typer.Option(None, help="Pairs folder (default: <run-dir>/pairs)."),
    run_dir: str = typer.Option(None, help="Run directory (default runs/<preset name>)."),
    workers: int = typer.Option(None, help="Workers (overrides train.workers)."),
    gpus: bool = typer.Option(
        None, "--gpus/--cpu", help="One GPU per worker, or CPU only. Default: the preset's."
    ),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
    verbose: bool = typer.Option(False, help="Stream the workers' logs to this terminal."),
    dashboard_host: str = typer.Option("127.0.0.1", help=DASHBOARD_HOST_HELP),
) -> None:
    """Reflow a model: make pairs, fine-tune on them, score before and after (resumable)."""
    from dataclasses import replace as dc_replace

    from loomray.reflow.chain import ReflowError, reflow_config, reflow_preset

    payload, source, manifest = _plan_or_fail(ckpt, pairs, sampler)
    extra = list(overrides or [])
    extra += [f"train.workers={workers}"] if workers is not None else []
    extra += ["train.gpus_per_worker=0"] if gpus is False else []
    extra += ["train.gpus_per_worker=1"] if gpus else []
    try:
        preset = config or reflow_preset(source)
        cfg = reflow_config(source, Path(payload["path"]), Path(pairs_dir or "."), preset, extra)
        run = Path(run_dir).expanduser() if run_dir else Path("runs") / cfg.name
        folder = Path(pairs_dir).expanduser() if pairs_dir else run / "pairs"
        cfg = dc_replace(cfg, data=dc_replace(cfg.data, root=str(folder.resolve())))
    except ReflowError as err:
        fail(str(err))
    if manifest.pairs < cfg.train.batch:
        fail(f"--pairs {manifest.pairs} is smaller than the training batch of {cfg.train.batch}")
    _warn_exposure(dashboard_host)
    again = ["loomray", "reflow", "--ckpt", ckpt, *(overrides or [])]
    again += [*(["--config", config] if config else []), "--pairs", str(manifest.pairs)]
    again += ["--sampler", manifest.sampler, "--run-dir", str(run)]
    again += [*(["--pairs-dir", pairs_dir] if pairs_dir else [])]
    again += [*(["--workers", str(workers)] if workers is not None else [])]
    again += [*([] if gpus is None else ["--gpus" if gpus else "--cpu"])]
    again += [*(["--address", address] if address else [])]
    with locked_or_fail(run, "run dir"), ExitStack() as pairs_lock:
        if not folder.resolve().is_relative_to(run.resolve()):  # else the run dir's lock holds
            pairs_lock.enter_context(locked_or_fail(folder, "pairs folder"))
        _reflow_stages(payload, cfg, manifest, run, folder, address, verbose, dashboard_host, again)


def _reflow_stages(payload, cfg, manifest, run, folder, address, verbose, host, again) -> None:
    """Check everything, then pairs -> scores of the source -> training -> the table."""
    from loomray.checkpoint import latest_step
    from loomray.cluster.connect import connect
    from loomray.data import DatasetError
    from loomray.data.pairs import PairsError, check_folder
    from loomray.train.launch import (
        Interrupted,
        LaunchError,
        check_resources,
        launch,
        prepare_run_dir,
    )

    try:
        prepare_run_dir(cfg, run, resume=False, write=False)
        check_folder(folder, manifest)
        console.print(_starting(address), markup=False)
        _show_dashboard(connect(address, quiet=not verbose, dashboard_host=host))
        check_resources(cfg)
        prepare_run_dir(cfg, run, resume=False, write=True)
        workers, gpus = cfg.train.workers, cfg.train.gpus_per_worker > 0
        _generate(payload, folder, manifest, workers, gpus, again)
        if (latest_step(run) or 0) < cfg.train.steps:
            launch(cfg, run, address, quiet=not verbose, dashboard_host=host)
        _before_after(payload, cfg, run, workers, gpus)
    except (LaunchError, DatasetError, PairsError, ValueError) as err:
        fail(str(err))
    except Interrupted as stop:
        _report_interrupt(stop, again)
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with:\n  {shlex.join(again)}", markup=False)
        raise typer.Exit(code=130) from None


def _scores(checkpoint: str, cfg, path: Path, workers: int, gpus: bool) -> dict:
    """A checkpoint's scores with ``cfg``'s samplers, computed once and kept in ``path``."""
    import torch

    from loomray.cli.common import _evaluate_on_workers
    from loomray.evaluation.evaluate import write_results
    from loomray.evaluation.evaluator import make_evaluator
    from loomray.reflow.chain import read_scores

    scores = read_scores(path, cfg)
    if scores is not None:
        return scores
    evaluator = make_evaluator(cfg, "train", None, "cuda" if torch.cuda.is_available() else "cpu")
    methods = list(cfg.eval.methods)
    rows = _evaluate_on_workers(checkpoint, methods, cfg.eval.n, evaluator, workers, gpus, None)
    write_results(rows, path.parent, path.stem)
    return read_scores(path) or {}


def _before_after(payload, cfg, run: Path, workers: int, gpus: bool) -> None:
    """The table of scores before and after; the reflowed model's are its run's final
    evaluation when that used these settings, else they are computed here."""
    import json

    from loomray.checkpoint import resolve_checkpoint
    from loomray.reflow.chain import before_after, read_scores, scores_path, trained_scores_path

    before = _scores(
        payload["path"], cfg, scores_path(run, "source", payload["step"], cfg), workers, gpus
    )
    after = read_scores(trained_scores_path(run, cfg.train.steps), cfg)
    if after is None:
        final = str(resolve_checkpoint(run / "train"))
        path = scores_path(run, "reflowed", cfg.train.steps, cfg)
        after = _scores(final, cfg, path, workers, gpus)
    rows = before_after(before, after)
    table = Table(title=f"reflow {run}: {cfg.eval.n} samples per sampler")
    for col in ("sampler", "NFE", f"{rows[0]['metric']} before", "after"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["method"], f"{r['nfe']:g}", f"{r['before']:.3f}", f"{r['after']:.3f}")
    console.print(table)
    summary = run / "eval" / "reflow.json"
    summary.write_text(json.dumps(rows, indent=2))
    console.print(f"wrote {summary}", markup=False)


@bench_app.command("pairs")
def bench_pairs_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="section.key=value overrides."),
    workers: str = typer.Option("1,2", help="Comma-separated worker counts to time."),
    n: int = typer.Option(20_000, help="Pairs per timing."),
    sampler: str = typer.Option("rk4-8", help="Sampler (fixed-step: its cost is known)."),
    repeats: int = typer.Option(2, help="Timed rounds over the worker counts."),
    address: str = typer.Option(None, help="Ray cluster to join (default: a local Ray)."),
) -> None:
    """Reflow pairs/s with 1, 2, ... Ray workers (the same pairs every time)."""
    from loomray.bench.reflow import bench_pairs
    from loomray.cluster.connect import LaunchError, connect
    from loomray.data.pairs import PairsError

    counts = sorted(set(_worker_counts(workers)))
    if n < 1 or repeats < 1:
        fail(f"--n and --repeats must be at least 1, got {n} and {repeats}")
    cfg = _config_or_fail(config, list(overrides or []))
    try:
        connect(address, quiet=True)
        with console.status(f"{cfg.name}: making {n} pairs ({sampler}) per timing..."):
            runs = bench_pairs(cfg, counts, n, sampler, repeats)
    except (LaunchError, PairsError) as err:
        fail(str(err))
    table = Table(title=f"{cfg.name}: {n} pairs ({sampler}) per timing")
    for col in ("workers", "seconds (median)", "pairs/s", "speed-up"):
        table.add_column(col, justify="right")
    for w, seconds, speedup in scaling(runs, counts):
        table.add_row(str(w), f"{seconds:.2f}", f"{n / seconds:.0f}", f"{speedup:.2f}x")
    console.print(table)
    console.print(f"per round: {', '.join(f'{r.workers}w {r.seconds:.2f}s' for r in runs)}")


@bench_app.command("reflow")
def bench_reflow_cmd(
    config: str = typer.Option("digits", "--config", "-c", help="Preset name or YAML path."),
    overrides: list[str] = typer.Argument(None, help="Overrides of the source runs."),
    seeds: int = typer.Option(3, help="Seeds per coupling."),
    pairs: int = typer.Option(50_000, help="Pairs per reflow."),
    steps: int = typer.Option(10_000, help="Reflow training steps."),
    sampler: str = typer.Option("rk4-8", help=SAMPLER_HELP),
    n: int = typer.Option(None, help="Samples per score (default: eval.n)."),
    out: str = typer.Option("bench-reflow", help="Folder for runs, the table and the plot."),
    kinds: str = typer.Option(
        "independent,minibatch-ot,loom", help="Couplings to compare, comma-separated."
    ),
) -> None:
    """Reflow from independent, minibatch-OT and LOOM models alike: FID before and after,
    the FID of the pairs themselves (the floor) and the final reflow loss."""

    from loomray.bench.quality import KINDS
    from loomray.bench.reflow import run_reflow_study
    from loomray.data import DatasetError
    from loomray.data.pairs import PairsError
    from loomray.evaluation.weights import EvaluationError
    from loomray.paths import folder_to_write
    from loomray.reflow.chain import ReflowError

    cfg = _config_or_fail(config, list(overrides or []))
    folder = _path_or_fail(folder_to_write, out, "--out")
    if min(seeds, pairs, steps) < 1:
        fail(f"--seeds, --pairs and --steps must be at least 1, got {seeds}, {pairs}, {steps}")
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if not chosen or set(chosen) - set(KINDS) or len(set(chosen)) < len(chosen):
        fail(f"--kinds takes distinct couplings among {', '.join(KINDS)}, got {kinds!r}")
    count = n or cfg.eval.n
    keep_results(folder, "reflow.json")
    with locked_or_fail(folder, "output folder"):
        try:
            runs = run_reflow_study(
                cfg,
                seeds,
                pairs,
                steps,
                sampler,
                folder,
                count,
                log=lambda line: console.print(line, markup=False),
                kinds=chosen,
            )
        except (EvaluationError, DatasetError, PairsError, ReflowError) as err:
            fail(str(err))
        _reflow_study_outputs(folder, cfg, runs, seeds, pairs, steps, sampler, count)


def _reflow_study_outputs(folder, cfg, runs, seeds, pairs, steps, sampler, count) -> None:
    """The table, reflow.json and the plot of `bench reflow`."""
    import json

    from loomray.bench.reflow import METHODS, plot_reflow, summarize

    summary = summarize(runs)
    table = Table(title=f"{cfg.name}: FID before -> after reflow (mean ± std, {seeds} seeds)")
    table.add_column("sampler")
    for kind in summary:
        table.add_column(kind, justify="right")
    for m in METHODS:
        cells = [summary[k][m] for k in summary]
        table.add_row(m, *(f"{b:.2f} ± {bs:.2f} -> {a:.2f} ± {as_:.2f}" for b, bs, a, as_ in cells))
    table.add_row(
        f"pairs ({sampler})",
        *(f"{summary[k]['pairs'][0]:.2f} ± {summary[k]['pairs'][1]:.2f}" for k in summary),
    )
    table.add_row("reflow loss", *(f"{summary[k]['loss'][0]:.4f}" for k in summary))
    console.print(table)
    (folder / "reflow.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "pairs": pairs,
                "steps": steps,
                "sampler": sampler,
                "n": count,
                "runs": [r.__dict__ for r in runs],
            },
            indent=2,
        )
    )
    title = f"{cfg.name}: reflow with {pairs} pairs ({sampler}), {steps} steps, {seeds} seeds"
    plot = plot_reflow(summary, "fid", folder / "reflow.png", title)
    console.print(f"wrote {folder / 'reflow.json'} and {plot}", markup=False)
