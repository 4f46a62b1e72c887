"""`loomray bench train`: what the coupling service costs the training loop.

Runs the same config for the same number of steps with coupling ``loom`` and
with ``independent`` (which still goes through the service, so the comparison
isolates the solve, not the plumbing), in one invocation, and reads the
throughput and the workers' wait on the service from each run's own per-window
metrics (medians over windows; the first window, with start-up, is left out).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from loomray.config import Config
from loomray.train.launch import launch


@dataclass
class TrainBenchRun:
    kind: str
    steps_per_s: float
    wait_fraction: float
    wait_ms: float
    solve_ms: float
    journal_bytes_per_step: float


def _measure(cfg: Config, kind: str, root: Path) -> TrainBenchRun:
    run_cfg = replace(cfg, coupling=replace(cfg.coupling, kind=kind))
    result = launch(run_cfg, root / kind, progress=False)
    lines = [json.loads(x) for x in (root / kind / "metrics.jsonl").read_text().splitlines()]
    steady = lines[1:] or lines
    # Medians over the windows: a shared machine's hiccups hit single windows.
    steps_per_s = float(np.median([x["images_per_s"] for x in steady])) / run_cfg.train.batch
    wait = float(np.median([x["wait_fraction"] for x in steady]))
    return TrainBenchRun(
        kind,
        steps_per_s,
        wait,
        1e3 * wait / steps_per_s,
        result.service.get("solve_ms", float("nan")),
        result.service.get("journal_bytes_per_step", float("nan")),
    )


@dataclass
class ScalingRun:
    workers: int
    batch: int
    images_per_s: float
    wait_fraction: float


def bench_scaling(
    cfg: Config, workers: list[int], batch_per_rank: int
) -> list[ScalingRun]:
    """LOOM at each worker count with the same batch per rank (global batch =
    workers x batch_per_rank): images/s from the runs' own metrics, as ``bench_train``."""
    out = []
    with tempfile.TemporaryDirectory(prefix="loomray-bench-") as tmp:
        for w in workers:
            train = replace(cfg.train, workers=w, batch=w * batch_per_rank)
            run = _measure(replace(cfg, train=train), "loom", Path(tmp) / f"w{w}")
            images = run.steps_per_s * train.batch
            out.append(ScalingRun(w, train.batch, images, run.wait_fraction))
    return out


def bench_train(cfg: Config, repeats: int = 1) -> list[list[TrainBenchRun]]:
    """``repeats`` x [loom, independent] on the same config, steps and workers.

    Runs alternate (loom, independent, loom, ...) so slow drifts of a shared
    machine hit both alike."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="loomray-bench-") as tmp:
        for i in range(repeats):
            base = Path(tmp) / f"repeat{i}"
            runs.append([_measure(cfg, kind, base) for kind in ("loom", "independent")])
    return runs
