"""Sweep specs: what a sweep searches, how it is scored and scheduled, and the
config each trial trains. ``loomray.sweep.parse`` reads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomray.config import Config, load_config_values
from loomray.flow.sampling import parse_method
from loomray.sweep.domain import DOMAINS, Domain, SweepError

__all__ = ["DOMAINS", "Domain", "SweepError", "SweepSpec", "metric_of"]

SPEC_KEYS = (
    "name",
    "base",
    "overrides",
    "space",
    "sampler",
    "objective",
    "trials",
    "concurrency",
    "seed",
    "resources",
    "scheduler",
    "search",
    "storage",
    "same_images",
)
# Keys counted in steps: with same_images they are scaled by reference batch / batch.
STEP_KEYS = ("train.steps", "train.warmup", "train.ckpt_every", "train.sample_every", "eval.every")
SEARCHES = ("tpe", "grid")
SAMPLER_KEYS = ("sampler.solver", "sampler.steps")
RESOURCES = {
    "workers": "train.workers",
    "cpus_per_worker": "train.cpus_per_worker",
    "gpus_per_worker": "train.gpus_per_worker",
}
DEFAULT_STORAGE = "runs/sweeps"

SWEEP_KEEPS = 2  # checkpoints each of a sweep's trainings keeps, unless overridden


@dataclass
class SweepSpec:
    name: str
    base: str
    overrides: dict[str, Any]
    space: dict[str, Domain]
    sampler: dict[str, Any]
    objectives: tuple[str, ...]
    trials: int
    concurrency: int  # 0: auto, as many as the cluster can hold
    seed: int
    resources: dict[str, Any]
    scheduler: dict[str, Any] | None
    storage: Path
    source: str = ""
    search: str = "tpe"
    same_images: bool = False
    """Every trial sees as many images as the base's batch does in its steps: a trial
    of batch b trains steps x reference_batch / b (its warm-up, checkpoints and
    evaluations scaled alike, and its EMA decay so that the EMA averages over as
    many images), so that batch sizes compare at equal data, not equal steps."""
    reference_batch: int = 0
    put_aside: bool = True
    """False: a trial whose model another trial trains waits for it in its slot (as
    loomray did before; `loomray bench sweep` compares the two)."""

    @property
    def metric(self) -> str:
        """The score (fid, or energy on toy2d): the first objective."""
        return self.objectives[0]

    @property
    def dir(self) -> Path:
        return self.storage / self.name

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def method_of(self, params: dict[str, Any]) -> str:
        given = {k.removeprefix("sampler."): v for k, v in params.items() if k in SAMPLER_KEYS}
        return self.method_of_sampler({**self.sampler, **given})

    @staticmethod
    def method_of_sampler(sampler: dict[str, Any]) -> str:
        """``{solver: euler, steps: 2}`` -> ``euler-2`` (dopri5 has no steps)."""
        solver, steps = sampler["solver"], sampler["steps"]
        return parse_method(solver if solver == "dopri5" else f"{solver}-{int(steps)}").name

    def trial_config(self, params: dict[str, Any]) -> tuple[Config, str]:
        """The full config a trial trains (evaluated at its sampler) and that sampler."""
        method = self.method_of(params)
        # a sweep trains many models: each keeps its last 2 checkpoints unless told
        values = {"train.keep_checkpoints": SWEEP_KEEPS, **self.overrides}
        values.update({RESOURCES[k]: v for k, v in self.resources.items()})
        values.update({k: v for k, v in params.items() if k not in SAMPLER_KEYS})
        values["eval.methods"] = [method]
        # A searched key may act only in some combinations (coupling.caches with
        # coupling.kind searched too); each was checked against the base on its own.
        cfg = load_config_values(self.base, values, frozenset(self.space))
        if not self.same_images or "train.batch" not in params:
            return cfg, method
        scale = self.batch_scale(cfg.train.batch)
        for key in STEP_KEYS:
            section, name = key.split(".")
            steps = getattr(getattr(cfg, section), name)
            values[key] = max(1, round(steps * scale)) if steps else 0
        # the EMA's horizon in images too: 1 - decay is per step, so it scales with 1/scale
        if cfg.train.ema > 0:
            values["train.ema"] = max(0.0, 1.0 - (1.0 - cfg.train.ema) / scale)
        return load_config_values(self.base, values, frozenset(self.space)), method

    def batch_scale(self, batch: int) -> float:
        """Steps of batch ``batch`` per step of the reference batch (same_images), else 1."""
        return self.reference_batch / batch if self.same_images else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "overrides": dict(self.overrides),
            "space": {k: d.to_dict() for k, d in self.space.items()},
            "sampler": dict(self.sampler),
            "objective": list(self.objectives) if self.multi else self.metric,
            "trials": self.trials,
            "concurrency": self.concurrency or "auto",
            "seed": self.seed,
            "resources": dict(self.resources),
            "scheduler": dict(self.scheduler) if self.scheduler else None,
            **({"search": self.search} if self.search != "tpe" else {}),
            **({"same_images": True} if self.same_images else {}),
        }


def metric_of(cfg: Config) -> str:
    """The quality metric a config is scored with (see loomray.evaluation.evaluator)."""
    return "energy" if cfg.data.name == "toy2d" else "fid"
