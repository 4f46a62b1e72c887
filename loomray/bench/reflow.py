"""`loomray bench reflow` and `loomray bench pairs`: what reflow gains, what pairs cost.

The study (``run_reflow_study``): for each seed, the same model is trained with
independent, minibatch-OT and LOOM coupling (as `bench quality` does), each is
scored at few NFE, reflowed with the same number of pairs, sampler and steps
(the ``<source>-reflow`` preset), and scored again with the same evaluation
noise. The paper's claim: reflow from a LOOM model beats reflow from an
independently coupled one (2-Rectified Flow) at 1 NFE.

The benchmark (``bench_pairs``): pairs/s of `loomray pairs` on 1, 2, ... Ray
workers, making the same pairs each time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from loomray.bench.quality import KINDS  # the same three couplings, side by side
from loomray.checkpoint import load_checkpoint, save_checkpoint
from loomray.config import Config
from loomray.data.pairs import mean_nfe
from loomray.evaluation.evaluate import evaluate_model
from loomray.evaluation.evaluator import make_evaluator
from loomray.reflow.chain import reflow_config, reflow_preset
from loomray.reflow.generate import generate_pairs, plan_pairs
from loomray.train.loop import train_local

METHODS = ("euler-1", "euler-2", "midpoint-1")


@dataclass
class ReflowRun:
    kind: str
    seed: int
    before: dict[str, float]
    after: dict[str, float]
    pairs_nfe: float
    seconds: float
    pairs_fid: float = float("nan")  # the pairs' own images: the floor reflow can reach
    reflow_loss: float = float("nan")  # mean loss of the last tenth of the reflow steps


def run_reflow_study(
    cfg: Config,
    seeds: int,
    pairs: int,
    steps: int,
    sampler: str,
    folder: Path,
    n: int,
    log=print,
    kinds: tuple[str, ...] = KINDS,
) -> list[ReflowRun]:
    """Every (seed, coupling): train, score, make pairs, score the pairs' images (the
    floor), reflow, score. One thread (torch and BLAS): the model is small and two
    threads fight over two cores."""
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        evaluator = make_evaluator(cfg)
        preset = reflow_preset(cfg)
        runs = []
        for seed in range(seeds):
            for kind in kinds:
                start = time.perf_counter()
                home = folder / f"{kind}-seed{seed}"
                base = replace(
                    cfg,
                    train=replace(cfg.train, seed=seed, workers=1),
                    coupling=replace(cfg.coupling, kind=kind, seed=seed),
                )
                source = train_local(base)
                ckpt = save_checkpoint(home / "source.pt", source.state.payload(base))
                model = source.state.ema.model
                before = evaluate_model(model, base, METHODS, n, evaluator)
                payload = load_checkpoint(ckpt)
                manifest = plan_pairs(payload, pairs, sampler, seed=seed)
                generate_pairs(payload, home / "pairs", manifest, 0)
                floor = pairs_score(home / "pairs", n, evaluator)
                extra = [f"train.steps={steps}", f"train.seed={seed}", "train.workers=1"]
                reflowed = train_local(reflow_config(base, ckpt, home / "pairs", preset, extra))
                after = evaluate_model(reflowed.state.ema.model, base, METHODS, n, evaluator)
                run = ReflowRun(
                    kind,
                    seed,
                    {r.method: r.value for r in before},
                    {r.method: r.value for r in after},
                    mean_nfe(home / "pairs", manifest),
                    time.perf_counter() - start,
                    floor,
                    tail_loss(reflowed.history.losses),
                )
                runs.append(run)
                log(
                    f"seed {seed} {kind:>12}: "
                    + "  ".join(f"{m} {run.before[m]:.2f} -> {run.after[m]:.2f}" for m in METHODS)
                    + f"  pairs {floor:.2f}  reflow loss {run.reflow_loss:.4f}"
                )
        return runs


def pairs_score(folder: Path, n: int, evaluator) -> float:
    """The score of the first ``n`` generated images of a pairs folder: what a reflowed
    model that fit its pairs exactly would reach."""
    from loomray.data.pairs import PairsDataset

    pairs = PairsDataset(folder)
    return evaluator.score(pairs.items(np.arange(min(n, pairs.n_items))))


def tail_loss(losses: list[float]) -> float:
    """The mean loss of the last tenth of a run's steps."""
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


def summarize(runs: list[ReflowRun]) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """kind -> method -> (before mean, before std, after mean, after std) over seeds, and
    kind -> "pairs" and "loss" -> (mean, std) for the pairs' floor and the reflow loss."""
    out = {}
    for kind in dict.fromkeys(r.kind for r in runs):
        mine = [r for r in runs if r.kind == kind]
        out[kind] = {}
        for m in METHODS:
            b = [r.before[m] for r in mine]
            a = [r.after[m] for r in mine]
            out[kind][m] = tuple(float(f(v)) for v in (b, a) for f in (np.mean, np.std))
        for key, values in (
            ("pairs", [r.pairs_fid for r in mine]),
            ("loss", [r.reflow_loss for r in mine]),
        ):
            out[kind][key] = (float(np.mean(values)), float(np.std(values)))
    return out


def plot_reflow(summary, metric: str, path: Path, title: str) -> Path:
    """One panel per sampler: each coupling's score before and after reflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METHODS), figsize=(4 * len(METHODS), 3.6), dpi=110)
    kinds = list(summary)
    x = np.arange(len(kinds))
    for ax, m in zip(axes, METHODS, strict=True):
        stats = [summary[k][m] for k in kinds]
        for shift, mean, std, label, color in (
            (-0.2, 0, 1, "before", "#bbbbbb"),
            (0.2, 2, 3, "after reflow", "#3b75af"),
        ):
            ax.bar(
                x + shift,
                [s[mean] for s in stats],
                0.4,
                yerr=[s[std] for s in stats],
                label=label,
                capsize=3,
                color=color,
            )
        ax.set_xticks(x, kinds)
        ax.set_title(m)
        ax.set_ylabel(metric.upper())
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class PairsBenchRun:
    workers: int
    repeat: int
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


def bench_pairs(
    cfg: Config, workers: list[int], n: int, sampler: str, repeats: int = 1
) -> list[PairsBenchRun]:
    """Ray must be connected. The source is the config's model at its initial weights
    (a fixed-step sampler's cost does not depend on them); shards are sized so that
    every worker count has work for all its workers."""
    torch.manual_seed(cfg.train.seed)
    from loomray.models import build_model

    model = build_model(cfg)
    payload = {"config": cfg.to_dict(), "step": 0, "ema": model.state_dict()}
    out = []
    with tempfile.TemporaryDirectory(prefix="loomray-bench-pairs-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / "source.pt", payload)
        payload = load_checkpoint(ckpt)
        shards = 4 * max(workers)
        batch = min(cfg.eval.batch, max(1, n // shards))
        manifest = plan_pairs(payload, n, sampler, batch, batch * max(1, n // (shards * batch)))
        generate_pairs(payload, Path(tmp) / "warm", manifest, max(workers))  # start the workers
        for repeat in range(repeats):
            for w in workers:
                folder = Path(tmp) / f"{w}-{repeat}"
                start = time.perf_counter()
                generate_pairs(payload, folder, manifest, w)
                out.append(PairsBenchRun(w, repeat, n, time.perf_counter() - start))
    return out
