"""FID of the offline image sets (digits, mnist) in the features of a classifier
trained on the set itself.

Inception cannot be downloaded offline and means little on 8x8 or 28x28 grey
digits; a small classifier trained on a fixed 80% of the set (its accuracy on the
other 20% is reported beside every score) gives a real feature space instead.
Training is deterministic (fixed seed, split and order, full-precision CPU), the
result is cached under ``~/.cache/loomray`` and the network is registered with
torch-fidelity as a feature extractor, so an offline sweep has a real FID
objective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loomray.files.durable import replacing

FEATURES = 128  # the width of every classifier's feature layer


def cache_dir() -> Path:
    return Path(os.environ.get("LOOMRAY_CACHE", Path.home() / ".cache" / "loomray"))


class DigitsClassifier(nn.Module):
    """64 pixels -> 256 -> 128 features -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, FEATURES), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURES, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the features FID compares."""
        return self.features(x.reshape(len(x), -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class MnistClassifier(nn.Module):
    """28x28 -> three convolutions -> 128 features -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),  # 14x14
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),  # 7x7
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURES),
            nn.SiLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the features FID compares."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _digits_labelled() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    return x, torch.from_numpy(digits.target.astype(np.int64))


def _mnist_labelled() -> tuple[torch.Tensor, torch.Tensor]:
    from loomray.data import mnist_5k

    images, labels = mnist_5k()
    return torch.from_numpy(images).float() / 127.5 - 1.0, torch.from_numpy(labels)


@dataclass(frozen=True)
class OfflineSet:
    """An offline image set with a classifier FID."""

    name: str
    shape: tuple[int, int, int]
    network: Callable[[], nn.Module]
    labelled: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    epochs: int
    about: str

    @property
    def extractor(self) -> str:
        """The torch-fidelity feature extractor name."""
        return f"loomray-{self.name}-classifier"

    @property
    def cache_file(self) -> Path:
        return cache_dir() / f"{self.name}-classifier.pt"


SETS = {
    "digits": OfflineSet(
        "digits", (1, 8, 8), DigitsClassifier, _digits_labelled, 60, "a 64-256-128-10 MLP"
    ),
    "mnist": OfflineSet(
        "mnist", (1, 28, 28), MnistClassifier, _mnist_labelled, 8, "a three-convolution CNN"
    ),
}
EXTRACTORS = {s.extractor: s for s in SETS.values()}


def train_classifier(kind: OfflineSet, seed: int = 0) -> tuple[nn.Module, float]:
    """Deterministic: fixed seed, fixed split (80/20), full-precision CPU training.
    Returns the network and its accuracy on the held-out 20%."""
    x, y = kind.labelled()
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = kind.network()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(kind.epochs):
        perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model.eval(), accuracy


def classifier(name: str) -> tuple[nn.Module, float]:
    """The cached classifier of an offline set and its held-out accuracy (trained on
    first use)."""
    kind = SETS[name]
    if kind.cache_file.is_file():
        state = torch.load(kind.cache_file, map_location="cpu", weights_only=True)
        model = kind.network()
        model.load_state_dict(state["model"])
        return model.eval(), float(state["accuracy"])
    model, accuracy = train_classifier(kind)
    with replacing(kind.cache_file) as tmp:
        torch.save({"model": model.state_dict(), "accuracy": accuracy}, tmp)
    return model, accuracy


def register_extractor(name: str) -> str:
    """Register the set's classifier with torch-fidelity (once); its extractor name."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    kind = SETS[name]
    if kind.extractor in FEATURE_EXTRACTORS_REGISTRY:
        return kind.extractor

    class ClassifierFeatures(FeatureExtractorBase):
        def __init__(self, extractor_name, features_list, **kwargs):
            super().__init__(extractor_name, features_list)
            self.net, _ = classifier(name)
            self.requires_grad_(False)

        @staticmethod
        def get_provided_features_list():
            return (str(FEATURES), "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return str(FEATURES)

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, *kind.shape, dtype=torch.uint8)

        def forward(self, x):
            x = x.float().reshape(len(x), *kind.shape) / 127.5 - 1.0
            feats = self.net.embed(x)
            out = {str(FEATURES): feats, "logits": self.net.head(feats)}
            return tuple(out[f] for f in self.features_list)

    torch_fidelity.register_feature_extractor(kind.extractor, ClassifierFeatures)
    return kind.extractor
