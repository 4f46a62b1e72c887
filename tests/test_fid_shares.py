"""Evaluation in shares: any split of the samples over workers gives the same figures."""

import numpy as np
import pytest
import torch

from loomray.config import load_config
from loomray.evaluation.evaluate import combine_shares, eval_batches, evaluate_model, sample_shares
from loomray.evaluation.evaluator import make_evaluator, to_uint8
from loomray.evaluation.fid import FeatureSums
from loomray.train.loop import train_local


def test_feature_sums_give_np_mean_and_np_cov_whatever_the_split():
    f = np.random.default_rng(0).standard_normal((500, 7)) * 3 + 5
    parts = [FeatureSums.of(f[:120]), FeatureSums.of(f[120:121]), FeatureSums.of(f[121:])]
    mu, sigma = (parts[0] + parts[1] + parts[2]).statistics()
    np.testing.assert_allclose(mu, f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-10)


def test_batches_are_split_by_index_not_by_worker_count():
    assert eval_batches(2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert eval_batches(2500, 1000, 1, 2) == [(1000, 2000)]
    halves = eval_batches(2500, 1000, 0, 2) + eval_batches(2500, 1000, 1, 2)
    assert sorted(halves) == eval_batches(2500, 1000)


@pytest.fixture(scope="module")
def digits_model():
    cfg = load_config("digits", ["train.workers=1", "train.steps=200", "eval.batch=150"])
    return cfg, train_local(cfg).state.ema.model


@pytest.mark.parametrize("world", [2, 3])
def test_shares_of_any_number_of_workers_score_as_one(digits_model, world):
    cfg, model = digits_model
    methods = ["euler-1", "midpoint-2", "dopri5"]  # dopri5 adapts to its whole batch
    evaluator = make_evaluator(cfg)
    one = evaluate_model(model, cfg, methods, 500, evaluator)
    parts = [
        sample_shares(model, cfg, methods, 500, evaluator, "cpu", r, world) for r in range(world)
    ]
    many = combine_shares(evaluator, methods, 500, parts)
    for a, b in zip(one, many, strict=True):
        assert (a.method, a.nfe) == (b.method, b.nfe)
        assert b.value == pytest.approx(a.value, rel=1e-9)
    with pytest.raises(ValueError, match=r"parts hold \d+ of 500 samples"):
        combine_shares(evaluator, methods, 500, parts[:-1])  # a worker's part missing


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_our_fid_is_torch_fidelitys(digits_model):
    """The shares' FID is torch-fidelity's own on the same samples."""
    import torch_fidelity

    cfg, model = digits_model
    evaluator = make_evaluator(cfg)
    (row,) = evaluate_model(model, cfg, ["euler-2"], 600, evaluator)
    from loomray.coupling import noise_from_seeds
    from loomray.evaluation.evaluator import EVAL_SEED_OFFSET
    from loomray.flow.sampling import sample

    z = torch.from_numpy(noise_from_seeds(np.arange(600) + EVAL_SEED_OFFSET, cfg.sample_shape))
    with torch.no_grad():
        x = torch.cat([sample(model, z[i : i + 150], "euler-2").x for i in range(0, 600, 150)])
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(to_uint8(x)),
        input2=_Images(evaluator.reference),
        fid=True,
        feature_extractor=evaluator.extractor,
        cuda=False,
        verbose=False,
    )["frechet_inception_distance"]
    assert row.value == pytest.approx(theirs, rel=1e-5)


def test_toy2d_energy_in_shares_is_exact():
    cfg = load_config("toy2d", ["train.steps=50", "eval.batch=300"])
    model = train_local(cfg).state.ema.model
    evaluator = make_evaluator(cfg)
    one = evaluate_model(model, cfg, ["euler-2"], 1000, evaluator)[0].value
    parts = [sample_shares(model, cfg, ["euler-2"], 1000, evaluator, "cpu", r, 2) for r in (0, 1)]
    assert combine_shares(evaluator, ["euler-2"], 1000, parts[::-1])[0].value == one
