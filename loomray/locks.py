"""One writer per folder: the lock every command takes on the folder it writes.

    with lock_folder(run_dir, "run dir", "loomray train"):
        ...  # nobody else writes into run_dir meanwhile

The lock is a POSIX record lock (``fcntl``) on ``<folder>/.loomray.lock``, so it
holds between processes on one machine and between machines on NFS (v3 with lockd,
v4; not on a mount with ``nolock``), and the kernel (or the NFS server, when the
holder's machine is gone) drops it when its holder dies: the lock of a dead holder
is taken over without anyone deleting anything. The file also names its holder
(pid, host, command, since when), which is what a refused writer is told. A holder
that ends removes the file (while still holding it; a writer that opened it
meanwhile sees that and opens the new one), so the folder is left as it was.

POSIX locks belong to a process, not to a file handle: a second lock by the same
process would succeed, and closing any handle of the file would drop it. So a
process keeps one handle per locked folder, and locking a folder it already holds
nests (``loomray reflow`` holds its run dir and calls the training, which locks it
again).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".loomray.lock"


class LockError(ValueError):
    """Another process writes into the folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    command: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.since))
        return f"{self.command} (pid {self.pid} on {self.host}, since {when})"


def this_command() -> str:
    """How this process was started, as a user would type it."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    if argv[0] == "__main__.py":  # python -m loomray
        argv[0] = "loomray"
    text = shlex.join(argv)
    return text if len(text) <= 100 else text[:97] + "..."


_HELD: dict[str, list] = {}  # resolved folder -> [file descriptor, depth]
_GUARD = threading.Lock()


def read_holder(folder: str | os.PathLike) -> Holder | None:
    """Who holds (or last held) the folder's lock, as its file says; None if unknown."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text())
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), data["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _refusal(folder: Path, what: str, advice: str | None) -> LockError:
    holder = None
    for _ in range(10):  # the holder writes its name right after taking the lock
        holder = read_holder(folder)
        if holder is not None:
            break
        time.sleep(0.05)
    who = holder.describe() if holder else "another loomray process"
    advice = advice or f"wait for it to finish, or pass another {what}"
    return LockError(f"{what} {folder} is in use by {who}; {advice}")


def _acquire(folder: Path, what: str, command: str, advice: str | None) -> int:
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise _refusal(folder, what, advice) from None
            raise LockError(f"cannot lock {what} {folder}: {err.strerror}") from err
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder removed on leaving: take the new one
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({**me, "since": time.time()}).encode(), 0)
    os.fsync(fd)
    return fd


@contextmanager
def lock_folder(
    folder: str | os.PathLike,
    what: str = "folder",
    command: str | None = None,
    advice: str | None = None,
    error: type[Exception] = LockError,
) -> Iterator[Path]:
    """Hold ``folder`` (made if missing) for this process; LockError naming the holder
    (and ``advice``, default: wait or pass another ``what``) when another process holds
    it (as ``error``, a ValueError of the caller's, when given). ``command`` names this
    holder to others (default: this process's command line).
    Folders this call made, and that hold nothing but the lock when it is released,
    are removed again."""
    from loomray.paths import PathError, folder_to_write

    try:
        folder = folder_to_write(folder, what)
        made = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
        folder.mkdir(parents=True, exist_ok=True)
    except PathError as err:
        raise error(str(err)) from None
    except OSError as err:
        raise error(f"cannot make {what} {folder}: {err.strerror or err}") from None
    key = str(folder.resolve())
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
        else:
            try:
                _HELD[key] = [_acquire(folder, what, command or this_command(), advice), 1]
            except LockError as err:
                raise err if error is LockError else error(str(err)) from None
    try:
        yield folder
    finally:
        with _GUARD:
            held = _HELD[key]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                # removed while still held, so whoever opened it meanwhile sees that
                # it is no longer the lock (``_same_file``) and tries again
                (folder / LOCK_FILE).unlink(missing_ok=True)
                os.close(held[0])  # drops the lock
                for created in made:
                    try:
                        created.rmdir()  # only if empty
                    except OSError:  # something is in it now, someone else's
                        break


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def holds_anything(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides a lock file."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())
