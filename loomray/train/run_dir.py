"""The run dir: created for a new run, or checked to hold this very run (a resume
may change only what does not change results: its length, logging, workers)."""

from __future__ import annotations

from pathlib import Path

import yaml

from loomray.cluster.connect import LaunchError
from loomray.config import Config, ConfigError, config_from_dict, dump_config, run_identity
from loomray.files.durable import write_text
from loomray.files.locks import holds_anything
from loomray.paths import PathError, folder_to_write


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, write: bool = True) -> bool:
    """Create the run dir, or check it holds this run; True when resuming.

    ``write=False`` only checks (the driver checks before starting Ray, and
    writes once the cluster has been found able to run it)."""
    try:
        folder_to_write(run_dir, "run dir")
    except PathError as err:
        raise LaunchError(str(err)) from err
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            raw = yaml.safe_load(config_path.read_text())
            if isinstance(raw, dict) and isinstance(raw.get("train"), dict):
                # Runs begun before the EMA warm-up existed go on with a fixed decay.
                raw["train"].setdefault("ema_warmup", False)
            old = config_from_dict(raw)
        except (ConfigError, yaml.YAMLError) as err:
            raise LaunchError(f"run dir {run_dir} has an unreadable config.yaml: {err}") from err
        # Extending a run, or scoring it with other samplers, is the same run.
        changes = _diff(run_identity(old), run_identity(cfg))
        if not changes and write and old.train.workers != cfg.train.workers:
            print(
                f"resuming with {cfg.train.workers} worker"
                f"{'s' if cfg.train.workers != 1 else ''} instead of "
                f"{old.train.workers}: the global batch stays {cfg.train.batch} and every "
                "step trains on the same images and noise, but the gradients are summed in "
                "another order, so the run is no longer bit-identical to one that kept "
                f"{old.train.workers}",
                flush=True,
            )
        if changes:
            raise LaunchError(
                f"run dir {run_dir} holds a run with another config ({changes[0]}"
                f"{f' and {len(changes) - 1} more' if len(changes) > 1 else ''}); "
                "pass another --run-dir"
            )
        if write:
            write_text(config_path, dump_config(cfg))
        return True
    if resume:
        raise LaunchError(f"nothing to resume: {run_dir} holds no loomray run")
    if holds_anything(run_dir):
        raise LaunchError(
            f"run dir {run_dir} is not empty and holds no loomray run; pass another --run-dir"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(config_path, dump_config(cfg))
    return False
