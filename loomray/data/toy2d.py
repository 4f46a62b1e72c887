"""2-D toy targets (two moons, eight Gaussians): the toy2d preset's data."""

from __future__ import annotations

import numpy as np

from loomray.config import Config
from loomray.data.contract import ArrayDataset, RowDataset, register


def toy_points(kind: str, n: int, seed: int) -> np.ndarray:
    """2-D targets, scaled to about unit spread like the N(0, I) source."""
    rng = np.random.default_rng(seed)
    if kind == "moons":
        from sklearn.datasets import make_moons

        pts, _ = make_moons(n, noise=0.05, random_state=seed)
        pts = (pts - np.array([0.5, 0.25])) * np.array([1.5, 2.5])
    else:  # 8gaussians
        angles = 2 * np.pi * rng.integers(0, 8, n) / 8
        centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        pts = centers + 0.15 * rng.standard_normal((n, 2))
    return pts.astype(np.float32)


@register("toy2d", root=False)
def _toy2d(cfg: Config, root) -> RowDataset:
    d = cfg.data
    return ArrayDataset(toy_points(d.toy, d.toy_points, cfg.train.seed), flip=False)
