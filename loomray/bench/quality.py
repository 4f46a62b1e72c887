"""`loomray bench quality`: the result LOOM-CFM exists for, measured side by side.

For each seed, the same model is trained for the same steps with independent,
minibatch-OT and LOOM coupling (same data order, same initial weights, same
budget), then the EMA model is scored at low NFE and with dopri5. Next to the
quality, each run's coupling cost per pair is set against the exact global OT
cost of the dataset (the physical limit: one full linear assignment of all the
table's noises to all rows x caches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from loomray.config import Config
from loomray.coupling import AssignmentTable, global_ot_cost, table_cost
from loomray.data import build_dataset
from loomray.evaluation.evaluate import evaluate_model
from loomray.evaluation.evaluator import make_evaluator
from loomray.train.loop import train_local

KINDS = ("independent", "minibatch-ot", "loom")
METHODS = ("euler-1", "euler-2", "midpoint-1", "midpoint-2", "midpoint-4", "dopri5")


@dataclass
class QualityRun:
    kind: str
    seed: int
    scores: dict[str, float]
    nfe: dict[str, float]
    pair_cost: float
    """Mean cost of the pairs trained on (LOOM: the final table's mean pair cost)."""
    seconds: float
    metric: str = "fid"


def run_quality(
    cfg: Config, seeds: int, methods=METHODS, n: int | None = None, log=print, jobs: int = 1
) -> tuple[list[QualityRun], float, str]:
    """All runs, the global OT cost per pair, and the metric's name.

    Every run is on one thread (torch and BLAS): the models are small, and two
    threads of each fight over two cores; ``jobs`` runs go side by side in
    processes of their own. The runs do not depend on ``jobs``."""
    tasks = [(cfg, seed, kind, tuple(methods), n) for seed in range(seeds) for kind in KINDS]
    if jobs <= 1:
        with threadpool_limits(limits=1):
            evaluator = make_evaluator(cfg)  # one for all the runs of this process
        runs = []
        for task in tasks:
            runs.append(_one_run(*task, evaluator))
            log(_run_line(runs[-1]))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no forked torch or Ray state
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(_one_run, *task) for task in tasks]
            runs = []
            for future in futures:  # in order: the log reads as the table does
                runs.append(future.result())
                log(_run_line(runs[-1]))
    with threadpool_limits(limits=1):
        data = build_dataset(cfg)
        x_all = data.batch(np.arange(len(data))).numpy()
        table0 = AssignmentTable.create(len(data), cfg.coupling.caches, seed=0)
        global_pair = global_ot_cost(table0, x_all, cfg.coupling.cost)
    return runs, global_pair / (table0.rows * table0.caches), runs[0].metric


def _run_line(run: QualityRun) -> str:
    return (
        f"seed {run.seed} {run.kind:>12}: "
        + "  ".join(f"{m} {v:.3f}" for m, v in run.scores.items())
        + f"  pair cost {run.pair_cost:.4f}"
    )


def _one_run(
    cfg: Config, seed: int, kind: str, methods, n: int | None, evaluator=None
) -> QualityRun:
    """Train one (seed, coupling) and score its EMA model, on one thread (``evaluator``:
    the config's, built here when not given)."""
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        evaluator = evaluator or make_evaluator(cfg)
        run_cfg = replace(
            cfg,
            train=replace(cfg.train, seed=seed, workers=1),
            coupling=replace(cfg.coupling, kind=kind, seed=seed),
        )
        start = time.perf_counter()
        run = train_local(run_cfg)
        rows = evaluate_model(run.state.ema.model, run_cfg, methods, n or cfg.eval.n, evaluator)
        if kind == "loom":
            table = run.noise.coupling.table
            x_all = run.dataset.batch(np.arange(len(run.dataset))).numpy()
            pair = table_cost(table, x_all, cfg.coupling.cost) / (table.rows * table.caches)
        else:
            stats = run.noise.stats[-100:]
            pair = float(np.mean([s.post_cost for s in stats])) / cfg.train.batch
        return QualityRun(
            kind,
            seed,
            {r.method: r.value for r in rows},
            {r.method: r.nfe for r in rows},
            pair,
            time.perf_counter() - start,
            rows[0].metric,
        )


def summarize(runs: list[QualityRun], methods=METHODS) -> dict[str, dict[str, tuple]]:
    """kind -> method -> (mean, std) over seeds; plus 'pair_cost'."""
    out = {}
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        out[kind] = {
            m: (
                float(np.mean([r.scores[m] for r in mine])),
                float(np.std([r.scores[m] for r in mine])),
            )
            for m in methods
        }
        out[kind]["pair_cost"] = (
            float(np.mean([r.pair_cost for r in mine])),
            float(np.std([r.pair_cost for r in mine])),
        )
    return out


def plot_quality(summary, runs: list[QualityRun], metric: str, path: Path, title: str) -> Path:
    """Quality vs NFE, one line per coupling (fixed-step samplers), dopri5 as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, solver in zip(axes, ("euler", "midpoint"), strict=True):
        for kind in KINDS:
            methods = [m for m in summary[kind] if m.startswith(solver + "-")]
            nfe = [np.mean([r.nfe[m] for r in runs if r.kind == kind]) for m in methods]
            mean = [summary[kind][m][0] for m in methods]
            std = [summary[kind][m][1] for m in methods]
            line = ax.errorbar(nfe, mean, yerr=std, marker="o", capsize=3, label=kind)
            if "dopri5" in summary[kind]:
                ax.axhline(summary[kind]["dopri5"][0], ls=":", color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{solver} (dotted: dopri5)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
