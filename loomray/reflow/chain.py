"""`loomray reflow`: pairs from a model, a fine-tune on them, FID before and after.

    cfg = reflow_config(source_cfg, Path("runs/digits/.../checkpoint.pt"), pairs_dir,
                        "digits-reflow", ["train.steps=2000"])

The reflow run takes its network from the source (``model`` section and image
shape) and starts from the source's EMA weights (``train.init``); everything
else comes from the reflow preset (``<source>-reflow``) and the overrides. Each
stage leaves files a rerun picks up: the pairs' shards, the run's checkpoints,
the scores of the source model (``<run>/eval/source-step<N>.json``) and of the
reflowed one (``<run>/eval/eval-step<N>-train.json``, the run's final evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path

from loomray.config import Config, ConfigError, config_from_dict, load_config, preset_names

DEFAULT_PAIRS = 1_000_000  # the paper's CIFAR-10 reflow
SMALL_DATA_PAIRS = {"digits": 50_000}  # ~28 pairs per image of the offline set


class ReflowError(ValueError):
    """A reflow cannot run as asked; the message says why."""


def reflow_preset(source: Config) -> str:
    """The preset a reflow of ``source`` starts from: ``<name>-reflow``."""
    for name in (f"{source.name}-reflow", f"{source.data.name}-reflow"):
        if name in preset_names():
            return name
    raise ReflowError(
        f"there is no reflow preset for {source.name} ({source.data.name} data); pass "
        "--config, e.g. a YAML file with base: cifar10-reflow and your changes"
    )


def default_pairs(source: Config) -> int:
    return SMALL_DATA_PAIRS.get(source.data.name, DEFAULT_PAIRS)


def reflow_config(
    source: Config, checkpoint: Path, pairs_dir: Path, preset: str, overrides: list[str]
) -> Config:
    """The reflow run's config: the preset and overrides, with the source's network,
    image shape and weights (``train.init``), trained on ``pairs_dir``."""
    try:
        cfg = load_config(preset, overrides)
        raw = cfg.to_dict()
        raw["model"] = source.to_dict()["model"]
        raw["data"].update(
            name="pairs",
            root=str(pairs_dir.expanduser().resolve()),
            resolution=source.data.resolution,
            channels=source.data.channels,
            flip=False,
            limit=None,
        )
        raw["coupling"]["kind"] = "pairs"
        raw["train"]["init"] = str(checkpoint.resolve())
        return config_from_dict(raw)
    except ConfigError as err:
        raise ReflowError(str(err)) from err


def scores_path(run_dir: Path, what: str, step: int, cfg: Config) -> Path:
    """Where the scores of the source (``what="source"``) or the reflowed model
    (``"reflowed"``) under ``cfg``'s evaluation settings are kept."""
    e = cfg.eval
    return run_dir / "eval" / f"{what}-step{step:07d}-n{e.n}-{e.protocol}.json"


def trained_scores_path(run_dir: Path, step: int) -> Path:
    """The run's own final evaluation (written by rank 0 during training)."""
    return run_dir / "eval" / f"eval-step{step:07d}-train.json"


def read_scores(path: Path, cfg: Config | None = None) -> dict[str, dict] | None:
    """sampler -> its row of an evaluation file, or None when there is none yet (or, given
    ``cfg``, when it lacks a sampler of ``cfg.eval.methods`` or was scored otherwise)."""
    if not path.is_file():
        return None
    try:
        rows = {row["method"]: row for row in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError):
        return None
    if cfg is not None and not all(
        m in rows and rows[m].get("n") == cfg.eval.n
        and rows[m].get("protocol") in (cfg.eval.protocol, "exact")
        for m in cfg.eval.methods
    ):
        return None
    return rows


def before_after(before: dict[str, dict], after: dict[str, dict]) -> list[dict]:
    """One row per sampler scored both times: NFE, the metric before and after."""
    rows = []
    for method, b in before.items():
        a = after.get(method)
        if a is not None:
            rows.append(
                {
                    "method": method,
                    "nfe": a["nfe"],
                    "metric": a["metric"],
                    "before": b["value"],
                    "after": a["value"],
                }
            )
    return rows
