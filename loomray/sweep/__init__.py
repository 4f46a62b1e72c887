"""`loomray sweep`: Ray Tune + Optuna over LOOM-CFM's knobs, FID as the objective.

    spec = load_spec("sweeps/caches-digits.yaml")
    result = run_sweep(spec)

A spec names a base config (preset or YAML) with dotted overrides, a search
space over any config key plus the sampler (``sampler.solver``,
``sampler.steps``, hence NFE), the objective (FID, or energy distance on toy2d,
at the trial's sampler; optionally NFE as a second objective), the number of
trials, their concurrency and resources, an optional ASHA scheduler on the FID
measured while training, and where it all goes. The spec is validated before
anything starts or is written.

Each trial is a Tune function trainable that launches a TorchTrainer with the
coupling service exactly as ``loomray train`` does. The sampler does not change
training, so trials are keyed by their *training* config: the first trial of a
key trains ``models/<key>/`` and every later trial of that key only evaluates
its checkpoint with its own sampler (a file lock per key makes concurrent
trials of one key wait instead of training twice; the OS drops the lock of a
killed trial). OptunaSearch (TPE, seeded) keeps its study in an Optuna journal
file, and Tune's experiment state makes ``--resume`` continue the same study.

A sweep directory holds::

    spec.yaml          the validated spec (resume refuses a changed one)
    optuna.journal     the Optuna study
    tune/              Ray Tune's experiment state and trial logs
    models/<key>/      one training run per training config (a `loomray train` run dir)
    trials/<id>.json   one record per finished trial
    trials.parquet     the table of trials
    best.yaml          the best trial's full config, ready for `loomray train --config`
    fid-vs-nfe.png     FID against NFE per cache count (Pareto front if multi-objective)
"""

from loomray.sweep.domain import DOMAINS, Domain, SweepError
from loomray.sweep.parse import load_spec, shipped_specs, spec_from_dict
from loomray.sweep.reuse import training_key
from loomray.sweep.run import TRIAL_MEMORY, prepare_sweep_dir, run_sweep
from loomray.sweep.spec import (
    DEFAULT_STORAGE,
    RESOURCES,
    SAMPLER_KEYS,
    SPEC_KEYS,
    SweepSpec,
    metric_of,
)
from loomray.sweep.summary import SweepResult, pareto_front, plot_sweep, summarize
from loomray.sweep.trial import run_trial

__all__ = [
    "DEFAULT_STORAGE",
    "DOMAINS",
    "RESOURCES",
    "SAMPLER_KEYS",
    "SPEC_KEYS",
    "TRIAL_MEMORY",
    "Domain",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "load_spec",
    "metric_of",
    "pareto_front",
    "plot_sweep",
    "prepare_sweep_dir",
    "run_sweep",
    "run_trial",
    "shipped_specs",
    "spec_from_dict",
    "summarize",
    "training_key",
]
