"""The LOOM-CFM paper's FID protocol, beside the standard one (``eval.protocol``).

``standard`` (loomray's default) is what most papers quote: torch-fidelity's
``inception-v3-compat`` (the TF-Inception port) on uint8 images, against the
training split. ``paper`` is the authors' evaluation, as their code runs it:

* torcheval's ``FrechetInceptionDistance``: torchvision's Inception-v3 with its
  ImageNet weights (``inception_v3_google-0cc3c7bd.pth``, built with
  ``transform_input=True`` as ``weights="DEFAULT"`` builds it), ``fc`` removed,
  images as floats in [0, 1] resized to 299x299 (bilinear), no uint8 rounding;
* real images: drawn with replacement from the evaluation split by
  ``RandomSampler(replacement=True, num_samples=N, generator=Generator().manual_seed(42))``,
  N = 10,000 for CIFAR-10 (its test split) and 50,000 otherwise;
* generated images: ``0.5 * clamp(x, -1, 1) + 0.5``, 50,000 of them (``eval.n``).

The feature sums are float64 here (torcheval keeps float32): the same figure to
~1e-4 relative (tested against torcheval on the same inputs and weights).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PAPER_EXTRACTOR = "torchvision-inception-v3"
TORCHVISION_WEIGHTS = "inception_v3_google-0cc3c7bd.pth"
PAPER_SEED = 42


def real_count(dataset: str) -> int:
    """How many real images the authors' evaluation draws."""
    return 10_000 if dataset == "cifar10" else 50_000


def real_indices(split_size: int, count: int) -> torch.Tensor:
    """The authors' draw of real images: with replacement, torch's sampler, seed 42."""
    sampler = torch.utils.data.RandomSampler(
        range(split_size),
        replacement=True,
        num_samples=count,
        generator=torch.Generator().manual_seed(PAPER_SEED),
    )
    return torch.tensor(list(sampler), dtype=torch.int64)


def to_unit(samples: torch.Tensor) -> torch.Tensor:
    """Generated samples in [-1, 1] as the paper feeds them: floats in [0, 1]."""
    return 0.5 * torch.clamp(samples.float(), -1, 1) + 0.5


class PaperInception(nn.Module):
    """torcheval's FIDInceptionV3: resize to 299, torchvision's Inception-v3 without fc."""

    def __init__(self, state_dict: dict | None = None) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        if state_dict is None:  # torchvision's own weights: its cache, or a download
            self.model = inception_v3(weights="DEFAULT")
        else:
            self.model = inception_v3(
                weights=None, aux_logits=True, transform_input=True, init_weights=False
            )
            self.model.load_state_dict(state_dict)
        self.model.fc = nn.Identity()
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.model(x)


def paper_inception(weights: str | None, device: str) -> nn.Module:
    """The paper's feature network; ``weights``: a local torchvision Inception-v3 file."""
    from loomray.evaluation.weights import weights_state

    state = weights_state(weights, "paper") if weights else None
    return PaperInception(state).to(device)
