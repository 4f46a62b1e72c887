"""Exposure defaults: loopback and token auth, and a warning when either is given up."""

import pytest
from typer.testing import CliRunner

from loomray.cli import app
from loomray.train.launch import security_warnings


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
