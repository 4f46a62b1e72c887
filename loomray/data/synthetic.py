"""Random uint8 images of any shape, for benchmarks that need no real data."""

from __future__ import annotations

import numpy as np

from loomray.config import Config
from loomray.data.contract import ArrayDataset, RowDataset, register


@register("synthetic", root=False)
def _synthetic(cfg: Config, root) -> RowDataset:
    d = cfg.data
    n = d.limit or 50_000
    rng = np.random.default_rng(cfg.train.seed)
    shape = (n, d.channels, d.resolution, d.resolution)
    return ArrayDataset(rng.integers(0, 256, size=shape, dtype=np.uint8), d.flip)
