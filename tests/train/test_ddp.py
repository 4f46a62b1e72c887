"""A restart under DDP with three ranks adds the gradients as an uninterrupted run does.

Three gloo processes on the CPU train a small UNet for 6 steps, once straight
through and once with DDP built anew after step 2 (as a restart from a
checkpoint builds it); their weights must be the same bits. With two ranks this
holds whatever the bucket layout (a + b = b + a), so the test takes three."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from loomray.config import load_config
from loomray.models import build_model
from loomray.train.ddp import distributed

# a small UNet: its skip connections make DDP's second bucket layout differ from the first
UNET = ["model.kind=unet", "model.channels=16", "model.channel_mult=1,2"]
UNET += ["model.attn_resolutions=4", "model.head_channels=16", "model.res_blocks=1"]


def _steps(model, ddp, opt, rank, first, stop, shape):
    for step in range(first, stop):
        g = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own data
        x, t = torch.randn(4, *shape, generator=g), torch.rand(4, generator=g)
        opt.zero_grad(set_to_none=True)
        (ddp(x, t) - x).pow(2).mean().backward()
        opt.step()


def _weights(restart_at, wrap, rank, shape):
    torch.manual_seed(0)
    model = build_model(load_config("digits", UNET))
    with torch.no_grad():  # no zero-initialised layers: every gradient is non-zero
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ddp = wrap(model)
    if restart_at is None:
        _steps(model, ddp, opt, rank, 0, 6, shape)
    else:
        _steps(model, ddp, opt, rank, 0, restart_at, shape)
        ddp = wrap(model)  # what a restart from a checkpoint does
        _steps(model, ddp, opt, rank, restart_at, 6, shape)
    return [p.detach().clone() for p in model.parameters()]


def _rank(rank, world, store, out):
    # a file store: no port that another process could take between choosing and binding
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    shape = load_config("digits", UNET).sample_shape
    wraps = {
        "loomray": lambda m: distributed(m, torch.device("cpu"), shape),
        "plain DDP": lambda m: nn.parallel.DistributedDataParallel(m),
    }
    same = {}
    for name, wrap in wraps.items():
        straight = _weights(None, wrap, rank, shape)
        restarted = _weights(2, wrap, rank, shape)
        same[name] = all(torch.equal(a, b) for a, b in zip(straight, restarted, strict=True))
    if rank == 0:
        out.write_text(json.dumps(same))
    dist.destroy_process_group()


def test_a_restart_with_three_ranks_ends_bit_identical(tmp_path):
    out = tmp_path / "same.json"
    mp.spawn(_rank, args=(3, str(tmp_path / "store"), out), nprocs=3)
    same = json.loads(out.read_text())
    assert same["loomray"], "a restart changed the weights"
    # the case is a real one: without the dropped step, plain DDP's restart differs
    assert not same["plain DDP"]
