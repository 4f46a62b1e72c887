"""`loomray train` and `loomray status`: run a training, and watch the runs."""

from __future__ import annotations

import time
from pathlib import Path

import click
import typer

from loomray.cli.common import (
    DASHBOARD_HOST_HELP,
    Table,
    _path_or_fail,
    _report_interrupt,
    _resolve_train_config,
    _show_dashboard,
    _starting,
    _warn_exposure,
    app,
    console,
    fail,
    locked_or_fail,
    plural,
)


def _node_count(stats: dict) -> int:
    """How many Ray nodes the ranks a coupling service serves run on."""
    return len({w["node"] for w in stats.get("workers", []) if w["node"]})


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


def _pick_local_cluster() -> str:
    """The local Ray cluster `loomray status` looks at: the one on this machine, or the
    one the user picks from the list (exit 2 with the list when nobody can pick)."""
    import sys

    from loomray.cluster.connect import local_clusters

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

    from loomray.cluster.connect import NAMESPACE, LaunchError, check_reachable, send_token
    from loomray.train.service import SERVICE_PREFIX

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
