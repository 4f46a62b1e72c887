"""The Ray cluster a command runs on: a private local one, or one it joins.

    url = connect(None)                # a private local Ray (dashboard on 127.0.0.1)
    url = connect("10.0.0.5:6379")     # join a cluster (also "auto", "ray://host:10001")
    status_address()                   # what `loomray status --address` takes

Every loomray command without ``--address`` (and without ``RAY_ADDRESS``) starts a
local Ray of its own, so several commands run side by side on one machine. Ray's
own helpers that look their cluster up by themselves (Ray Train's
PlacementGroupCleaner and its state actor call the State API) would then find
"multiple active Ray instances" and die, leaving the placement groups of stopped
trainings behind, or pick another user's cluster. So every worker process of a
loomray job pins itself to its own cluster as it starts (``pin_to_own_cluster``,
Ray's ``worker_process_setup_hook``), and the local clusters loomray starts are
listed (``local_clusters``) so that ``loomray status`` can tell them apart.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

NAMESPACE = "loomray"
RAY_ENV = {
    # A report blocks until the Train controller's next poll (default 2 s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
# loomray's own settings (``LOOMRAY_*``) that hold paths: sent on as absolute paths,
# since workers and tasks run in other working directories.
PATH_SETTINGS = ("LOOMRAY_CACHE", "LOOMRAY_FID_WEIGHTS", "LOOMRAY_PAPER_FID_WEIGHTS")
# Other settings of the driver that the job's processes must share when set.
FORWARDED = ("TUNE_DISABLE_STRICT_METRIC_CHECKING",)
PIN_HOOK = "loomray.cluster.connect.pin_to_own_cluster"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NO = ("0", "false", "no", "off")
YES = ("", "1", "true", "yes", "on")


class LaunchError(ValueError):
    """A command cannot start as asked; the message says why and what to do."""


def pin_to_own_cluster() -> None:
    """Run by Ray in every worker process of a loomray job as it starts: the process's
    own cluster becomes its ``RAY_ADDRESS``, which the State API (and anything else
    that resolves a cluster by itself) takes before looking around the machine."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)  # the State API would take it first


def fake_gpus() -> bool:
    """``LOOMRAY_FAKE_GPUS=1``, for tests: a Ray cluster declares GPUs it does not have
    (Ray's resources are logical) and the "GPU" workers train and score on the CPU
    (gloo instead of NCCL), so that the GPU presets' shape (GPU workers, a service
    CPU, several trials, GPU nodes added by an autoscaler) runs anywhere. Sent to
    every process of a job like every ``LOOMRAY_*`` setting."""
    return os.environ.get("LOOMRAY_FAKE_GPUS", "") == "1"


def driver_settings() -> dict[str, str]:
    """The environment every worker, actor and task of the job gets: Ray's settings
    above and every ``LOOMRAY_*`` variable of the driver (FID weights, the cache), so
    nodes that never saw them behave like the driver."""
    out = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    out.update({k: v for k, v in os.environ.items() if k.startswith("LOOMRAY_")})
    out.update({k: os.environ[k] for k in FORWARDED if k in os.environ})
    for key in PATH_SETTINGS:
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a cluster address nothing answers at (Ray itself retries for
    minutes). ``auto`` and None are left to Ray: they find a local cluster or none."""
    if address in (None, "auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(f"--address {address} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise LaunchError(
            f"cannot reach the Ray cluster at {address}: nothing answers on {host}:{port} "
            f"({reason.lower()})"
        ) from err


def security_warnings(dashboard_host: str = "127.0.0.1") -> list[str]:
    """What is unsafe about how Ray is about to be exposed (empty when nothing is)."""
    out = []
    if dashboard_host not in LOOPBACK:
        out.append(
            f"the Ray dashboard will listen on {dashboard_host}, not 127.0.0.1: anyone who "
            "can reach it and holds the token can submit jobs, i.e. run code on this machine; "
            "prefer an SSH port-forward (docs/cluster.md)"
        )
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        out.append(
            "RAY_AUTH_MODE=disabled turns Ray's token authentication off: anyone who reaches "
            "the dashboard or the GCS can run code on the cluster (ShadowRay, CVE-2023-48022)"
        )
    return out


def dashboard_wanted() -> bool:
    """Whether a local Ray starts its dashboard: ``LOOMRAY_DASHBOARD`` 1, true, yes, on
    or unset (the default), or 0, false, no, off; LaunchError for anything else."""
    value = os.environ.get("LOOMRAY_DASHBOARD", "").strip().lower()
    if value not in (*YES, *NO):
        raise LaunchError(
            f"LOOMRAY_DASHBOARD must be 1 or 0 (true/false, yes/no, on/off), got "
            f"{os.environ['LOOMRAY_DASHBOARD']!r}"
        )
    return value not in NO


_DASHBOARD: dict[str, str | None] = {}


def send_token() -> None:
    """Join a cluster with this user's Ray token when there is one and nothing says
    otherwise: Ray only sends it with ``RAY_AUTH_MODE=token``, and every local Ray that
    loomray starts asks for it. A cluster without token auth ignores it."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).expanduser().is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray read its settings when it was imported


def connect(
    address: str | None, quiet: bool = False, dashboard_host: str = "127.0.0.1"
) -> str | None:
    """Join ``address`` (``auto``, ``host:6379``, ``ray://host:10001``; None: the
    ``RAY_ADDRESS`` variable when set) or start a private local Ray.

    Returns the dashboard URL when known. A local Ray binds its dashboard to
    ``dashboard_host`` (127.0.0.1 unless asked otherwise) and keeps Ray's token
    authentication on (see ``security_warnings``); ``LOOMRAY_DASHBOARD=0`` starts it
    without the dashboard (a machine without Ray's dashboard extras, say).
    """
    import logging

    import ray

    # Ray warns on every start that token authentication is on; it is what we want.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    dashboard = dashboard_wanted()  # a bad setting fails even when Ray is up
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not sys.stdout.isatty():  # a log file: the workers' lines without colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if ray.is_initialized():
        return _DASHBOARD.get("url")
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_reachable(address)
    runtime_env = {"env_vars": driver_settings(), "worker_process_setup_hook": PIN_HOOK}
    if address is None:
        # "local", not None: Ray would otherwise join a cluster that `ray start` began.
        info = ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            runtime_env=runtime_env,
            log_to_driver=not quiet,
            namespace=NAMESPACE,
        )
    else:
        send_token()
        info = ray.init(
            address=address, runtime_env=runtime_env, log_to_driver=not quiet, namespace=NAMESPACE
        )
    url = getattr(info, "dashboard_url", None)
    _DASHBOARD["url"] = f"http://{url}" if url and not url.startswith("http") else url
    _DASHBOARD["joined"] = address if address and address.startswith("ray://") else None
    if not _DASHBOARD["joined"]:
        _register(_DASHBOARD["url"], started=address is None)
    return _DASHBOARD["url"]


def status_address() -> str:
    """The address `loomray status --address` takes to reach the connected cluster."""
    import ray

    return _DASHBOARD.get("joined") or ray.get_runtime_context().gcs_address


def local_clusters_dir() -> Path | None:
    """Where this user's loomray commands list the local clusters they use (one JSON
    file each): a folder of this user's only, else None (nothing is listed)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(base) / f"loomray-{uid}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    # another user could have made it first, to read or redirect what is written there
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return folder


def _register(dashboard: str | None, started: bool) -> None:
    """List the local cluster this process started or joined, for `loomray status`."""
    import ray

    from loomray.files.locks import this_command

    address = ray.get_runtime_context().gcs_address

    folder = local_clusters_dir()
    if folder is None:
        return
    entry = {
        "address": address,
        "dashboard": dashboard,
        "pid": os.getpid(),
        "command": this_command(),
        "since": time.time(),
        "started": started,
    }
    name = folder / f"{address.replace(':', '_')}-{os.getpid()}.json"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(entry))
    except OSError:  # listing is a convenience; it must not stop a run
        pass


def local_clusters() -> list[dict]:
    """The Ray clusters running on this machine, oldest first: ``address``, and the
    loomray commands that use it (``commands``: their command, pid, whether they
    started it, since when, the dashboard)."""
    from ray._private.services import find_gcs_addresses

    live = set(find_gcs_addresses())
    commands: dict[str, list[dict]] = {a: [] for a in live}
    folder = local_clusters_dir()
    for path in folder.glob("*.json") if folder else []:
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if entry.get("address") in live and _alive(entry.get("pid")):
            commands[entry["address"]].append(entry)
        else:  # the cluster (or the command) is gone
            path.unlink(missing_ok=True)
    out = [
        {"address": a, "commands": sorted(c, key=lambda e: e.get("since", 0))}
        for a, c in commands.items()
    ]

    def first_use(e: dict) -> tuple[float, str]:
        return min((c["since"] for c in e["commands"]), default=0.0), e["address"]

    return sorted(out, key=first_use)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError) as err:
        return isinstance(err, PermissionError)
    return True
