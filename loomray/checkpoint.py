"""Checkpoints: model, EMA, optimizer, step, RNG and config in one torch file.

Saved with plain tensors and Python scalars only, so loading uses
``torch.load(weights_only=True)`` and a checkpoint cannot run code. Configs of
older checkpoints load with missing keys taken from today's defaults.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from loomray.config import Config, ConfigError, config_from_dict
from loomray.files.durable import replacing
from loomray.files.tensor_files import TensorFileError, read_tensors

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a loomray checkpoint."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    with replacing(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    try:
        ckpt = read_tensors(path, "checkpoint")
    except TensorFileError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(ckpt, dict) or "format" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a loomray checkpoint")
    ckpt["path"] = str(path.resolve())  # Ray tasks and workers run in other folders
    return ckpt


def checkpoint_files(path: Path) -> list[Path]:
    """The checkpoint files of one checkpoint folder or run, latest first.

    ``path`` is a checkpoint folder (it holds ``checkpoint.pt`` or ``latest.pt``), a
    run dir (it holds ``config.yaml``) or a run's ``train/`` folder. Anything else is
    refused (CheckpointError), naming the runs it holds: a folder of several runs
    never silently stands for one of them, and nothing outside a run is searched."""
    for candidate in (path / "latest.pt", path / "checkpoint.pt"):
        if candidate.is_file():
            return [candidate]
    if (path / "config.yaml").is_file():
        return _run_checkpoints(path / "train")
    if path.name == "train" and (path.parent / "config.yaml").is_file():
        return _run_checkpoints(path)
    raise CheckpointError(_not_a_run(path))


def _run_checkpoints(train: Path) -> list[Path]:
    """A run's checkpoints (under its ``train/``), latest first: by the step in their
    ``step-N`` folder, then (older layouts) by time."""

    def order(p: Path) -> tuple[int, float]:
        name = p.parent.name
        step = int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else -1
        return step, p.stat().st_mtime

    return sorted(train.rglob("checkpoint.pt"), key=order, reverse=True)


def runs_under(path: Path, depth: int = 3, budget: int = 5000) -> list[Path]:
    """The run dirs (``config.yaml`` beside ``train/``) up to ``depth`` folders below
    ``path``, looking at no more than ``budget`` entries (``~`` is not walked)."""
    found: list[Path] = []
    frontier = [path]
    for _ in range(depth):
        below = []
        for folder in frontier:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                budget -= 1
                if budget < 0:
                    return found
                run = Path(entry.path)
                try:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue
                    is_run = (run / "config.yaml").is_file() and (run / "train").is_dir()
                except OSError:  # a folder we may not look into
                    continue
                (found if is_run else below).append(run)
        frontier = below
    return found


def _not_a_run(path: Path) -> str:
    runs = runs_under(path) if path.is_dir() else []
    neither = "neither a run dir (with config.yaml) nor a checkpoint folder"
    what = f"{path} is {neither}"
    if not runs:
        return f"no checkpoint found under {path}: it is {neither}"
    if len(runs) == 1:
        return f"{what}; it holds one run, {runs[0]}: pass that"
    names = ", ".join(str(r) for r in runs[:5]) + (f" and {len(runs) - 5} more" * (len(runs) > 5))
    return f"{what}; it holds {len(runs)} runs ({names}): pass one of them"


def resolve_checkpoint(path: Path) -> Path:
    """A run directory or checkpoint directory -> its latest checkpoint file."""
    found = checkpoint_files(path)
    if not found:
        raise CheckpointError(f"no checkpoint found under {path}: the run has none yet")
    return found[0]


def run_dir_of(checkpoint_file: str | os.PathLike) -> Path:
    """The run dir a checkpoint belongs to (``<run>/train/step-N/checkpoint.pt``), or the
    checkpoint's own folder when it is not in a run dir."""
    path = Path(checkpoint_file).resolve()
    run = path.parent.parent.parent
    if path.parent.parent.name == "train" and (run / "config.yaml").is_file():
        return run
    return path.parent


def latest_step(run_dir: str | os.PathLike) -> int | None:
    """The step of a run dir's latest readable checkpoint (read memory-mapped, so cheap
    for large models; a half-copied one, e.g. cut by Ctrl-C, is passed over), or None."""
    found = _latest_readable(run_dir)
    return int(found[1]["step"]) if found is not None else None


def _latest_readable(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """A run dir's latest checkpoint that reads (memory-mapped) and has a step, and its
    contents; a half-copied one is passed over, as Ray Train does."""
    for path in _run_checkpoints(Path(run_dir) / "train"):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            int(ckpt["step"])
        except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError):
            continue
        return path, ckpt
    return None


TABLE_FILE = "table.parquet"  # beside a LOOM run's checkpoint.pt


def check_loom_table(cfg: Config, run_dir: str | os.PathLike) -> None:
    """Refuse to resume a LOOM run whose latest checkpoint lost its table: LOOM would
    silently start its assignment over. A checkpoint imported from a release has none
    by nature (it says ``imported_from``), and there LOOM does start afresh."""
    found = _latest_readable(run_dir) if cfg.coupling.kind == "loom" else None
    if found is None:
        return
    path, ckpt = found
    if "imported_from" not in ckpt and not (path.parent / TABLE_FILE).is_file():
        raise CheckpointError(
            f"checkpoint {path.parent} of a LOOM run has no {TABLE_FILE}: resuming would "
            "start the noise assignment over; restore the file, or remove that "
            "checkpoint folder to resume from an earlier one"
        )


def config_of(ckpt: dict[str, Any]) -> Config:
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as err:
        raise CheckpointError(
            f"checkpoint {ckpt.get('path')} has an invalid config: {err}"
        ) from err


def ema_model_of(ckpt: dict[str, Any]) -> tuple[Config, torch.nn.Module]:
    """The EMA network of a checkpoint, in eval mode on the CPU."""
    from loomray.models import build_model

    cfg = config_of(ckpt)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["ema"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {ckpt.get('path')} has no usable EMA weights: {err}"
        ) from err
    return cfg, model.eval()


def init_weights(cfg: Config) -> dict[str, torch.Tensor] | None:
    """The EMA weights ``train.init`` names, checked against ``cfg``'s model, or None
    when the config has no ``train.init``; CheckpointError when they do not fit."""
    from loomray.models import build_model

    if not cfg.train.init:
        return None
    ckpt = load_checkpoint(Path(cfg.train.init).expanduser())
    state = ckpt.get("ema")
    if not isinstance(state, dict):
        raise CheckpointError(f"train.init {ckpt['path']} holds no EMA weights")
    try:
        build_model(cfg).load_state_dict(state)
    except RuntimeError as err:
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise CheckpointError(
            f"train.init {ckpt['path']} is a model of another shape than this config's "
            f"({first.strip().rstrip('.')})"
        ) from err
    return state
