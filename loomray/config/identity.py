"""What makes a run itself: its identity, digest and label, and its config written out."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from loomray.config.schema import Config


def run_identity(cfg: Config) -> dict[str, Any]:
    """What makes two configs the same run: everything but its length, its logging,
    checkpoints and retries (``RESULT_FREE``) and its scoring (a run is extended by
    raising train.steps, and scored with any sampler)."""
    d = cfg.to_dict()
    for key in (*RESULT_FREE, "workers"):  # workers: the global batch (train.batch) stays
        d["train"].pop(key)
    d.pop("eval")
    return d


RESULT_FREE = (
    "steps",
    "log_every",
    "ckpt_every",
    "keep_checkpoints",
    "sample_every",
    "max_failures",
)
"""train keys a resume may change: they never change what is trained (a run is
bit-identical whatever they are), only how long, and what is logged and kept."""


def run_id(cfg: Config) -> str:
    """A short digest of ``run_identity``: the coupling service's files carry it."""
    text = json.dumps(run_identity(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_label(cfg: Config, run_dir: str | os.PathLike) -> str:
    """How people and metrics tell runs apart: the run dir's name, and a digest of the
    run's identity (its config and absolute run dir), so that two runs whose folders
    share a name (``/a/runs/cifar10``, ``/b/runs/cifar10``) never meet."""
    run_dir = Path(run_dir).expanduser().resolve()
    key = hashlib.sha256(f"{run_id(cfg)}\0{run_dir}".encode()).hexdigest()[:12]
    return f"{run_dir.name}-{key}"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
