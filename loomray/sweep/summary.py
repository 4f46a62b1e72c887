"""The outputs of a sweep: its table of trials, the Pareto front, best.yaml and the plot."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loomray.config import dump_config
from loomray.files.durable import replacing, write_text
from loomray.sweep.reuse import pruned_training
from loomray.sweep.spec import SweepSpec


@dataclass
class SweepResult:
    dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    trained: int
    finished: int
    interrupted: bool
    files: dict[str, Path]
    seconds: float
    busy: tuple[str, float, float] | None = None  # resource, how many, share held
    concurrency: int = 0
    waited_s: float = 0.0  # trial-seconds spent in a slot waiting for another's training


def _trial_rows(spec: SweepSpec, grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        m = result.metrics or {}
        params = dict(result.config or m.get("config") or {})
        if "trial_id" not in m or not params:
            continue  # suggested but never started (an interrupted sweep); resume runs it
        if m.get("final"):  # the trial's own last report
            status = "done"
        elif result.error:
            status = "error"
        elif m.get("pruned") or (
            "prune_step" in m and pruned_training(spec.dir / "models" / m["model"])
        ):  # ASHA stopped its training
            status = "pruned"
        else:  # the sweep was interrupted; resume runs it
            status = "pending"
        row = {
            "trial": m["trial_id"],
            "status": status,
            **{k: params.get(k) for k in spec.space},
            "method": m.get("method") or spec.method_of(params),
            "nfe": m.get("nfe"),
            spec.metric: m.get(spec.metric),
            "step": m.get("step", m.get("prune_step")),
            "model": m.get("model"),
            "trained": bool(m.get("trained", False)),
            "error": failure(result.error) if status == "error" else None,
        }
        rows.append(row)
    rows.sort(key=lambda r: (r[spec.metric] is None, r[spec.metric] or 0.0))
    return rows


def slot_waits(spec: SweepSpec) -> float:
    """Seconds that trials which only scored a model spent in their slots before that
    model was trained (by another trial), from the trials' records and the models'
    done.json times."""
    import json

    waited = 0.0
    for path in (spec.dir / "trials").glob("*.json"):
        try:
            r = json.loads(path.read_text())
            if not r.get("final") or r.get("trained"):
                continue
            started = path.stat().st_mtime - float(r["trial_seconds"])
            done = (spec.dir / "models" / r["model"] / "done.json").stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        waited += max(0.0, done - started)
    return waited


def failure(error: BaseException | None) -> str:
    """Why a trial failed, in one line: loomray's own sentence when it gave one (those
    start with ``loomray: ``), else the last line of the error."""
    from loomray.train.launch import loomray_reason

    lines = [x.strip() for x in str(error or "").splitlines() if x.strip()]
    return loomray_reason(error or "") or (lines[-1] if lines else "unknown")[:300]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any(
            (c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def plot_sweep(spec: SweepSpec, rows: list[dict[str, Any]], path: Path) -> Path:
    """FID against NFE, one line per cache count (best score per NFE), and the rows
    marked ``pareto`` (by ``summarize``) as the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r[spec.metric] is not None]
    groups: dict[Any, dict[float, float]] = {}
    for r in done:
        caches = r.get("coupling.caches", "base")
        best = groups.setdefault(caches, {})
        best[r["nfe"]] = min(best.get(r["nfe"], math.inf), r[spec.metric])
    fig, ax = plt.subplots(figsize=(6, 4))
    for caches in sorted(groups, key=str):
        pts = sorted(groups[caches].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"K={caches}")
    front = sorted((r["nfe"], r[spec.metric]) for r in done if r.get("pareto"))
    if front:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            "k--",
            where="post",
            label="Pareto front",
            alpha=0.7,
        )
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in done})
    if nfes:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(nfes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE")
    ax.set_ylabel(spec.metric.upper() if spec.metric == "fid" else "energy distance")
    ax.set_title(f"sweep {spec.name}: best per NFE, {len(done)} trials")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize(spec: SweepSpec, grid, seconds: float) -> SweepResult:
    """Write trials.parquet, best.yaml and the plot from a finished (or stopped) sweep."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _trial_rows(spec, grid)
    done = [r for r in rows if r["status"] == "done" and r[spec.metric] is not None]
    front = set(pareto_front([(r[spec.metric], r["nfe"]) for r in done])) if spec.multi else set()
    for r in rows:
        r["pareto"] = False
    for i in front:
        done[i]["pareto"] = True
    files: dict[str, Path] = {}
    if rows:
        files["trials"] = spec.dir / "trials.parquet"
        table = pa.Table.from_pylist([{k: _plain(v) for k, v in r.items()} for r in rows])
        with replacing(files["trials"]) as tmp:
            pq.write_table(table, tmp)
    best = None
    if done:
        # the best FID (with several objectives, it is on the Pareto front anyway)
        best = min(done, key=lambda r: r[spec.metric])
        params = {k: best[k] for k in spec.space}
        cfg, method = spec.trial_config(params)
        # its own name, so that training it anew goes to runs/<sweep>-best, not to the
        # base preset's runs/<preset> (a run of another config, most likely)
        cfg = replace(cfg, name=f"{spec.name}-best")
        files["best"] = spec.dir / "best.yaml"
        model = spec.dir / "models" / best["model"]
        write_text(
            files["best"],
            f"# Best of sweep {spec.name}: {spec.metric} {best[spec.metric]:.4f} with {method} "
            f"({best['nfe']:g} NFE), trial {best['trial']}.\n"
            f"# Its trained model: {model}\n"
            f"#   {shlex.join(['loomray', 'evaluate', '--ckpt', str(model)])}\n"
            f"# Train it anew (into runs/{cfg.name}): "
            f"{shlex.join(['loomray', 'train', '--config', str(files['best'])])}\n"
            + dump_config(cfg),
        )
        files["plot"] = plot_sweep(spec, rows, spec.dir / "fid-vs-nfe.png")
    trained = sum(1 for r in rows if r["trained"])
    interrupted = len(rows) < spec.trials or any(r["status"] in ("error", "pending") for r in rows)
    return SweepResult(
        dir=spec.dir,
        rows=rows,
        best=best,
        trained=trained,
        finished=len(done),
        interrupted=interrupted,
        files=files,
        seconds=seconds,
        waited_s=slot_waits(spec),
    )


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
