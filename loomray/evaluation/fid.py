"""FID from shares: the feature statistics of sample sets that are combined by adding.

FID compares the mean and covariance of two feature sets. Both follow from three
sums, so every worker can take its share of the samples and only the sums travel::

    sums = FeatureSums.of(features_a) + FeatureSums.of(features_b)   # any split
    mu, sigma = sums.statistics()                                   # == np.mean, np.cov
    fid = frechet_distance(sums, reference)

Sums are float64 (a 2048-d Inception share is 2048 x 2048 x 8 bytes = 32 MB), so
the combined statistics equal those of all features at once to float64 rounding,
whatever the number of shares. Features come from torch-fidelity's extractors
(Inception, or the registered digits classifier) and the distance is
torch-fidelity's own ``fid_statistics_to_metric``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loomray.files.durable import replacing


@dataclass
class FeatureSums:
    """n, the sum of the features and the sum of their outer products."""

    n: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> FeatureSums:
        f = np.asarray(features, np.float64)
        return cls(len(f), f.sum(axis=0), f.T @ f)

    def __add__(self, other: FeatureSums) -> FeatureSums:
        return FeatureSums(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (unbiased) covariance, as ``np.mean`` and ``np.cov`` give them."""
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma

    def save(self, path: Path) -> None:
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, n=self.n, total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path: Path) -> FeatureSums | None:
        try:
            with np.load(path) as z:
                return cls(int(z["n"]), z["total"], z["outer"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # absent or unreadable: computed again (and written whole)


def frechet_distance(samples: FeatureSums, reference: FeatureSums) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    (mu1, s1), (mu2, s2) = samples.statistics(), reference.statistics()
    stats = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    return float(stats[KEY_METRIC_FID])


def extract_features(
    extractor: torch.nn.Module, images: torch.Tensor, device: str, batch: int = 200
) -> np.ndarray:
    """Features of images [N, C, H, W] (uint8 for torch-fidelity's extractors, whose one
    layer comes as a 1-tuple; floats for the paper's network)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            features = extractor(images[lo : lo + batch].to(device))
            if isinstance(features, tuple):
                (features,) = features
            out.append(features.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
