"""Run directories: atomic writes, checkpoints that are safe to load, and reading a run's artifacts.

A run directory ``runs/<id>/`` holds everything one run produced::

    config.json      the RunConfig            history.csv     one row per epoch
    checkpoint.pt    last epoch (resumable)   metrics.json    final metrics (written last: "finished")
    manifest.json    provenance               embeddings.npz  embeddings of the reported split
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import WbcError

CHECKPOINT = "checkpoint.pt"
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
        torch.save(state, tmp)
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
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    path = resolve_checkpoint(run_or_file)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise WbcError(f"refusing to load {path}: it needs arbitrary code to unpickle ({first[:200]}); "
                       "only checkpoints of tensors and plain values are loaded") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WbcError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if isinstance(state, dict) and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}  # a bare state_dict
    if not isinstance(state, dict) or "model" not in state:
        raise WbcError(f"{path} is not a wbc checkpoint (no 'model' weights)")
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
