"""Reflow pairs as a dataset (``loomray.pairs``): trained against their stored noise."""

from __future__ import annotations

from pathlib import Path

from loomray.config import Config
from loomray.data.contract import DatasetError, RowDataset, register


@register("pairs")
def _pairs_kind(cfg: Config, root: Path) -> RowDataset:
    d = cfg.data
    return _pairs(root, d.channels, d.resolution, d.limit)


def _pairs(root: Path, channels: int, resolution: int, limit: int | None) -> RowDataset:
    from loomray.pairs import PairsDataset

    if not root.is_dir():
        raise DatasetError(f"pairs not found: {root} is not a folder")
    pairs = PairsDataset(root)
    if pairs.shape != (channels, resolution, resolution):
        raise DatasetError(
            f"pairs folder {root} holds images of shape {pairs.shape}, the config wants "
            f"{(channels, resolution, resolution)}"
        )
    if limit is not None:
        pairs.data, pairs.seeds = pairs.data[:limit], pairs.seeds[:limit]
        pairs.n_items = len(pairs.data)
    return pairs
