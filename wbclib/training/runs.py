"""Run directories: their names, checkpoints that are safe to load, and a run's place in the study.

A run directory ``runs/<id>/`` holds everything one run produced::

    config.json      the RunConfig            history.csv     one row per epoch
    checkpoint.pt    last epoch (resumable)   metrics.json    final metrics (written last: "finished")
    manifest.json    provenance               embeddings.npz  embeddings of the reported split
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.core.storage import read_json, replace_atomically, write_json

CHECKPOINT = "checkpoint.pt"
#: Where the study records a run's place in its grid (configuration, seed, dataset, subset, pretrained, masks,
#: chapter; see :func:`wbclib.core.grid.structure`): the analysis and the book group on this file, so a run id is
#: made once and never parsed back. The configurations themselves are the rows of :mod:`wbclib.core.grid`.
STRUCTURE = "run.json"


def run_id(configuration: str, seed: int) -> str:
    """The one run-id format: ``<configuration>-s<seed>``."""
    return f"{configuration}-s{seed}"


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    replace_atomically(path, lambda f: torch.save(state, f))


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """A checkpoint file, or the checkpoint of a run directory."""
    p = Path(run_or_file)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise WbcError(f"checkpoint not found: {p} (give a run directory holding {CHECKPOINT}, or a .pt file)")
    return p


def is_current(result: str | Path, run_or_file: str | Path) -> bool:
    """Whether a result kept beside a run (an evaluation, a table) was made from the run's present checkpoint:
    it exists and is not older than the checkpoint."""
    result = Path(result)
    return result.is_file() and result.stat().st_mtime >= resolve_checkpoint(run_or_file).stat().st_mtime


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
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not state["model"] or \
            not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise WbcError(f"{path} is not a wbc checkpoint (no 'model' weights); expected {what}")
    if not isinstance(state.get("config"), dict):
        raise WbcError(f"{path} is not a wbc checkpoint (no 'config' of the run that trained it); expected {what}")
    return state


def is_finished(run_dir: Path, config_dict: dict | None = None) -> bool:
    """A run is finished when its metrics.json exists (written last) and, if given, its config matches."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        return False
    if config_dict is None:
        return True
    return cfg.same_config(read_json(run_dir / "config.json"), config_dict)


def config_digest(config_dict: dict) -> str:
    """Eight hex digits that identify a run config (same config, same digest)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:8]


def default_run_dir(config, parent: str | Path = "runs") -> Path:
    """A run directory named from the config, e.g. ``runs/notebook-wbc100-3f2a9c1d``: changing any parameter
    gives a new directory, so a notebook rerun never resumes another configuration's checkpoint."""
    what = f"{config.dataset}{config.subset}" if config.dataset == "wbc" else config.dataset
    return Path(parent) / f"notebook-{what}-{config_digest(config.to_dict())}"


def write_structure(run_dir: Path, structure: dict) -> None:
    """Record a run's place in the study (see :data:`STRUCTURE`)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / STRUCTURE, structure)


def read_structure(run_dir: Path) -> dict:
    """A run's place in the study; a run trained outside it (``wbc train``) is its own configuration, seed 0."""
    return read_json(Path(run_dir) / STRUCTURE) or {"configuration": Path(run_dir).name, "seed": 0,
                                                     "chapter": "report"}
