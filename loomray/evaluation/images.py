"""Writing samples where people look at them: image grids and 2-D scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import torch

MIN_PIXELS = 32  # images smaller than this are scaled up in grids (8x8 digits: x4)


def grid_scale(resolution: int) -> int:
    """The default upscaling of a grid's images: each at least MIN_PIXELS wide."""
    return max(1, math.ceil(MIN_PIXELS / resolution))


GRID_MOST = 4096  # samples in one PNG grid (64 x 64 images: 2048 px wide at 32 px)


def save_sample_array(x: torch.Tensor, path: str | Path, seed: int) -> Path:
    """Samples as ``samples`` (float32, [-1, 1], as the model drew them) in a .npz,
    beside the ``seed`` they were drawn with."""
    import numpy as np

    from loomray.files.durable import replacing

    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=x.detach().float().cpu().numpy(), seed=np.int64(seed))
    return path


def save_samples(
    x: torch.Tensor, path: str | Path, title: str = "", scale: int | None = None
) -> Path:
    """[N, C, H, W] in [-1, 1] -> a PNG grid; [N, 2] points -> a PNG scatter plot.

    Grid images are scaled up ``scale`` times with nearest-neighbour pixels
    (default ``grid_scale``: an 8x8 digit becomes 32x32), so small images can be seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.dim() == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6)
        ax.set_aspect("equal")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    from torchvision.utils import save_image

    nrow = max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    factor = scale if scale is not None else grid_scale(x.shape[-1])
    if factor > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="nearest")
    save_image((x.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=factor)
    return path
