"""The paper's FID protocol equals torcheval's FrechetInceptionDistance (the authors'
evaluation) on the same inputs and weights: random weights here, no download."""

import numpy as np
import pytest
import torch
from torcheval.metrics import FrechetInceptionDistance
from torcheval.metrics.image.fid import FIDInceptionV3
from torchvision.models import inception_v3

from loomray.evaluation.evaluator import Evaluator
from loomray.evaluation.fid import FeatureSums, frechet_distance
from loomray.evaluation.paper_fid import PAPER_EXTRACTOR, real_count, real_indices


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torchvision's Inception-v3 as weights="DEFAULT" builds it, with random weights."""
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_features_and_sums_are_torchevals(random_inception):
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=gen)
    fake = torch.rand((10, 3, 32, 32), generator=gen) * 2.4 - 1.2  # beyond [-1, 1]: clamped
    ours = Evaluator("fid", real, PAPER_EXTRACTOR, str(random_inception), protocol="paper")

    theirs_net = FIDInceptionV3(weights=None)
    theirs_net.model = inception_v3(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    theirs_net.model.load_state_dict(torch.load(random_inception, weights_only=True))
    theirs_net.model.fc = torch.nn.Identity()
    fid = FrechetInceptionDistance(model=theirs_net)
    fid.update(real.float() / 255.0, is_real=True)  # ToTensor's floats
    fid.update(0.5 * torch.clamp(fake, -1, 1) + 0.5, is_real=False)  # the authors' fakes

    real_sums, fake_sums = ours.reference_sums(), ours.share(fake)
    for sums, total, outer in (
        (real_sums, fid.real_sum, fid.real_cov_sum),
        (fake_sums, fid.fake_sum, fid.fake_cov_sum),
    ):
        assert sums.n == 10
        np.testing.assert_allclose(sums.total, total.double().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sums.outer, outer.double().numpy(), rtol=1e-4, atol=1e-3)


def test_the_distance_is_torchevals_formula():
    f = np.random.default_rng(0).standard_normal((400, 12))
    a, b = FeatureSums.of(f[:200]), FeatureSums.of(f[200:] * 1.3 + 0.2)
    (mu1, s1), (mu2, s2) = a.statistics(), b.statistics()
    fid = FrechetInceptionDistance(model=torch.nn.Identity(), feature_dim=12)
    theirs = fid._calculate_frechet_distance(
        torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2)
    )
    assert frechet_distance(a, b) == pytest.approx(float(theirs), rel=1e-9)


def test_the_real_images_are_the_authors_draw():
    idx = real_indices(10_000, real_count("cifar10"))
    assert len(idx) == 10_000 and idx[:5].tolist() == [7542, 6067, 6876, 6414, 26]
    assert len(set(idx.tolist())) < 10_000  # with replacement, as their sampler
    assert real_count("imagenet32") == 50_000
