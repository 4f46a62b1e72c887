"""Evaluation during training, shared by every rank.

At an evaluation step every rank samples its share of ``eval.n`` (global batches
k with k % world == rank, from the same noise per sample index whatever the
number of ranks) with the EMA weights, turns it into its share of the metric
(feature sums for FID) and the shares meet in one ``all_gather``; rank 0
combines them, writes ``<run>/eval/eval-step<N>-train.json`` and sets the
``loomray_eval_quality`` gauge. So all ranks work during an evaluation and no
rank waits for another inside a collective, except rank 0's first computation
of the reference statistics (once per dataset, then cached under the cache dir).

Missing FID weights must not end a long run: the first failure on any rank is
logged and evaluation is switched off on all of them, together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loomray.config import Config


def _gather(obj, world: int) -> list:
    """Every rank's ``obj`` on every rank (the ranks' process group)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


class TrainingEvaluation:
    """The EMA model's FID (energy distance for toy2d) at ``eval.methods``, by all ranks."""

    def __init__(self, cfg: Config, device: torch.device, run_dir: Path, rank: int, world: int):
        self.cfg, self.device, self.run_dir = cfg, device, run_dir
        self.rank, self.world = rank, world
        self.evaluator = None
        self.disabled = False
        self.gauge = None

    def _my_share(self, model: torch.nn.Module):
        from loomray.evaluate import EvaluationError, make_evaluator, sample_shares

        try:
            if self.evaluator is None:
                self.evaluator = make_evaluator(
                    self.cfg, "train", None, self.device.type, with_reference=self.rank == 0
                )
            cfg = self.cfg
            return sample_shares(
                model, cfg, cfg.eval.methods, cfg.eval.n, self.evaluator, self.device,
                self.rank, self.world,
            )
        except EvaluationError as err:
            return err
        finally:
            model.train(False)

    def run(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Every rank calls this at the same steps; rank 0 gets the figures."""
        from loomray.evaluate import combine_shares, write_results

        if self.disabled:
            return {}
        parts = _gather(self._my_share(model), self.world)
        failed = next((p for p in parts if isinstance(p, Exception)), None)
        if failed is not None:
            self.disabled = True
            if self.rank == 0:
                print(f"loomray: evaluation during training is off: {failed}", flush=True)
            return {}
        if self.rank != 0:
            return {}
        rows = combine_shares(self.evaluator, self.cfg.eval.methods, self.cfg.eval.n, parts)
        write_results(rows, self.run_dir / "eval", f"eval-step{step:07d}-train")
        return self._publish(rows)

    def _publish(self, rows) -> dict[str, float]:
        if self.gauge is None:
            from ray.util.metrics import Gauge

            self.gauge = Gauge(
                "loomray_eval_quality",
                "FID (energy distance for toy2d) of the EMA model per sampler.",
                tag_keys=("run", "method"),
            )
        out = {}
        for r in rows:
            out[f"{r.metric}/{r.method}"] = r.value
            out[f"nfe/{r.method}"] = r.nfe
            self.gauge.set(r.value, tags={"run": self.run_dir.name, "method": r.method})
        return out
