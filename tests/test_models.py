import pytest
import torch

from loomray.config import load_config
from loomray.flow.objective import EMA, cfm_loss, ema_decay, warmup_constant
from loomray.models import build_model, count_parameters


def test_cifar10_unet_matches_the_authors_size():
    model = build_model(load_config("cifar10"))
    assert count_parameters(model) == pytest.approx(35.7e6, rel=0.01)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        (
            "digits",
            [
                "model.kind=unet",
                "model.channels=32",
                "model.channel_mult=1,2",
                "model.attn_resolutions=4",
                "model.head_channels=16",
                "model.res_blocks=1",
            ],
        ),
        ("digits", []),
        ("toy2d", []),
    ],
)
def test_velocity_shapes_and_time_dependence(preset, overrides):
    cfg = load_config(preset, overrides)
    model = build_model(cfg)
    x = torch.randn(5, *cfg.sample_shape)
    # ADM zero-initialises the output layer: the untrained field is exactly 0
    if cfg.model.kind == "unet":
        assert torch.count_nonzero(model(x, torch.rand(5))) == 0
        with torch.no_grad():  # as after training: no zero layers left
            for p in model.parameters():
                if not p.any():
                    p.normal_(std=0.1)
    v0, v1 = model(x, torch.zeros(5)), model(x, torch.ones(5))
    assert v0.shape == x.shape
    assert not torch.allclose(v0, v1)  # the time embedding reaches the output


def test_cfm_loss_is_zero_for_the_true_straight_field():
    x, z = torch.randn(16, 3), torch.randn(16, 3)

    class Oracle(torch.nn.Module):
        def forward(self, xt, t):
            return x - z  # the conditional target for these pairs

    assert float(cfm_loss(Oracle(), x, z, sigma=0.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(cfm_loss(lambda xt, t: torch.zeros_like(xt), x, z)) == pytest.approx(
        float(((x - z) ** 2).mean()), rel=1e-6
    )


def test_ema_and_warmup():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, before + 0.5)
    # the EMA warm-up: min(decay, (1 + step) / (10 + step)), then the decay itself
    assert ema_decay(0.9999, 0) == pytest.approx(0.1) and ema_decay(0.9999, 90) == 0.91
    assert ema_decay(0.999, 8999) == 0.999 and ema_decay(0.999, 10**6) == 0.999
    assert ema_decay(0.999, 5, warmup=False) == 0.999 and ema_decay(0.999, None) == 0.999
    slow = EMA(model, decay=0.999)
    slow.update(torch.nn.Linear(2, 2), step=0)  # the first update takes 90% of the new weights
    assert not torch.allclose(slow.model.weight, model.weight)
    f = warmup_constant(10)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(1000) == 1.0
    assert warmup_constant(0)(0) == 1.0


def test_ema_follows_the_model_across_updates_and_conversions():
    """The EMA keeps its lists of parameters between updates (the host's cost per
    step), and still follows in-place changes, buffers, .to() and another model."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5, warmup=False)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.randn(8, 3))  # moves the running statistics
        ema.update(model)
    # e_k = (e_(k-1) + w0 + k) / 2 from e_0 = w0: w0 + 2.125 = the model's w0 + 3 - 0.875
    assert torch.allclose(ema.model[0].weight, model[0].weight.detach() - 0.875)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
    assert int(ema.model[1].num_batches_tracked) == 3
    model.double()
    ema.model.double()
    model(torch.randn(8, 3, dtype=torch.float64))
    ema.update(model)  # buffers replaced by .double() are found by name
    assert torch.equal(ema.model[1].running_var, model[1].running_var)
    other = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).double()
    before = ema.model[0].weight.clone()
    ema.update(other)  # another model: its own parameters, not the first one's
    assert torch.allclose(ema.model[0].weight, (before + other[0].weight.detach()) / 2)
    with torch.no_grad():  # parameters replaced, not copied into: followed too
        other[0].weight = torch.nn.Parameter(other[0].weight + 1.0)
        other[0].bias = torch.nn.Parameter(other[0].bias + 1.0)
    before = ema.model[0].weight.clone()
    ema.update(other)
    assert torch.allclose(ema.model[0].weight, (before + other[0].weight.detach()) / 2)
    with pytest.raises(ValueError, match="EMA holds 4 parameters, the model 2"):
        ema.update(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_reaches_a_fused_kernel(monkeypatch, channels_last):
    """q, k and v have the head dimension at stride 1, so the fused attention kernels
    take them; otherwise a GPU runs the math path (bf16 attention as fp32 products)."""
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend

    from loomray.models import unet

    seen, attend = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(torch._fused_sdp_choice(q, k, v))
        return attend(q, k, v, *args, **kwargs)

    block = unet.AttentionBlock(channels=128, head_channels=64)
    with torch.no_grad():  # the output projection starts at zero: give it weights
        torch.nn.init.normal_(block.proj.weight, std=0.1)
        torch.nn.init.normal_(block.proj.bias, std=0.1)
    x = torch.randn(2, 128, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", spy)
    y = block(x)
    assert seen and all(choice != SDPBackend.MATH.value for choice in seen), seen
    assert y.shape == x.shape
    # the same block written as the ADM reference: 1x1 convolutions, heads after q/k/v
    h = block.qkv(block.norm(x).reshape(2, 128, -1))
    q, k, v = h.reshape(2, 3, 2, 64, -1).unbind(1)
    a = torch.softmax(q.transpose(-1, -2) @ k / 8.0, dim=-1) @ v.transpose(-1, -2)
    with torch.no_grad():
        ref = x + block.proj(a.transpose(-1, -2).reshape(2, 128, -1)).reshape(x.shape)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
