"""Run directories: atomic writes, checkpoints that are safe to load, and reading a run's artifacts.

A run directory ``runs/<id>/`` holds everything one run produced::

    config.json      the RunConfig            history.csv     one row per epoch
    checkpoint.pt    last epoch (resumable)   metrics.json    final metrics (written last: "finished")
    manifest.json    provenance               embeddings.npz  embeddings of the reported split
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import WbcError, faults

try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None

CHECKPOINT = "checkpoint.pt"
#: Where the study records a run's place in its grid (configuration, seed, dataset, subset, pretrained, masks,
#: chapter): the analysis and the book group on this file, so a run id is made once and never parsed back.
STRUCTURE = "run.json"


def run_id(configuration: str, seed: int) -> str:
    """The one run-id format: ``<configuration>-s<seed>``."""
    return f"{configuration}-s{seed}"


def wbc_configuration(subset: int, pretrained: bool, masks: bool) -> str:
    """The name of a Table 2 configuration, e.g. ``wbc10-pretrained-mask``."""
    return f"wbc{subset}-{'pretrained' if pretrained else 'scratch'}-{'mask' if masks else 'nomask'}"


def cam16_configuration(prcc: bool, dice: bool) -> str:
    """The name of a Table 1 configuration, e.g. ``cam16-ce-prcc-dice``."""
    return "cam16-ce" + ("-prcc" if prcc else "") + ("-dice" if dice else "")


def smear_configuration(dataset: str, subset: int | None = None) -> str:
    """The name of a stage of the blood-smear chain (reconstruction on smear tiles instead of H&E, then CAM16
    with cross-entropy and Dice, then WBC with masks): ``smears``, ``cam16-ce-smears-dice``, ``wbc1-smears-mask``."""
    return {"prcc": "smears", "cam16": "cam16-ce-smears-dice"}.get(dataset) or f"wbc{subset}-smears-mask"


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_beside(path: Path) -> str:
    """A temporary file in the folder of ``path`` (same file system, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
    return tmp


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that a kill leaves either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """A checkpoint file, or the checkpoint of a run directory."""
    p = Path(run_or_file)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise WbcError(f"checkpoint not found: {p} (give a run directory holding {CHECKPOINT}, or a .pt file)")
    return p


def load_checkpoint(run_or_file: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never arbitrary code.

    Every way a file can fail to be a checkpoint (empty, truncated, another kind of file, a pickle that needs
    code, no model weights) is one :class:`WbcError` naming the file."""
    path = resolve_checkpoint(run_or_file)
    what = f"a checkpoint written by wbc train ({CHECKPOINT} of a run directory)"
    if path.stat().st_size == 0:
        raise WbcError(f"cannot read checkpoint {path}: it is empty (0 bytes); expected {what}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        needs = next((line for line in lines if "GLOBAL" in line or "global" in line), None)
        if needs:
            raise WbcError(f"refusing to load {path}: it needs arbitrary code to unpickle ({needs[:200]}); "
                           "only checkpoints of tensors and plain values are loaded") from None
        raise WbcError(f"cannot read checkpoint {path}: not a PyTorch checkpoint; expected {what}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise WbcError(f"cannot read checkpoint {path}: truncated, damaged or not a PyTorch checkpoint "
                       f"({type(exc).__name__}: {first}); expected {what}") from None
    if isinstance(state, dict) and "model" not in state and state and \
            all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}  # a bare state_dict
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not state["model"] or \
            not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise WbcError(f"{path} is not a wbc checkpoint (no 'model' weights); expected {what}")
    if "config" in state and not isinstance(state["config"], dict):
        raise WbcError(f"{path} is not a wbc checkpoint (its 'config' is not a dict); expected {what}")
    return state


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(run_dir: Path, config_dict: dict | None = None) -> bool:
    """A run is finished when its metrics.json exists (written last) and, if given, its config matches."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        return False
    if config_dict is None:
        return True
    return read_json(run_dir / "config.json") == config_dict


def config_digest(config_dict: dict) -> str:
    """Eight hex digits that identify a run config (same config, same digest)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:8]


def default_run_dir(config, parent: str | Path = "runs") -> Path:
    """A run directory named from the config, e.g. ``runs/notebook-wbc100-3f2a9c1d``: changing any parameter
    gives a new directory, so a notebook rerun never resumes another configuration's checkpoint."""
    what = f"{config.dataset}{config.subset}" if config.dataset == "wbc" else config.dataset
    return Path(parent) / f"notebook-{what}-{config_digest(config.to_dict())}"


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


def write_structure(run_dir: Path, structure: dict) -> None:
    """Record a run's place in the study (see :data:`STRUCTURE`)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / STRUCTURE, structure)


def read_structure(run_dir: Path) -> dict:
    """A run's place in the study; a run trained outside it (``wbc train``) is its own configuration, seed 0."""
    return read_json(Path(run_dir) / STRUCTURE) or {"configuration": Path(run_dir).name, "seed": 0,
                                                     "chapter": "report"}
