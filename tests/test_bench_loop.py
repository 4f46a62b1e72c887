"""`loomray bench loop`: the overlapped noise source changes timing, never results."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from loomray.bench.loop import ThreadedNoise, bench_loop
from loomray.cli import app
from loomray.config import load_config
from loomray.coupling import make_coupling
from loomray.data import BatchPlan, build_dataset, iterate_batches
from loomray.train.loop import LocalNoise, make_table


def test_threaded_noise_equals_inline_noise():
    cfg = load_config("toy2d", ["train.batch=64", "coupling.caches=2"])
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)

    def source(cls):
        coupling = make_coupling("loom", make_table(cfg, len(dataset)), cfg.coupling.cost)
        return cls(coupling, cfg.coupling.seed), coupling

    inline, c1 = source(LocalNoise)
    threaded, c2 = source(ThreadedNoise)
    batches = list(iterate_batches(dataset, plan, 0, 30, 0, 1, 0))
    for step, rows, x in batches[:3]:  # submitted ahead, as the loop does
        threaded.submit(step, rows, x.numpy())
    for i, (step, rows, x) in enumerate(batches):
        if i + 3 < len(batches):
            s, r, xx = batches[i + 3]
            threaded.submit(s, r, xx.numpy())
        inline.submit(step, rows, x.numpy())
        assert np.array_equal(inline.receive(step), threaded.receive(step))
    threaded.close()
    assert np.array_equal(c1.table.seeds, c2.table.seeds)


def test_bench_loop_runs_every_mode_on_cpu():
    cfg = load_config("toy2d", ["train.batch=64"])
    runs = bench_loop(cfg, "cpu", steps=5, warmup=2)
    assert [r.mode for r in runs] == ["independent", "loom-inline", "loom-overlap"]
    assert all(r.steps_per_s > 0 and np.isfinite(r.loss) for r in runs)


def test_bench_loop_cli(tmp_path):
    out = tmp_path / "loop.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "loop",
            "--config",
            "toy2d",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "loom-overlap" in result.output and out.is_file()
    bad = CliRunner().invoke(app, ["bench", "loop", "--config", "toy2d", "--steps", "0"])
    assert bad.exit_code == 2 and "--steps must be >= 1" in bad.output


def test_bench_loop_profiles_each_mode(tmp_path):
    out = tmp_path / "profile"
    result = CliRunner().invoke(
        app,
        ["bench", "loop", "--config", "toy2d", "--steps", "2", "--warmup", "1", "--device",
         "cpu", "--modes", "independent,loom-overlap", "--profile", str(out)],
    )
    assert result.exit_code == 0, result.output
    for mode in ("independent", "loom-overlap"):
        summary = json.loads((out / f"{mode}.json").read_text())
        assert summary["steps"] == 10 and summary["wall_ms"] > 0 and summary["cpu_ms"] > 0
        assert summary["device_ms"] == 0 and summary["top"]  # a CPU: no device time
        assert "Self CPU" in (out / f"{mode}.txt").read_text()
        phases = summary["phases"]  # host time by phase, timed without the profiler
        assert phases["forward"] > 0 and phases["backward"] > 0 and phases["wall"] > 0
    assert "host ms per unprofiled step by phase: " in result.output


def test_profile_summary_counts_each_kernel_once():
    """On a GPU a host operator carries the time of the kernels it launched and an
    annotation's range spans them: device time is the kernels' alone."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from loomray.bench.profile import summarize

    def event(key, device, cpu_us=0.0, device_us=0.0, count=1, note=False):
        return SimpleNamespace(
            key=key, device_type=device, is_user_annotation=note, count=count,
            self_cpu_time_total=cpu_us, self_device_time_total=device_us,
        )

    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [
        event("aten::copy_", cpu, cpu_us=300.0, device_us=4000.0, count=20),
        event("elementwise_kernel", gpu, device_us=4000.0, count=20),
        event("## Call CompiledFxGraph abc ##", gpu, device_us=9000.0, count=2, note=True),
        event("triton_fused_conv", gpu, device_us=6000.0, count=2),
        event("cudaLaunchKernel", cpu, cpu_us=200.0, count=40),
        event("cudaGraphLaunch", cpu, cpu_us=20.0, count=2),
        event("cudaDeviceSynchronize", cpu, cpu_us=500.0, count=1),
    ]
    p = summarize(events, steps=2, wall_s=0.02, cuda=True, mode="independent", table="")
    assert p.wall_ms == pytest.approx(10.0)
    assert p.device_ms == pytest.approx(5.0)  # (4000 + 6000) us over 2 steps
    assert p.cpu_ms == pytest.approx(0.51) and p.launches == 21
    assert p.blocking == {"cudaDeviceSynchronize": pytest.approx(0.25)}
    assert [k for k, _ in p.top] == ["triton_fused_conv", "elementwise_kernel"]
    assert [v for _, v in p.top] == pytest.approx([3.0, 2.0])


def test_phases_time_the_loop_and_put_everything_back():
    import torch

    from loomray.bench.phases import time_phases
    from loomray.train import loop

    cfg = load_config("toy2d", ["train.batch=64"])
    dataset = build_dataset(cfg)
    plan = BatchPlan(len(dataset), cfg.train.batch, cfg.train.seed)
    noise = LocalNoise(make_coupling("independent", None, cfg.coupling.cost), 0)
    state = loop.build_state(cfg, torch.device("cpu"))
    cpu = torch.device("cpu")
    loop.train_steps(cfg, state, dataset, plan, noise, 2, cpu)

    def patchable():
        modules = (torch.Tensor, loop, torch.nn.utils, torch.compiler)
        names = ("backward", "iterate_batches", "cfm_loss", "to_device", "seed_step",
                 "clip_grad_norm_", "cudagraph_mark_step_begin")
        found = [vars(m)[n] for m in modules for n in names if n in vars(m)]
        owners = (state.optimizer, state.scheduler, state.ema, noise)
        # instance attributes by name (training changes their values), and the
        # scheduler's own wrapper of optimizer.step by identity
        return found, [sorted(vars(o)) for o in owners], vars(state.optimizer).get("step")

    before = patchable()

    def more(n):
        loop.train_steps(cfg, state, dataset, plan, noise, state.step + n, cpu)

    ms = time_phases(more, 4, state, noise)
    assert state.step == 6
    for phase in ("batches", "noise", "seed", "forward", "backward", "clip", "optimizer", "ema"):
        assert ms[phase] > 0, phase
    assert 0 <= ms["other"] < ms["wall"]
    assert len(before[0]) == 7 and patchable() == before  # the same objects, nothing added


def test_seed_step_draws_what_torch_manual_seed_draws():
    import torch

    from loomray.train.loop import seed_step

    seed_step(123, torch.device("cpu"))
    a = torch.rand(5), torch.randn(3)
    torch.manual_seed(123)
    b = torch.rand(5), torch.randn(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
