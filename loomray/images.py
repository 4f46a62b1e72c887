"""Writing samples where people look at them: image grids and 2-D scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_samples(x: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """[N, C, H, W] in [-1, 1] -> a PNG grid; [N, 2] points -> a PNG scatter plot."""
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
    save_image((x.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=1)
    return path
