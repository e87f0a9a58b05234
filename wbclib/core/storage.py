"""Writing files so that a kill never leaves half of one, reading them back, and locking a folder.

Every file the project writes (a run's artifacts, a prepared data set's manifest, the book's tables) goes through
:func:`write_atomic`: a temporary file beside the target, flushed, then renamed over it. :class:`FolderLock` makes
one process at a time the writer of a folder; :func:`refuse_inside` keeps every command out of the data it reads.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from wbclib import WbcError
from wbclib.core import faults

try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_beside(path: Path) -> str:
    """A temporary file in the folder of ``path`` (same file system, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
    return tmp


def replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``: a kill
    leaves either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a text or bytes file atomically (see :func:`replace_atomically`)."""
    payload = data.encode() if isinstance(data, str) else data
    replace_atomically(path, lambda f: f.write(payload))


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None



# -- where a command may write, and who writes ----------------------------------------------------------------

def refuse_inside(out: str | Path, roots, option: str) -> None:
    """Refuse an output folder inside (or equal to) any data folder that the command reads."""
    target = Path(out).expanduser().resolve()
    for root in roots:
        if root is None:
            continue
        r = Path(root).expanduser().resolve()
        if target.is_relative_to(r):
            raise WbcError(f"{option} {out} is inside the data folder {root}, which this command reads; nothing "
                           "is ever written inside a data folder: give an output folder outside it")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed writer left in ``folder`` (``.<name>.<random>.tmp``); the
    caller holds the folder's lock, so no live writer owns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class Busy(WbcError):
    """Another process holds the lock of a run directory or a runs folder."""


#: flock's errors on a filesystem that has no flock (GPFS, Lustre mounted without -o flock, some NFS setups).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


class FolderLock:
    """An exclusive lock on a folder, held by this process until :meth:`release` (or its death: the kernel
    drops the lock when its holder is killed, so a killed holder never leaves it stuck).

    The lock file (``<folder>/.lock``) names the holder: process id, host, start time and command. The lock is an
    ``flock``; on a filesystem without flock (GPFS, some Lustre and NFS mounts) it is a POSIX record lock
    (``fcntl``) on the same file, which such filesystems share between nodes, and :attr:`note` says so; where
    neither works the lock is refused with the fix.
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what, self.fd, self.note = Path(folder), what, None, ""

    def acquire(self) -> FolderLock:
        if fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no flock here: a POSIX record lock instead
                self.note = (f"note: the filesystem of {self.folder} does not support flock ({exc.strerror}); "
                             "locked with a POSIX record lock (fcntl) instead")
        except OSError as exc:
            if exc.errno not in _HELD:
                os.close(fd)
                raise WbcError(f"cannot lock the {self.what} {self.folder}: its filesystem supports neither flock "
                               f"nor POSIX record locks ({exc.strerror}); put it on a filesystem with locks (Lustre: "
                               "mount with -o flock; NFS: with its lock service), e.g. give another --runs-dir") \
                    from None
            holder = ""
            for _ in range(20):  # the holder writes its name right after locking
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise Busy(f"{self.what} {self.folder} is in use by {holder or 'another process'} (lock file {path}); "
                       "wait for it to finish or stop it, then run again") from None
        cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({cmd})\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
