"""Evaluation during training, shared by every rank.

At an evaluation step every rank samples its share of ``eval.n`` (global batches
k with k % world == rank, from the same noise per sample index whatever the
number of ranks) with the EMA weights and turns it into its share of the metric:
feature sums for FID, which are reduced (summed) onto rank 0 in float64; the
points themselves for toy2d, gathered onto rank 0. Rank 0 combines them, writes
``<run>/eval/eval-step<N>-train.json`` and sets the ``loomray_eval_quality``
gauge. So all ranks work during an evaluation and none waits inside a collective
while another samples, except on rank 0's first computation of the reference
statistics (once per dataset, then cached under the cache dir).

A failed evaluation never ends a run, and the ranks always agree: before
sampling, after sampling and at every later evaluation they exchange one small
status each; if any rank failed (missing FID weights, an error while sampling,
rank 0's scoring) evaluation is switched off on all of them, and rank 0 says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loomray.config import Config, run_label


def _gather(obj, world: int) -> list:
    """Every rank's small ``obj`` on every rank (the ranks' process group)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


class TrainingEvaluation:
    """The EMA model's FID (energy distance for toy2d) at ``eval.methods``, by all ranks."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        run_dir: Path,
        rank: int,
        world: int,
        label: str | None = None,
    ):
        self.cfg, self.device, self.run_dir = cfg, device, run_dir
        # the metrics' run tag: the service's, as the driver computed it
        self.label = label or run_label(cfg, run_dir)
        self.rank, self.world = rank, world
        self.evaluator = None
        self.disabled = False
        self.problem: str | None = None  # rank 0's own failure, told at the next status
        self.gauge = None

    def _agree(self, problem: str | None) -> bool:
        """One status from every rank; False (and evaluation off) if any failed."""
        statuses = _gather(problem, self.world)
        failed = next((s for s in statuses if s), None)
        if failed and not self.disabled and self.rank == 0:
            print(f"loomray: evaluation during training is off: {failed}", flush=True)
        self.disabled = self.disabled or bool(failed)
        return not failed

    def require(self) -> None:
        """Before training, on every rank: the evaluation can run (its weights load,
        its reference statistics exist), or every rank raises, naming the problem.
        For trainings whose purpose is their score (a sweep's), which must not find
        out after all their steps that it cannot be computed."""
        statuses = _gather(self._prepare(), self.world)
        failed = next((s for s in statuses if s), None)
        if failed:
            raise RuntimeError(f"loomray: the evaluation this training needs cannot run: {failed}")

    def _prepare(self) -> str | None:
        from loomray.evaluation.evaluator import make_evaluator

        if self.disabled:
            return "switched off earlier"
        try:
            if self.evaluator is None:
                self.evaluator = make_evaluator(
                    self.cfg, "train", None, str(self.device), with_reference=self.rank == 0
                )
            return self.problem
        except Exception as err:  # any rank's failure is every rank's (see above)
            return f"rank {self.rank}: {err}"

    def _my_share(self, model: torch.nn.Module):
        from loomray.evaluation.evaluate import sample_shares

        cfg = self.cfg
        try:
            parts = sample_shares(
                model,
                cfg,
                cfg.eval.methods,
                cfg.eval.n,
                self.evaluator,
                self.device,
                self.rank,
                self.world,
            )
            return parts, None
        except Exception as err:
            return None, f"rank {self.rank}: {type(err).__name__}: {err}"
        finally:
            model.train(False)

    def run(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Every rank calls this at the same steps; rank 0 gets the figures."""
        if not self._agree(self._prepare()):
            return {}
        parts, problem = self._my_share(model)
        if not self._agree(problem):
            return {}
        combined = self._collect(parts)
        if self.rank != 0:
            return {}
        try:
            return self._score(combined, step)
        except Exception as err:  # told to every rank at the next evaluation
            self.problem = f"rank 0: {type(err).__name__}: {err}"
            print(f"loomray: evaluation at step {step} failed: {self.problem}", flush=True)
            return {}

    def _collect(self, parts):
        """The ranks' parts onto rank 0: FID sums reduced in float64, toy2d points gathered."""
        if self.world == 1:
            return [parts]
        import torch.distributed as dist

        if self.evaluator.metric != "fid":
            out = [None] * self.world if self.rank == 0 else None
            dist.gather_object(parts, out, dst=0)
            return out
        return [self._reduce(parts)]

    def _reduce(self, parts):
        import torch.distributed as dist

        from loomray.evaluation.evaluate import MethodShare
        from loomray.evaluation.fid import FeatureSums

        on_gpu = dist.get_backend() == "nccl"
        dev = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        dim = self.evaluator.feature_dim
        out = {}
        for method in self.cfg.eval.methods:
            part = parts[method]
            sums = part.share or FeatureSums(0, np.zeros(dim), np.zeros((dim, dim)))
            head = torch.tensor([part.count, part.nfe_total, sums.n], dtype=torch.float64)
            tensors = [head, torch.from_numpy(sums.total), torch.from_numpy(sums.outer)]
            tensors = [t.to(dev, torch.float64) for t in tensors]
            for t in tensors:
                dist.reduce(t, dst=0)
            seconds = torch.tensor([part.seconds], dtype=torch.float64, device=dev)
            dist.reduce(seconds, dst=0, op=dist.ReduceOp.MAX)
            if self.rank == 0:
                (count, nfe_total, n), total, outer = (t.cpu().numpy() for t in tensors)
                share = FeatureSums(int(n), total, outer)
                out[method] = MethodShare(share, int(count), float(nfe_total), float(seconds))
        return out

    def _score(self, parts, step: int) -> dict[str, float]:
        from loomray.evaluation.evaluate import combine_shares, write_results

        rows = combine_shares(self.evaluator, self.cfg.eval.methods, self.cfg.eval.n, parts)
        write_results(rows, self.run_dir / "eval", f"eval-step{step:07d}-train")
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
            self.gauge.set(r.value, tags={"run": self.label, "method": r.method})
        return out
