"""Watching a run: Ray's Prometheus endpoint carries loomray's metrics with sensible
values, and the Ray dashboard (token auth on) lists the coupling service actor,
seen through headless Chromium.

Set LOOMRAY_UPDATE_DOCS=1 to copy the dashboard screenshot to docs/.
"""

import asyncio
import base64
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from loomray.cluster.connect import connect
from loomray.config import load_config, run_label
from loomray.train.launch import launch

DOCS = Path(__file__).resolve().parents[1] / "docs"
STEPS = 1200


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("no chromium on PATH: .ci/run installs Debian's chromium package")


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A local Ray exporting metrics every second, and a digits run going on in a thread."""
    os.environ["RAY_metrics_report_interval_ms"] = "1000"
    url = connect(None, quiet=True)
    cfg = load_config(
        "digits",
        [
            "train.workers=1",
            f"train.steps={STEPS}",
            "train.log_every=20",
            "train.ckpt_every=600",
            "eval.methods=[euler-1]",
            "eval.n=200",
        ],
    )
    run_dir = tmp_path_factory.mktemp("monitor") / "watched"
    service = {}
    result = {}

    def go():
        try:
            result["r"] = launch(
                cfg, run_dir, progress=False, on_ready=lambda s: service.setdefault("s", s)
            )
        except Exception as err:  # surfaced by the tests
            result["error"] = err

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    deadline = time.time() + 180
    while time.time() < deadline and "s" not in service:
        time.sleep(0.5)
    assert "s" in service, result.get("error")
    yield {"url": url, "run": run_label(cfg, run_dir), "thread": thread, "result": result}
    thread.join(timeout=600)
    ray.shutdown()
    os.environ.pop("RAY_metrics_report_interval_ms", None)


def _scrape() -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            m = re.match(r"^(ray_loomray_[a-z_]+)(?:\{(.*)\})? ([-+0-9.eEinfNa]+)$", line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def _value(metrics, name, run):
    values = [v for labels, v in metrics.get(name, []) if labels.get("run") == run]
    return values[0] if values else None


def test_metrics_endpoint_has_loomrays_metrics_with_sensible_values(live_run):
    run = live_run["run"]
    wanted = (
        "ray_loomray_coupling_step",
        "ray_loomray_coupling_cost_pre",
        "ray_loomray_coupling_cost_post",
        "ray_loomray_coupling_solve_seconds_count",
        "ray_loomray_worker_wait_seconds_count",
        "ray_loomray_train_loss",
        "ray_loomray_train_images_per_second",
    )
    # the service and the worker export on their own clocks: wait until every counter
    # checked below has passed 100, not only the service's step
    counted = (
        "ray_loomray_coupling_step",
        "ray_loomray_coupling_solve_seconds_count",
        "ray_loomray_worker_wait_seconds_count",
    )
    deadline, metrics = time.time() + 240, {}
    while time.time() < deadline:
        metrics = _scrape()
        if all(_value(metrics, n, run) for n in wanted) and all(
            _value(metrics, n, run) >= 100 for n in counted
        ):
            break
        time.sleep(1)
    missing = [n for n in wanted if _value(metrics, n, run) is None]
    assert not missing, f"not exported: {missing}; have {sorted(metrics)}"
    step = _value(metrics, "ray_loomray_coupling_step", run)
    assert 100 <= step <= STEPS
    pre = _value(metrics, "ray_loomray_coupling_cost_pre", run)
    post = _value(metrics, "ray_loomray_coupling_cost_post", run)
    assert 0 < post <= pre  # a solve never makes a batch's pairing worse
    assert _value(metrics, "ray_loomray_coupling_solve_seconds_count", run) >= 100
    assert _value(metrics, "ray_loomray_worker_wait_seconds_count", run) >= 100
    solve_sum = _value(metrics, "ray_loomray_coupling_solve_seconds_sum", run)
    solves = _value(metrics, "ray_loomray_coupling_solve_seconds_count", run)
    assert 0 < solve_sum / solves < 1.0  # digits solves take milliseconds
    loss = _value(metrics, "ray_loomray_train_loss", run)
    assert math.isfinite(loss) and 0 < loss < 10
    assert _value(metrics, "ray_loomray_train_images_per_second", run) > 10
    assert _value(metrics, "ray_loomray_coupling_swaps_total", run) > 0, sorted(metrics)
    # every series the shipped Grafana dashboard plots is one Ray exports (the EMA
    # quality gauge appears only once an evaluation ran, after this point)
    dash = (DOCS.parent / "cluster" / "grafana" / "loomray-dashboard.json").read_text()
    plotted = set(re.findall(r"ray_loomray_[a-z_]+", dash)) - {"ray_loomray_eval_quality"}
    assert plotted and plotted <= set(metrics), plotted - set(metrics)


async def _look(base: str, token: str, expect: str, png: Path, timeout: float = 120.0) -> str:
    """Open the dashboard's actors page in headless Chromium (DevTools protocol), with the
    token as the dashboard's cookie; wait for ``expect``; screenshot."""
    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    browser = subprocess.Popen(
        [
            _chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--remote-debugging-port={port}",
            "--window-size=1500,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            page, up_by = None, time.time() + 60  # Chromium starts slowly on a busy machine
            while page is None:
                assert time.time() < up_by, "headless Chromium showed no page within 60 s"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json") as r:
                        targets = await r.json()
                    page = next((t for t in targets if t["type"] == "page"), None)
                except aiohttp.ClientError:
                    pass
                if page is None:
                    await asyncio.sleep(0.2)
            ws = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            ids = iter(range(1, 10**6))

            async def call(method, **params):
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == i:
                        assert "error" not in msg, msg
                        return msg["result"]

            await call("Network.enable")
            await call("Network.setCookie", name="ray-authentication-token", value=token, url=base)
            await call("Page.navigate", url=f"{base}/#/actors")
            deadline, text = time.time() + timeout, ""
            while time.time() < deadline:
                r = await call(
                    "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
                )
                text = r["result"].get("value") or ""
                if expect in text:
                    break
                await asyncio.sleep(1)
            # Narrow the table to the service with the page's own Name filter (a
            # nicer screenshot; the check above already read the whole list).
            focused = await call(
                "Runtime.evaluate",
                expression="""(() => {
                    const l = [...document.querySelectorAll('label')]
                        .find(x => x.textContent.trim() === 'Name');
                    const i = l && document.getElementById(l.htmlFor);
                    if (!i) return false;
                    i.focus();
                    return true;
                })()""",
                returnByValue=True,
            )
            if focused["result"].get("value"):
                await call("Input.insertText", text=expect)
            await asyncio.sleep(2)  # let the table redraw
            shot = await call("Page.captureScreenshot", format="png")
            png.write_bytes(base64.b64decode(shot["data"]))
            await ws.close()
            return text
    finally:
        browser.kill()
        browser.wait()


def test_dashboard_lists_the_coupling_service(live_run, tmp_path):
    base = live_run["url"]
    assert base and base.startswith("http://127.0.0.1:")  # loopback only
    # token auth is on: without the token the API refuses
    try:
        urllib.request.urlopen(f"{base}/api/actors", timeout=10)
        raise AssertionError("the dashboard answered without a token")
    except urllib.error.HTTPError as err:
        assert err.code == 401
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    token = (
        subprocess.run([ray_bin, "get-auth-token"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    name = f"coupling:{live_run['run']}"
    png = tmp_path / "dashboard-actors.png"
    text = asyncio.run(_look(base, token, name, png))
    assert name in text, text[:2000]
    assert "CouplingService" in text
    assert png.stat().st_size > 20_000
    if os.environ.get("LOOMRAY_UPDATE_DOCS") == "1":
        shutil.copy(png, DOCS / "dashboard-actors.png")


def test_the_watched_run_finishes(live_run):
    live_run["thread"].join(timeout=600)
    result = live_run["result"]
    assert "error" not in result, result.get("error")
    assert result["r"].step == STEPS
