"""scikit-learn's 8x8 digits (1,797 images, in the wheel): the offline default."""

from __future__ import annotations

import numpy as np
import torch

from loomray.config import Config
from loomray.data.contract import ArrayDataset, RowDataset, limited, register


@register("digits", root=False)
def _digits(cfg: Config, root) -> RowDataset:
    d = cfg.data
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0 * 2.0 - 1.0  # [1797, 8, 8]
    x = torch.from_numpy(images)[:, None]
    if d.resolution != 8:
        x = torch.nn.functional.interpolate(x, size=d.resolution, mode="bilinear")
    if d.channels != 1:
        x = x.repeat(1, d.channels, 1, 1)
    return ArrayDataset(limited(x.numpy(), d.limit), d.flip)
