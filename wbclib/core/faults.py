"""Deterministic fault injection, for the fault tests: ``WBC_FAULT`` names what happens at a named point.

``WBC_FAULT`` holds comma-separated ``ACTION@POINT[#N]`` items: at the N-th time (default: the first) this
process reaches POINT in one run, ACTION happens. ``WBC_FAULT_RUN=<name>`` limits the faults to the run directory of
that name (a study runs many). Without ``WBC_FAULT`` every point is a no-op.

Actions:

- ``kill``: SIGKILL this process on the spot (nothing is flushed, no handler runs);
- ``pause``: stop here until killed (a test then kills the process and whatever started it);
- ``nan`` / ``inf``: the caller turns the value it is computing into NaN / infinity;
- ``pretend``: the machine lacks something it has (``pretend@cpu-without-bf16``: no native bf16 on the CPU).

Points reached by ``wbc train`` (and by the training notebook, which calls the same code):

- ``step``: after each optimiser step; ``train-loss`` / ``val-loss``: each training / validation batch's loss;
- ``write:<file name>``: a file's new content is complete under its temporary name, not yet renamed
  (``write:checkpoint.pt``, ``write:history.csv``, ``write:embeddings.npz``, ``write:metrics.json``, ...);
- ``after-checkpoint``: a checkpoint is saved, the history file not yet rewritten;
- ``after-last-epoch``: the last epoch is saved, the final evaluation not yet started;
- ``finished``: ``metrics.json`` is written (what follows is the notebook's figures).

Example: ``WBC_FAULT='kill@step#7' wbc train ...`` dies during its seventh optimiser step.
"""

from __future__ import annotations

import os
import signal
import time

ENV, ENV_RUN = "WBC_FAULT", "WBC_FAULT_RUN"
ACTIONS = ("kill", "pause", "nan", "inf", "pretend")

_counts: dict[str, int] = {}
_run: str | None = None


def enter_run(name: str) -> None:
    """A run starts: name its directory (for ``WBC_FAULT_RUN``) and count the points from zero again."""
    global _run
    _run = name
    _counts.clear()


def _parse(text: str) -> list[tuple[str, str, int]]:
    items = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        action, _, rest = item.partition("@")
        where, _, nth = rest.partition("#")
        if action not in ACTIONS or not where:
            raise ValueError(f"{ENV}: cannot read {item!r}; expected ACTION@POINT[#N] with ACTION in {ACTIONS}")
        items.append((action, where, int(nth or 1)))
    return items


def point(name: str) -> str | None:
    """Mark that this process reached ``name``; act on a matching fault (kill, pause) or return its action
    (``nan``, ``inf``) for the caller to apply. None when no fault is due here."""
    text = os.environ.get(ENV)
    if not text:
        return None
    only = os.environ.get(ENV_RUN)
    if only and only != _run:
        return None
    _counts[name] = _counts.get(name, 0) + 1
    for action, where, nth in _parse(text):
        if action == "pretend" or where != name or nth != _counts[name]:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "pause":
            while True:
                time.sleep(1)
        return action
    return None


def poison(name: str) -> float | None:
    """NaN or infinity if a ``nan``/``inf`` fault is due at ``name``, else None."""
    action = point(name)
    return float(action) if action in ("nan", "inf") else None


def pretend(name: str) -> bool:
    """Whether ``WBC_FAULT`` holds ``pretend@<name>`` (a property of the machine: no count, no run filter)."""
    text = os.environ.get(ENV)
    return bool(text) and any(a == "pretend" and w == name for a, w, _ in _parse(text))
