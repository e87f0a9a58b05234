"""The study's grid on a Slurm cluster, through submitit: one Slurm job per configuration.

:class:`SlurmExecutor` is the executor :func:`wbclib.study.runner.run_grid` drives with ``wbc study --executor slurm``;
each job runs the same training notebook with the same resolved config as a local study, in a fresh kernel on
the node Slurm picks, and writes its run directory on the shared filesystem exactly as a local run does.

Outcomes: a job that returned ran its notebook to the end (``finished``) or its notebook raised (``failed``, not
retried); a job that never returned (cancelled, preempted, out of memory, node failure, time limit) ``died`` and
is started again by the grid runner, resuming from its checkpoint. A time limit or a preemption signal is first
handled by submitit itself, which requeues the same job (:class:`NotebookJob` is checkpointable).

Each submission is recorded in ``runs/.submitit/jobs.json`` (run id, Slurm job id, config digest), next to
submitit's logs (``runs/.submitit/<job id>/``): a study that was interrupted, or that submitted with
``--detach``, leaves its jobs to the cluster, and the next ``wbc study`` waits for them instead of submitting
them again.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from wbclib import WbcError
from wbclib.core import storage
from wbclib.training import runs

try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is a dependency; without it only --executor slurm is unavailable
    Checkpointable = object

#: Where submitit's logs and pickles and the job records go, inside the runs folder.
FOLDER = ".submitit"
RECORDS = "jobs.json"
#: Slurm states in which a job may still run.
LIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "READY",
        "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}


@dataclass
class SlurmSettings:
    """What each job asks Slurm for. ``time`` is minutes or ``[D-]HH:MM[:SS]``; ``sbatch`` holds any other
    ``sbatch`` option (``{"qos": "normal", "constraint": "a100"}``); a job that reaches ``time`` is requeued and
    resumes from its checkpoint; ``setup`` holds shell lines run before the
    job (``module load ...``); ``poll_s`` is how often the accounting database is asked about the jobs."""

    partition: str | None = None
    account: str | None = None
    time: str | None = "4:00:00"
    gpus: int = 1
    cpus: int | None = None
    mem: str | None = None
    sbatch: dict = field(default_factory=dict)
    setup: list = field(default_factory=list)
    poll_s: float = 10.0

    def timeout_min(self) -> int | None:
        return parse_time(self.time) if self.time else None


def parse_time(text: str) -> int:
    """Slurm's time formats, as whole minutes: ``90``, ``1:30:00``, ``2-00:00:00``, ``1-12``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise WbcError(f"--time {text!r}: expected minutes or [D-]HH:MM[:SS], e.g. 90 or 4:00:00")
    days, a, b, c = m.groups()
    if days is None and b is None:
        return int(a)  # minutes
    hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    return max(1, int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0))


def load_settings(path: str | None = None, **flags) -> SlurmSettings:
    """Settings from a YAML file (its keys: those of :class:`SlurmSettings`, optionally under ``slurm:``),
    then the flags that are not None on top."""
    known = {f.name for f in fields(SlurmSettings)}
    values: dict = {}
    if path:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise WbcError(f"cannot read the cluster config {path} ({type(exc).__name__}); expected a YAML mapping "
                           f"with some of: {', '.join(sorted(known))}") from None
        data = data.get("slurm", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else []
            raise WbcError(f"cluster config {path}: " + (f"unknown key(s) {', '.join(extra)}; " if extra else "")
                           + f"expected a YAML mapping with some of: {', '.join(sorted(known))}")
        values.update(data)
    sbatch = {**dict(values.pop("sbatch", None) or {}), **dict(flags.pop("sbatch", None) or {})}
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = SlurmSettings(**values, sbatch=sbatch)
    settings.timeout_min()  # a bad time fails here, before anything is submitted
    return settings


def parse_sbatch(items: list[str]) -> dict:
    """``--sbatch KEY=VALUE`` items (``--sbatch qos=high --sbatch constraint=a100``) as a dict."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WbcError(f"--sbatch {item!r}: expected KEY=VALUE with an sbatch option name, e.g. qos=normal")
        out[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    return out


class NotebookRaised(Exception):
    """The job's notebook raised (a detached job ends FAILED with this, so ``afterok`` dependants are cancelled)."""


class NotebookDied(Exception):
    """The job's kernel died under it."""


class NotebookJob(Checkpointable):
    """What runs on the node: papermill executes the training notebook in a fresh kernel. Returns
    ``{"status": "finished" | "failed" | "died", "detail", "started", "seconds"}``; with ``strict`` (detached
    jobs) anything but finished raises instead, so that Slurm records the job as failed.

    On a time limit or a preemption, submitit requeues it with the same arguments; the notebook then resumes the
    run from its last checkpoint (the training notebook always asks to resume)."""

    def __call__(self, notebook: str, output: str, params: dict, cwd: str, kernel: str, strict: bool = False) -> dict:
        started = time.time()
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            os.environ["OMP_NUM_THREADS"] = cpus  # torch's threads: the cores Slurm gave, not the node's
        import papermill
        from papermill.exceptions import PapermillExecutionError

        status, detail = "finished", ""
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            papermill.execute_notebook(notebook, output, parameters=params, kernel_name=kernel, cwd=cwd,
                                       progress_bar=False, log_output=True, request_save_on_cell_execute=False)
        except PapermillExecutionError as exc:
            status, detail = "failed", f"{exc.ename}: {str(exc.evalue).splitlines()[0][:200]}"
        except Exception as exc:  # the kernel died, or could not start
            status, detail = "died", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        if strict and status != "finished":
            raise (NotebookRaised if status == "failed" else NotebookDied)(detail)
        return {"status": status, "detail": detail, "started": started, "seconds": time.time() - started}


def require_slurm() -> None:
    """Refuse in one line where Slurm's commands are missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise WbcError("--executor slurm needs the submitit package: pip install submitit") from None
    missing = [c for c in ("sbatch", "sacct", "scancel") if shutil.which(c) is None]
    if missing:
        raise WbcError(f"--executor slurm: {', '.join(missing)} not found on PATH; run wbc study on a Slurm login "
                       "node (where sbatch and sacct work)")


class SlurmExecutor:
    """Submits each job of the grid to Slurm (see the module's docstring); with ``detach`` it submits the whole
    grid at once, dependants held by ``afterok`` on their starting point (and cancelled by Slurm if it fails), and
    leaves it to the cluster."""

    capacity = 10**6  # the cluster's queue takes every job that is ready

    def __init__(self, runs_dir: Path, settings: SlurmSettings, detach: bool = False, log=print):
        import submitit

        require_slurm()
        self.runs_dir, self.settings, self.detach, self.log = Path(runs_dir), settings, detach, log
        self.folder = self.runs_dir / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        params = {"gpus_per_node": settings.gpus or None, "cpus_per_task": settings.cpus,
                  "slurm_partition": settings.partition, "slurm_account": settings.account,
                  "slurm_mem": settings.mem, "slurm_setup": list(settings.setup) or None,
                  "timeout_min": settings.timeout_min()}
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self.records = storage.read_json(self.folder / RECORDS) or {}
        self.running: dict[str, tuple] = {}  # run id -> (job, submitit job, submitted at)
        self.ended: list = []
        self.ids: dict[str, str] = {}  # run id -> Slurm job id, of what this study submitted or attached to
        self.waits: list[float] = []  # seconds from submission to start, of the jobs this study submitted
        self.last_poll = 0.0

    # -- submitting --------------------------------------------------------------------------------------------
    def submit(self, job, params: dict) -> None:
        import submitit

        from wbclib.study.book import KERNEL, NOTEBOOKS

        digest = runs.config_digest(params["run_config"])
        earlier = self._earlier(job, digest) if job.attempts == 1 else None
        if earlier is not None:
            sj, submitted = earlier, None  # its wait in the queue is not this study's to measure
            self.log(f"  {job.id:32s} waiting   Slurm job {sj.job_id}, submitted by an earlier wbc study")
        else:
            extra = dict(self.settings.sbatch)
            dep = self.ids.get(job.depends) if self.detach and job.depends else None
            if dep:
                extra.update(dependency=f"afterok:{dep}", kill_on_invalid_dep="yes")
            self.executor.update_parameters(name=f"wbc-{job.id}", slurm_additional_parameters=extra)
            submitted = None if dep else time.time()  # the wait behind a dependency is no overhead
            try:
                sj = self.executor.submit(NotebookJob(), str(NOTEBOOKS / "train.ipynb"), str(job.notebook),
                                          params, str(NOTEBOOKS), KERNEL, self.detach)
            except (submitit.core.utils.FailedJobError, OSError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
                raise WbcError(f"sbatch refused the job {job.id}: {first}") from None
            self.records[job.id] = {"job": sj.job_id, "config": digest, "submitted": time.time()}
            storage.write_json(self.folder / RECORDS, self.records)
            self.log(f"  {job.id:32s} submitted Slurm job {sj.job_id}" + (f" (after {dep})" if dep else "")
                     + f", log {self.folder / sj.job_id}")
        self.ids[job.id] = sj.job_id
        if self.detach:
            job.status, job.detail = "submitted", f"Slurm job {sj.job_id}"
            self.ended.append(job)
        else:
            self.running[job.id] = (job, sj, submitted)

    def _earlier(self, job, digest: str):
        """The Slurm job an earlier study submitted for this run, with this config, if it may still run or has
        left its result; else None (it is submitted anew)."""
        import submitit

        rec = self.records.get(job.id)
        if not rec or rec.get("config") != digest:
            return None
        sj = submitit.SlurmJob(folder=self.folder / "%j", job_id=str(rec["job"]))
        if sj.paths.result_pickle.exists():
            return sj
        state = sj.watcher.get_state(sj.job_id, mode="force").upper().split(" ")[0]
        return sj if state in LIVE and state != "UNKNOWN" else None

    # -- waiting -----------------------------------------------------------------------------------------------
    def wait(self) -> list:
        while not self.ended:
            force = time.time() - self.last_poll >= self.settings.poll_s
            if force:
                self.last_poll = time.time()
            for rid, (job, sj, submitted) in list(self.running.items()):
                if sj.done(force_check=force):
                    force = False  # one sacct call answers for every job
                    del self.running[rid]
                    self._outcome(job, sj, submitted)
                    self.ended.append(job)
            if not self.ended:
                time.sleep(1)
        ended, self.ended = self.ended, []
        return ended

    def _outcome(self, job, sj, submitted: float | None) -> None:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            result = sj.result()
        except UncompletedJobError:
            state = sj.watcher.get_state(sj.job_id, mode="force").split(" ")[0]  # "CANCELLED by 0": the state
            job.status, job.detail, job.seconds = "died", f"Slurm job {sj.job_id} ended {state}", 0.0
            return
        except FailedJobError as exc:  # it raised: a detached job's notebook, or submitit gave up requeueing
            text = str(exc)
            m = re.search(r"(NotebookRaised|NotebookDied|UncompletedJobError): (.*)", text)
            kind, what = (m.group(1), m.group(2).strip()) if m else ("", text.strip().splitlines()[-1])
            job.status = "failed" if kind == "NotebookRaised" else "died" if kind else "failed"
            job.detail, job.seconds = f"{what[:200]} (Slurm job {sj.job_id})", 0.0
            self._forget(job.id, job.status)
            return
        job.status, job.detail, job.seconds = result["status"], result.get("detail", ""), result["seconds"]
        if job.status == "died":  # its kernel was killed under it, by Slurm (scancel, time limit) or the system
            state = sj.watcher.get_state(sj.job_id, mode="force").split(" ")[0]
            job.detail += f"; Slurm job {sj.job_id} ended {state}"
        if submitted and result.get("started", 0) >= submitted:
            self.waits.append(result["started"] - submitted)
        self._forget(job.id, job.status)

    def _forget(self, rid: str, status: str) -> None:
        """Drop the record of a job whose outcome this study collected (a died job is submitted again)."""
        if status != "died" and rid in self.records:
            del self.records[rid]
            storage.write_json(self.folder / RECORDS, self.records)

    # -- the end -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.waits:
            self.log(f"slurm: submission to start {statistics.median(self.waits):.1f} s median "
                     f"({min(self.waits):.1f}-{max(self.waits):.1f} s) over {len(self.waits)} job(s)")
        if self.detach and self.ids:
            self.log(f"slurm: {len(self.ids)} job(s) left to the cluster (records in {self.folder / RECORDS}); "
                     "the same wbc study without --detach waits for them, then builds the book")
        if self.running:
            names = ", ".join(f"{rid} (Slurm job {sj.job_id})" for rid, (_, sj, _) in self.running.items())
            self.log(f"slurm: left to the cluster, still queued or running: {names}; logs in {self.folder}; the "
                     "next wbc study with the same options waits for them (scancel them to stop them)")


def train_distributed(run_config: dict, run_dir: str) -> dict:
    """Train one configuration with every task of a Slurm job (one task per GPU) as one DDP job: submitit's
    ``TorchDistributedEnvironment`` exports ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``, the variables :mod:`wbclib.training.distributed` reads (as under torchrun). Every task sees all the
    node's GPUs and takes ``cuda:LOCAL_RANK``. Submit it with ``tasks_per_node`` = ``gpus_per_node`` = N (see the
    book's "Running on a cluster"); it resumes from the run's checkpoint when the job is started again."""
    from submitit.helpers import TorchDistributedEnvironment

    from wbclib.core import config as cfg
    from wbclib.training import train

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return train.fit(cfg.from_dict(run_config), run_dir, resume=True, progress=False)
