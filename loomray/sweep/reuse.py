"""Model reuse across samplers: trials are keyed by their *training* config.

The first trial of a key trains ``models/<key>/``; later trials of that key wait
on its file lock (flock: the OS drops the lock of a killed trial) and only
evaluate its checkpoint. The JSON records are written atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loomray.config import Config
from loomray.files.durable import write_text


def training_key(cfg: Config) -> str:
    """Trials whose configs differ only in evaluation share one trained model."""
    d = cfg.to_dict()
    d.pop("eval")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (flock: released by the OS if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


PRUNED_FILE = "pruned.json"


def pruned_training(model_dir: Path) -> dict[str, Any] | None:
    """What ASHA recorded when it stopped this training (``loomray.sweep.search``), if it did."""
    return _read_json(model_dir / PRUNED_FILE)
