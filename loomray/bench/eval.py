"""`loomray bench eval`: wall time of one evaluation with 1, 2, ... Ray workers.

A model of the config is trained briefly in this process (a realistic velocity
field for dopri5's step control), then every worker count evaluates the same
checkpoint at the same samplers: sampling and featurizing split over the
workers, the scoring on the driver. A first untimed round starts the workers
(imports, the digits classifier) so the times compare evaluations, not start-up;
the figures of every worker count must agree (they are printed side by side).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from loomray.checkpoint import save_checkpoint
from loomray.config import Config
from loomray.evaluation.evaluator import make_evaluator
from loomray.evaluation.workers import evaluate_with_workers
from loomray.train.loop import train_local


@dataclass
class EvalBenchRun:
    workers: int
    repeat: int
    seconds: float
    values: dict[str, float]


def bench_eval(
    cfg: Config, workers: list[int], n: int, steps: int, repeats: int = 1
) -> list[EvalBenchRun]:
    """Ray must be connected; ``cfg.eval.methods`` are the samplers timed."""
    local = replace(cfg, train=replace(cfg.train, workers=1, steps=steps))
    run = train_local(local)
    evaluator = make_evaluator(cfg)
    if evaluator.metric == "fid":
        evaluator.reference_sums()  # once, outside the timings
    methods = list(cfg.eval.methods)
    out = []
    with tempfile.TemporaryDirectory(prefix="loomray-bench-eval-") as tmp:
        ckpt = str(save_checkpoint(Path(tmp) / "checkpoint.pt", run.state.payload(local)))
        evaluate_with_workers(ckpt, methods, n, evaluator, max(workers))  # start the workers
        for repeat in range(repeats):
            for w in workers:
                start = time.perf_counter()
                rows = evaluate_with_workers(ckpt, methods, n, evaluator, w)
                seconds = time.perf_counter() - start
                out.append(EvalBenchRun(w, repeat, seconds, {r.method: r.value for r in rows}))
    return out
