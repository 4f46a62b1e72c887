"""Exposure defaults: loopback and token auth, and a warning when either is given up."""

import pytest
from typer.testing import CliRunner

from loomray.cli import app
from loomray.cluster.connect import security_warnings


def test_loopback_with_auth_is_quiet(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert security_warnings("127.0.0.1") == []
    assert security_warnings("localhost") == []


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_public_dashboard_warns(monkeypatch, host):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    (warning,) = security_warnings(host)
    assert host in warning and "run code" in warning and "port-forward" in warning


def test_auth_off_warns(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    (warning,) = security_warnings("127.0.0.1")
    assert "CVE-2023-48022" in warning
    assert len(security_warnings("0.0.0.0")) == 2


def test_cli_prints_the_warning_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    (tmp_path / "notes.txt").write_text("mine")  # an occupied run dir stops it before Ray
    out = CliRunner().invoke(
        app,
        ["train", "--config", "digits", "--run-dir", str(tmp_path), "--dashboard-host", "0.0.0.0"],
    )
    text = " ".join(out.output.split())
    assert out.exit_code == 2
    assert text.startswith("warning: the Ray dashboard will listen on 0.0.0.0")
    assert "error: run dir" in text


@pytest.mark.parametrize(
    ("value", "wanted"), [(None, True), ("1", True), ("0", False), ("off", False)]
)
def test_local_ray_starts_without_dashboard_when_asked(monkeypatch, value, wanted):
    """LOOMRAY_DASHBOARD=0 starts a local Ray without the dashboard (a GPU node without
    Ray's dashboard extras); token auth and everything else stay as they are."""
    import ray

    from loomray.cluster import connect as ray_cluster

    seen = {}

    class Info:
        dashboard_url = "127.0.0.1:8265" if wanted else None

    def fake_init(**kwargs):
        seen.update(kwargs)
        return Info()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray_cluster, "_DASHBOARD", {})
    monkeypatch.setattr(ray_cluster, "_register", lambda *args, **kwargs: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if value is None:
        monkeypatch.delenv("LOOMRAY_DASHBOARD", raising=False)
    else:
        monkeypatch.setenv("LOOMRAY_DASHBOARD", value)
    url = ray_cluster.connect(None, quiet=True)
    assert seen["address"] == "local"  # never a cluster that `ray start` began
    assert seen["include_dashboard"] is wanted
    assert seen["dashboard_host"] == "127.0.0.1"
    assert (url is not None) is wanted


def test_a_bad_dashboard_setting_is_one_sentence(tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", "--config", "toy2d", "--run-dir", str(tmp_path / "run")],
        env={"LOOMRAY_DASHBOARD": "maybe"},
    )
    assert result.exit_code == 2, result.output
    assert "LOOMRAY_DASHBOARD must be 1 or 0" in result.output and "'maybe'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


class _RunsCode:
    """A pickle that touches a file when unpickled (what a crafted .pth does)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("protocol", ["standard", "paper"])
def test_inception_weights_that_would_run_code_run_nothing(tmp_path, monkeypatch, protocol):
    """From --fid-weights, LOOMRAY_FID_WEIGHTS / LOOMRAY_PAPER_FID_WEIGHTS (which every
    worker gets) or an evaluator a worker builds: refused in one sentence, never
    unpickled, by torch-fidelity neither."""
    import pickle

    import torch

    from loomray.evaluation.evaluator import (
        INCEPTION,
        PAPER_WEIGHTS_ENV,
        WEIGHTS_ENV,
        Evaluator,
        _weights_file,
    )
    from loomray.evaluation.weights import EvaluationError

    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps({"conv.weight": _RunsCode(tmp_path / "pwned")}))
    monkeypatch.setenv(PAPER_WEIGHTS_ENV if protocol == "paper" else WEIGHTS_ENV, str(evil))
    with pytest.raises(EvaluationError, match="never unpickles anything else"):
        _weights_file(None, protocol)
    evaluator = Evaluator("fid", torch.zeros(0), INCEPTION, str(evil), protocol=protocol)
    with pytest.raises(EvaluationError, match="never unpickles anything else"):
        evaluator.share(torch.zeros(1, 3, 8, 8))
    assert not (tmp_path / "pwned").exists()
