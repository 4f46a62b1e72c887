"""What a sweep will cost, before it starts: `loomray sweep SPEC --plan`.

    plan = plan_sweep(spec, gpus=16, gpu="H100")
    plan.gpu_hours, plan.wall_hours

A sweep trains one model per *training* configuration it meets (the sampler does
not change training), at most ``trials`` of them, and scores each trial's sampler.
The cost is the trainings' steps at a step rate: one measured on a named GPU
(``MEASURED``: one process's eager training step, which is bound by the host and
so about the same at the per-rank batches of the GPU presets), or one given. That
is an estimate of the training alone, low rather than high: DDP's all-reduce and
the coupling service add to a step, another machine of the same GPU ran the step
at 7.7 steps/s (docs/results.md), and in-training evaluation is listed apart, in
samples and network evaluations, not priced. ASHA stops some trainings early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loomray.flow.sampling import parse_method
from loomray.sweep.spec import SAMPLER_KEYS, SweepError, SweepSpec

# Steps/s of one eager training step of the preset's model per GPU rank (per-rank
# batch 32 to 128; docs/results.md, `loomray bench loop`).
MEASURED = {
    ("cifar10", "H200"): 11.0,
    ("cifar10", "H100"): 11.4,
    ("digits", "CPU"): 43.0,  # one CPU worker of a 2-core VM
}


@dataclass
class Model:
    params: dict
    steps: int
    batch: int
    gpus: int
    hours: float  # wall clock of its training


@dataclass
class Plan:
    trials: int
    configurations: int  # training configurations in the space (0: endless)
    models: list[Model] = field(default_factory=list)
    rate: float = 0.0
    rate_source: str = ""
    device: str = "GPU"  # what the hours count: GPUs, or CPU workers
    slots: int = 1  # trainings at once
    gpus: int = 0
    evaluations: int = 0  # in-training evaluations over all models
    samples: int = 0  # samples those draw
    nfe: float = 0.0  # network evaluations those spend

    @property
    def gpu_hours(self) -> float:
        return sum(m.hours * m.gpus for m in self.models)

    @property
    def wall_hours(self) -> float:
        """Trainings packed ``slots`` at a time, longest first."""
        lanes = [0.0] * max(1, self.slots)
        for m in sorted(self.models, key=lambda m: -m.hours):
            lanes[lanes.index(min(lanes))] += m.hours
        return max(lanes)


def _training_space(spec: SweepSpec) -> list[dict]:
    """Every training configuration of the space (its non-sampler keys), in order."""
    keys = [k for k in spec.space if k not in SAMPLER_KEYS]
    combos: list[dict] = [{}]
    for key in keys:
        values = spec.space[key].grid()
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def plan_sweep(
    spec: SweepSpec, gpus: int | None = None, gpu: str = "H100", rate: float | None = None
) -> Plan:
    """The cost of ``spec`` on ``gpus`` GPUs (default: its concurrency's worth)."""
    try:
        combos = _training_space(spec)
    except SweepError as err:
        raise SweepError(f"--plan needs a space of choices and integers: {err}") from err
    cfg0, _ = spec.trial_config({})
    preset = cfg0.name
    device = "GPU" if cfg0.train.gpus_per_worker else "CPU worker"
    gpu = gpu if device == "GPU" else "CPU"
    if rate is None:
        if (preset, gpu) not in MEASURED:
            known = ", ".join(f"{p} on {g}" for p, g in MEASURED)
            raise SweepError(
                f"no step rate measured for {preset} on {gpu} (measured: {known}); pass "
                "--rate STEPS_PER_S"
            )
        where = f"an {gpu}" if device == "GPU" else "a 2-core VM"
        rate, source = MEASURED[preset, gpu], f"measured on {where}, docs/results.md"
    else:
        source = "given"
    sampler = {k: spec.space[k].grid()[0] for k in SAMPLER_KEYS if k in spec.space}
    t = cfg0.train
    per_gpu = int(math.ceil(t.workers * t.gpus_per_worker)) if t.gpus_per_worker else t.workers
    if gpus is None and not spec.concurrency:
        raise SweepError(
            "concurrency: auto follows the cluster; pass --gpus N to plan for N GPUs"
        )
    slots = spec.concurrency or 1
    if gpus is not None:
        slots = max(1, gpus // max(per_gpu, 1))
    plan = Plan(spec.trials, len(combos), rate=rate, rate_source=source, slots=slots)
    plan.gpus, plan.device = (gpus if gpus is not None else slots * per_gpu), device
    if len(combos) > spec.trials:  # which ones TPE meets is not known: evenly spread
        combos = [combos[i * len(combos) // spec.trials] for i in range(spec.trials)]
    for params in combos:
        cfg, _ = spec.trial_config({**params, **sampler})
        plan.models.append(
            Model(params, cfg.train.steps, cfg.train.batch, per_gpu, cfg.train.steps / rate / 3600)
        )
        _count_evaluations(plan, spec, cfg)
    return plan


def _count_evaluations(plan: Plan, spec: SweepSpec, cfg) -> None:
    """One training's in-training evaluations: the reference sampler (ASHA's) and a
    trial's own, every eval.every steps and at the end."""
    every = cfg.eval.every or cfg.train.steps
    count = math.ceil(cfg.train.steps / every)
    methods = {spec.scheduler["sampler"]} if spec.scheduler else set()
    methods.add(spec.method_of({}))
    # dopri5 has no fixed count: counted as 100, about what it spends on a trained model
    nfe = sum(parse_method(m).nominal_nfe or 100 for m in methods)
    plan.evaluations += count
    plan.samples += count * cfg.eval.n * len(methods)
    plan.nfe += count * cfg.eval.n * nfe


def duration(hours: float) -> str:
    """``2.4 h``, or ``7 min`` below an hour."""
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
