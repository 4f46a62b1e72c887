"""One writer per folder: the lock every command takes on the folder it writes.

    with lock_folder(run_dir, "run dir", "loomray train"):
        ...  # nobody else writes into run_dir meanwhile

The lock is a record lock (``fcntl``) on ``<folder>/.loomray.lock``, so it holds
between processes on one machine and between machines on NFS (v4, and v3 with
lockd; not on a mount with ``nolock``). The kernel drops it when its holder dies
(on NFSv4 the server drops it when the holder's lease runs out, about 90 s after
its machine is gone; on NFSv3 when that machine comes back and says so), so the
lock of a dead holder is taken over without anyone deleting anything. The file
also names its holder (pid, host, command, since when), which is what a refused
writer is told. A holder that ends removes the file (while still holding it; a
writer that opened it meanwhile sees that and opens the new one), so the folder is
left as it was; a killed holder leaves it behind, harmless.

On Linux the lock is an open-file-description lock: it belongs to the open file,
so reading the holder's name through another handle of the same process cannot
drop it, and two handles of one process exclude each other. A process still holds
a folder once: locking a folder it already holds nests (``loomray reflow`` holds
its run dir and calls the training, which locks it again). Where a filesystem has
no locks at all (ENOLCK, ENOSYS, EOPNOTSUPP), the command goes on with a warning;
``LOOMRAY_LOCKS=0`` turns locking off.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".loomray.lock"
UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
BUSY = (errno.EACCES, errno.EAGAIN)


class LockError(ValueError):
    """Another process writes into the folder (the message names it), or the folder
    cannot be locked."""


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


_HELD: dict[str, list] = {}  # resolved folder -> [file descriptor or None, depth]
_GUARD = threading.Lock()


def read_holder(folder: str | os.PathLike) -> Holder | None:
    """Who holds (or last held) the folder's lock, as its file says; None if unknown."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text())
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), data["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_lock(fd: int, kind: int) -> None:
    """Lock the whole file (``kind``: F_WRLCK, F_RDLCK), never waiting; OSError if not."""
    if hasattr(fcntl, "F_OFD_SETLK"):
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0))
    else:  # a process-wide POSIX lock: _HELD keeps one handle per folder
        fcntl.lockf(fd, (fcntl.LOCK_EX if kind == fcntl.F_WRLCK else fcntl.LOCK_SH) | fcntl.LOCK_NB)


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


def _open_lock_file(path: Path, folder: Path, what: str, advice: str | None) -> int:
    """The lock file, open for writing. Another user's file that nobody holds (its
    holder was killed) is removed first; one that somebody holds is a refusal."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except PermissionError:
        pass
    except OSError as err:  # a folder or a link in its place, a read-only disk...
        raise LockError(f"cannot lock {what} {folder}: {path}: {err.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise LockError(f"cannot lock {what} {folder}: {err.strerror}") from None
    try:
        _record_lock(fd, fcntl.F_RDLCK)
    except OSError as err:
        if err.errno in BUSY:
            raise _refusal(folder, what, advice) from None
        raise LockError(f"cannot lock {what} {folder}: {err.strerror}") from None
    finally:
        os.close(fd)
    try:
        path.unlink()  # a stale file of another user: nobody holds it
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        raise LockError(
            f"cannot lock {what} {folder}: {path} belongs to another user and cannot be "
            f"replaced ({err.strerror}); remove it"
        ) from None


def _acquire(folder: Path, what: str, command: str, advice: str | None) -> int | None:
    """The locked file's descriptor; None where the filesystem has no locks."""
    path = folder / LOCK_FILE
    while True:
        fd = _open_lock_file(path, folder, what, advice)
        try:
            _record_lock(fd, fcntl.F_WRLCK)
        except OSError as err:
            os.close(fd)
            if err.errno in BUSY:
                raise _refusal(folder, what, advice) from None
            if err.errno in UNSUPPORTED:
                print(
                    f"warning: {what} {folder} cannot be locked ({err.strerror}): nothing "
                    "stops a second command from writing into it",
                    file=sys.stderr,
                )
                return None
            raise LockError(f"cannot lock {what} {folder}: {err.strerror}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder removed on leaving: take the new one
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**me, "since": time.time()}).encode(), 0)
        os.fsync(fd)
    except OSError as err:  # a full disk, say: held, but nameless
        print(f"warning: cannot write who holds {what} {folder}: {err.strerror}", file=sys.stderr)
    return fd


def _release(folder: Path, fd: int | None) -> None:
    if fd is None:
        return
    path = folder / LOCK_FILE
    try:
        # removed while still held, so whoever opened it meanwhile sees that it is no
        # longer the lock (``_same_file``) and tries again
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    os.close(fd)  # drops the lock


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
                fd = None if not locks_wanted() else _acquire(
                    folder, what, command or this_command(), advice
                )
            except LockError as err:
                _remove_empty(made)
                raise err if error is LockError else error(str(err)) from None
            _HELD[key] = [fd, 1]
    try:
        yield folder
    finally:
        with _GUARD:
            held = _HELD[key]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                _release(folder, held[0])
                _remove_empty(made)


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders a lock made (deepest first) while they are empty."""
    for created in made:
        try:
            created.rmdir()
        except OSError:  # something is in it now, someone else's
            break


def locks_wanted() -> bool:
    """False when ``LOOMRAY_LOCKS`` is 0 (false, no, off): for filesystems whose locks
    misbehave. Nothing then stops two commands writing into one folder."""
    return os.environ.get("LOOMRAY_LOCKS", "1").strip().lower() not in ("0", "false", "no", "off")


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        now, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def holds_anything(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides a lock file."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())
