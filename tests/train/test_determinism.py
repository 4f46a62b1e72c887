"""train.deterministic: the kernel choice of a CUDA training process.

Setting the flags needs no GPU (torch keeps them per process); what they do to a
GPU's kernels is checked by scripts/gpu-check.sh on one."""

import os

import pytest
import torch
import torch._inductor.config as inductor

from loomray.config import load_config
from loomray.train.determinism import CUBLAS_WORKSPACE, kernels_for
from loomray.train.loop import build_state


def _flags():
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill": torch.utils.deterministic.fill_uninitialized_memory,
        "cudnn": torch.backends.cudnn.deterministic,
        "benchmark": torch.backends.cudnn.benchmark,
        "inductor": inductor.deterministic,
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


@pytest.fixture
def flags(monkeypatch):
    """The process's flags as they were, put back after the test."""
    before = _flags()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # recorded by monkeypatch (a plain delenv of an unset variable is not), so that
    # what the test sets is removed again
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    yield before
    torch.use_deterministic_algorithms(before["algorithms"], warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = before["fill"]
    torch.backends.cudnn.deterministic = before["cudnn"]
    torch.backends.cudnn.benchmark = before["benchmark"]
    inductor.deterministic = before["inductor"]


def test_a_cuda_process_gets_deterministic_kernels_by_default(flags):
    assert load_config("cifar10").train.deterministic
    torch.backends.cudnn.benchmark = True  # as a user's code might have left it
    kernels_for(True, torch.device("cuda"))
    assert _flags() == {
        "algorithms": True,
        "fill": False,
        "cudnn": True,
        "benchmark": False,
        "inductor": True,
        "cublas": CUBLAS_WORKSPACE,
    }
    # and train.deterministic=false gives the fastest kernels back
    kernels_for(False, torch.device("cuda:0"))
    got = _flags()
    assert not got["algorithms"] and not got["cudnn"] and not got["inductor"]
    assert got["fill"] and not got["benchmark"]


def test_a_users_cublas_setting_is_kept(flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    kernels_for(True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_cpu_process_is_left_as_it_is(flags, monkeypatch):
    from loomray.train import loop

    asked = []
    monkeypatch.setattr(loop, "kernels_for", lambda *a: asked.append(a) or kernels_for(*a))
    cfg = load_config("digits", ["train.deterministic=false"])
    build_state(cfg, torch.device("cpu"))
    assert asked == [(False, torch.device("cpu"))]  # every training process asks
    assert _flags() == {**flags, "cublas": None}
