"""Ctrl-C during `loomray train`, the command it prints to go on, and reruns that
have nothing to train (a real local Ray, through the CLI in a subprocess)."""

import os
import shlex
import signal
import subprocess
import sys
import time

from conftest import loomray_cli

from loomray.checkpoint import latest_step

ARGS = [
    "--config",
    "digits",
    "train.steps=600",
    "train.ckpt_every=100",
    "train.log_every=50",
    "eval.methods=[euler-1]",
    "eval.n=200",
]
ENV = {**os.environ, "COLUMNS": "200"}


def loomray(args, **kw):
    return loomray_cli(*args, timeout=600, **kw)


def test_ctrl_c_says_where_it_stopped_and_how_to_go_on(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "loomray", "train", *ARGS, "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        # as in a terminal: a test run started in the background (``cmd &``) inherits
        # SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # wait for what the message is built from: a readable checkpoint at step 200 or
    # later (Ray Train makes a checkpoint's folder before it copies the file in)
    deadline = time.time() + 240
    while (latest_step(run) or 0) < 200:
        assert time.time() < deadline, "no checkpoint at step 200 within 240 s"
        assert first.poll() is None, first.stdout.read()[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # what Ctrl-C does
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out[-3000:]
    text = " ".join(out.split())
    assert "interrupted near step" in text and "the last checkpoint holds step" in text
    saved = int(text.split("the last checkpoint holds step ")[1].split(",")[0])
    assert saved >= 200 and (run / "train" / f"step-{saved:07d}").is_dir()
    command = out.split("Continue with:")[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:2] == ["loomray", "train"] and argv[-2:] == ["--run-dir", str(run)]

    go_on = loomray(argv[1:])
    assert go_on.returncode == 0, go_on.stdout[-3000:] + go_on.stderr[-3000:]
    assert "resumed and trained digits to step 600" in " ".join(go_on.stdout.split())
    assert (run / "train" / "step-0000600" / "checkpoint.pt").is_file()

    # nothing left to train: one line, no Ray, the run's config untouched
    config = (run / "config.yaml").read_bytes()
    for steps in ("600", "300"):
        started = time.time()
        args = [*ARGS[:2], f"train.steps={steps}", *ARGS[3:], "--run-dir", str(run)]
        again = loomray(["train", *args])
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"is already at step 600 (train.steps={steps}): nothing to train" in " ".join(
            again.stdout.split()
        )
        # no Ray started: the answer comes in the time a CLI takes to import
        assert "Ray" not in again.stdout and time.time() - started < 90
        assert (run / "config.yaml").read_bytes() == config
