"""One writer per folder: a second process is refused with the holder's name, a dead
holder's lock is taken over, and a folder is left as it was found."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from loomray.files.locks import LOCK_FILE, LockError, holds_anything, lock_folder, read_holder

HOLD = """
import sys, time
from loomray.files.locks import lock_folder
with lock_folder(sys.argv[1], "run dir", "loomray train --config digits"):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(folder):
    """Another process that holds ``folder``'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holders_name(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        with pytest.raises(LockError) as err:
            with lock_folder(run, "run dir"):
                pass
        message = str(err.value)
        assert f"run dir {run} is in use by loomray train --config digits" in message
        assert f"(pid {holder.pid} on {socket.gethostname()}, since " in message
        assert "wait for it to finish, or pass another run dir" in message
        assert read_holder(run).pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up: the file stays
    holder.wait()
    assert read_holder(run).pid == holder.pid
    with lock_folder(run, "run dir", "me") as held:
        assert held == run and read_holder(run).pid == os.getpid()
        assert read_holder(run).command == "me"
    assert not (run / LOCK_FILE).exists()


def test_a_folder_is_left_as_it_was_found(tmp_path):
    fresh = tmp_path / "a" / "b" / "run"
    with lock_folder(fresh, "run dir"):
        assert fresh.is_dir() and not holds_anything(fresh)
    assert list(tmp_path.iterdir()) == []  # what it made for the lock is gone again
    kept = tmp_path / "kept"
    kept.mkdir()
    with lock_folder(kept, "run dir"):
        (kept / "config.yaml").write_text("x")
        assert holds_anything(kept)
    assert [p.name for p in kept.iterdir()] == ["config.yaml"]


def test_one_process_nests_its_locks_and_others_stay_out(tmp_path):
    """reflow holds its run dir and calls the training, which locks it again."""
    with lock_folder(tmp_path, "run dir"):
        with lock_folder(tmp_path, "run dir"):
            assert (tmp_path / LOCK_FILE).exists()
        assert (tmp_path / LOCK_FILE).exists()  # still held by the outer one
        probe = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True
        )
        assert probe.returncode != 0 and "is in use by" in probe.stderr
    assert not (tmp_path / LOCK_FILE).exists()


def test_cli_refuses_a_busy_folder_in_one_sentence(tmp_path):
    """`train`, `evaluate` and `sweep` into folders another process writes: exit 2, the
    holder named, nothing started or written."""
    from loomray.checkpoint import save_checkpoint
    from loomray.cli import app
    from loomray.config import dump_config, load_config
    from loomray.models import build_model

    cfg = load_config("toy2d", ["train.steps=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    ema = build_model(cfg).state_dict()
    save_checkpoint(
        run / "train" / "step-0000001" / "checkpoint.pt",
        {"config": cfg.to_dict(), "step": 1, "ema": ema},
    )
    cases = [
        (run, ["train", "--config", "toy2d", "train.steps=5", "--run-dir", str(run)]),
        (run / "eval", ["evaluate", "--ckpt", str(run), "--n", "50"]),
        (
            tmp_path / "sweeps" / "caches-digits",
            ["sweep", "caches-digits", "--storage", str(tmp_path / "sweeps")],
        ),
    ]
    for folder, args in cases:
        holder = _hold(folder)
        try:
            result = CliRunner().invoke(app, args)
            text = " ".join(result.output.split())
            assert result.exit_code == 2, result.output
            assert f"is in use by loomray train --config digits (pid {holder.pid}" in text
            assert "Traceback" not in text and "starting a local Ray" not in text
        finally:
            holder.kill()
            holder.wait()
    # evaluate wrote nothing (the killed holder's lock file is all there is)
    assert [p.name for p in (run / "eval").iterdir()] == [LOCK_FILE]


def test_reading_the_holder_in_the_holding_process_keeps_the_lock(tmp_path):
    """A record lock of the whole process would be dropped by closing any handle of
    the file, as reading the holder's name does."""
    with lock_folder(tmp_path, "run dir"):
        assert read_holder(tmp_path).pid == os.getpid()
        probe = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True
        )
        assert probe.returncode != 0 and "is in use by" in probe.stderr


def test_a_lock_file_replaced_while_locking_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """Between opening the file and locking it, its holder may end and remove it, and
    a third process make a new one: locking the old file holds nothing."""
    from loomray.files import locks

    real, calls = locks._record_lock, []

    def racing(fd, kind):
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:  # the holder left and a newcomer made the file anew
            (tmp_path / LOCK_FILE).unlink()
            (tmp_path / LOCK_FILE).write_text("")
        real(fd, kind)

    monkeypatch.setattr(locks, "_record_lock", racing)
    (tmp_path / LOCK_FILE).write_text("")
    with lock_folder(tmp_path, "run dir"):
        assert len(calls) == 2 and calls[0] != calls[1]
        assert os.stat(tmp_path / LOCK_FILE).st_ino == calls[1]


def test_no_locks_on_the_filesystem_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    import errno

    from loomray.files import locks

    def unsupported(fd, kind):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks, "_record_lock", unsupported)
    with lock_folder(tmp_path / "run", "run dir"):
        (tmp_path / "run" / "config.yaml").write_text("x")
    assert "cannot be locked (No locks available)" in capsys.readouterr().err
    monkeypatch.setenv("LOOMRAY_LOCKS", "0")  # or asked not to lock at all
    with lock_folder(tmp_path / "other", "run dir"):
        assert not (tmp_path / "other" / LOCK_FILE).exists()


def test_a_folder_that_cannot_hold_a_lock_file_is_one_sentence(tmp_path):
    (tmp_path / LOCK_FILE).mkdir()
    with pytest.raises(LockError, match=f"cannot lock run dir {tmp_path}: .*Is a directory"):
        with lock_folder(tmp_path, "run dir"):
            pass
