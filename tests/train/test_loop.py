"""The training step: no host reads per step, and train.graph trains as eager does."""

import sys

import numpy as np
import pytest
import torch

from loomray.config import load_config
from loomray.data import BatchPlan, build_dataset
from loomray.train.loop import LocalNoise, build_state, make_table, train_local, train_steps


def _run(cfg, steps):
    from loomray.coupling import make_coupling

    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    coupling = make_coupling(cfg.coupling.kind, make_table(cfg, len(dataset)), cfg.coupling.cost)
    state = build_state(cfg, torch.device("cpu"))
    noise = LocalNoise(coupling, cfg.coupling.seed)
    return train_steps(cfg, state, dataset, plan, noise, steps, torch.device("cpu"))


def test_the_step_never_reads_a_tensor_back_to_the_host(monkeypatch):
    """float(), .item(), .tolist() or bool() of a tensor waits for the device: the
    loop must not do any per step (on a GPU the CPU then queues steps ahead)."""
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("loomray"):
                reads.append((name, caller))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("__float__", "item", "tolist", "__bool__"):
        counting(name)
    history = _run(load_config("toy2d", ["train.batch=64"]), 30)
    assert reads == [], reads[:5]
    monkeypatch.undo()
    losses = history.losses  # read once, afterwards
    assert len(losses) == 30 and all(np.isfinite(losses))


@pytest.mark.parametrize("flag", ["train.compile=true", "train.graph=true"])
def test_compiled_and_graph_steps_train_as_eager_does(flag):
    torch.set_num_threads(1)
    eager = train_local(load_config("toy2d", ["train.batch=64"]), "cpu", steps=50)
    other = train_local(load_config("toy2d", ["train.batch=64", flag]), "cpu", steps=50)
    np.testing.assert_allclose(other.history.losses, eager.history.losses, rtol=1e-4, atol=1e-6)
    pairs = zip(eager.state.model.parameters(), other.state.model.parameters(), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-3, atol=1e-5)


def test_the_history_keeps_a_few_bytes_a_step_not_the_step_logs():
    from loomray.train.loop import History, StepLog

    history = History()
    for i in range(2500):
        history.add(StepLog(i, torch.tensor(float(i)), 1e-3, 0.5))
    assert len(history._pending) == 500  # read from the device in chunks of 1000
    assert sum(a.nbytes for a in history._losses) == 2000 * 4
    assert history.losses == [float(i) for i in range(2500)] and history.waits == [0.5] * 2500


def test_a_fine_tune_keeps_its_starting_ema_without_a_warm_up(tmp_path):
    """train.init: the EMA starts as the initial weights' EMA and moves at the fixed
    decay from the first step; a warm-up would replace 90% of it at step 0."""
    from loomray.checkpoint import save_checkpoint
    from loomray.config import load_config
    from loomray.train.loop import build_state

    base = load_config("toy2d", ["train.steps=1"])
    ema = build_state(base, torch.device("cpu")).ema.model.state_dict()
    init = save_checkpoint(
        tmp_path / "init.pt", {"format": 1, "config": base.to_dict(), "step": 5, "ema": ema}
    )
    tuned = build_state(load_config("toy2d", [f"train.init={init}"]), torch.device("cpu"))
    assert not tuned.ema.warmup and tuned.ema.decay == base.train.ema
    assert build_state(base, torch.device("cpu")).ema.warmup  # a run from scratch warms up
