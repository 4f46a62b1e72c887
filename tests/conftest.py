"""Shared fixtures. Tests start private Ray clusters and end exactly those: a Ray held
by the test process (``ray.shutdown``), or processes started in a session of their own
and ended by that session's id, never `ray stop` (which ends every Ray on the machine,
a user's running jobs included)."""

import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from loomray.bench.fake_cluster import (  # noqa: F401 (tests import them from here)
    free_ports,
    start_private,
    stop_private,
    wait_for_port,
)


@pytest.fixture(scope="session", autouse=True)
def no_outside_cluster():
    """Tests use their own clusters: a RAY_ADDRESS of the shell would make them join
    (and train on, or end services of) a user's cluster."""
    names = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's tests (it costs ~2 GB and seconds to start)."""
    import ray

    from loomray.cluster.connect import connect

    connect(None, quiet=True)
    yield
    ray.shutdown()


CLI_ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "COLUMNS": "300"}


def loomray_cli(
    *args: str, timeout: float = 180, env: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """A `loomray` command in a process of its own, as a user in another terminal
    (wide output, so sentences are not wrapped)."""
    return subprocess.run(
        [sys.executable, "-m", "loomray", *args],
        capture_output=True,
        text=True,
        env=env or CLI_ENV,
        timeout=timeout,
        **kw,
    )


def ray_node(*args: str, env: dict) -> subprocess.Popen:
    """`ray start --block ...` in a session of its own (stop it with ``stop_private``);
    a head gets a short private temp dir (socket paths are limited to 107 bytes), so
    the machine's /tmp/ray is left alone."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    extra, dirs = [], []
    if "--head" in args:
        dirs.append(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        extra.append(f"--temp-dir={dirs[0]}")
    proc = start_private([ray_bin, "start", "--block", *args, *extra], env=env)
    proc.private_dirs = dirs  # removed by stop_private
    return proc


WAIT_FOR_NODES = """
import sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    assert time.monotonic() < deadline, f"{sys.argv[2]} nodes did not join in time"
    time.sleep(0.5)
"""


def wait_for_nodes(address: str, count: int, env: dict, timeout_s: float = 120) -> None:
    """Until the cluster at ``address`` has ``count`` live nodes (`ray start --block`
    returns before a node has joined)."""
    run = subprocess.run(
        [sys.executable, "-c", WAIT_FOR_NODES, address, str(count), str(timeout_s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    assert run.returncode == 0, run.stderr[-2000:]


OTHER_LOOMRAY = """
import pathlib, sys, time
import ray
from loomray.cluster.connect import connect
connect(None, quiet=True)
pathlib.Path(sys.argv[1]).write_text(ray.get_runtime_context().gcs_address)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def other_loomray_cluster(tmp_path_factory):
    """Another loomray command's local Ray on this machine (a process of its own, as a
    second `loomray train` or `evaluate` would be): its GCS address."""
    folder = tmp_path_factory.mktemp("other-ray")
    log, found = folder / "out.txt", folder / "address"
    with open(log, "w") as out:
        proc = start_private([sys.executable, "-c", OTHER_LOOMRAY, str(found)], log=out)
    try:
        deadline = time.monotonic() + 120
        while not found.is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        yield found.read_text()
    finally:
        stop_private(proc)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """Inception-v3 of the right architecture with random weights: the real FID code
    path runs without the download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path_factory.mktemp("weights") / "empty.pth"
    torch.save({}, empty)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        torch.manual_seed(0)
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)
        )
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    for module in model.modules():  # keep activations alive through 20 random layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_vae():
    """A factory of tiny random diffusers AutoencoderKLs (16x16 RGB -> 4x8x8 latents)."""

    def tiny_vae(seed: int = 0):
        from diffusers import AutoencoderKL

        torch.manual_seed(seed)
        return AutoencoderKL(
            block_out_channels=(32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=16,
        ).eval()

    return tiny_vae
