"""The study's runs, executed as papermill notebooks in kept-alive kernels (:class:`Slot`), then the analysis and
the book (:mod:`wbclib.study.book`).

The runs are the rows of the grid (:mod:`wbclib.core.grid`) times the seeds: run ``<configuration>-s<seed>``
starts from the run of the configuration its row names, with the same seed, and dependencies run first.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.core import grid as table
from wbclib.core import storage
from wbclib.study.book import (
    KERNEL,
    NOTEBOOKS,
    TIME_PARTS,
    build_book,
    ensure_kernel,
    execute,
    generated,
    path_replacements,
    prepare_book_root,
    publish_runs,
    require_checkout,
    tidy_for_book,
    write_data_summary,
    write_evaluation_page,
    write_performance_page,
    write_shift_page,
    write_walkthrough_page,
)
from wbclib.training import runs


@dataclass
class Job:
    """One configuration of the grid: its id, notebook parameters, the run it starts from and its place in the
    study (``structure``, written to the run's ``run.json``)."""

    id: str
    params: dict
    depends: str | None = None
    structure: dict = field(default_factory=dict)
    status: str = "pending"
    detail: str = ""
    seconds: float = 0.0
    notebook: Path | None = field(default=None, repr=False)
    attempts: int = 0  # times it was started (a run whose process died is started again, see run_grid)


def make_job(configuration: table.Configuration, seed: int) -> Job:
    """The job of one row of the grid (:mod:`wbclib.core.grid`) and one seed; it depends on the run of the
    configuration it starts from, with the same seed."""
    c = configuration
    depends = runs.run_id(c.start_from, seed) if c.start_from else None
    return Job(runs.run_id(c.id, seed), table.params(c, seed), depends, table.structure(c, seed))


def jobs_of(chapters: tuple[str, ...], seeds: list[int]) -> list[Job]:
    """One job per configuration of the chapters and seed: within a seed in :func:`wbclib.core.grid.run_order`,
    then every seed's prcc stage, then every seed's CAM16 stage, then the WBC runs (dependency order)."""
    ordered = sorted(table.configurations(*chapters), key=table.run_order)
    jobs = [make_job(c, s) for s in seeds for c in ordered]
    return sorted(jobs, key=lambda j: table.STAGES.index(j.params["dataset"]))


def grid(seeds: list[int], smear_chain: bool = False) -> list[Job]:
    """Every configuration of the report, in dependency order (and the largest WBC subsets first); with
    ``smear_chain``, also the chain that pretrains on blood-smear tiles instead of H&E (WBC_1 and WBC_10, with
    masks), to compare with the report's chain and with training from scratch."""
    return jobs_of(("report", "smears") if smear_chain else ("report",), seeds)


def select(jobs: list[Job], pattern: str | None) -> list[Job]:
    """Jobs whose id matches the glob (or one of several, separated by commas), plus everything they depend on
    (in dependency order)."""
    if not pattern:
        return jobs
    by_id = {j.id: j for j in jobs}
    globs = [p.strip() for p in pattern.split(",") if p.strip()]
    wanted = {j.id for j in jobs if any(fnmatch.fnmatch(j.id, g) for g in globs)}
    if not wanted:
        raise WbcError(f"--only {pattern!r} matches no run id; ids look like {jobs[0].id}, "
                       f"cam16-ce-dice-s0, wbc10-pretrained-mask-s0")
    frontier = list(wanted)
    while frontier:
        dep = by_id[frontier.pop()].depends
        if dep and dep not in wanted:
            wanted.add(dep)
            frontier.append(dep)
    return [j for j in jobs if j.id in wanted]


def job_config(job: Job, profile: str, data_root: str | None, runs_dir: Path, overrides: dict,
               data: str = "embedded") -> cfg.RunConfig:
    """The one config of a job: the profile, the study's overrides, the job's own (a shift run's remedy), then
    its parameters (dataset, subset, masks, seed, the run it starts from). The runner resolves it once and
    hands it to the notebook whole."""
    init = str((runs_dir / job.depends).resolve()) if job.depends else None
    params = {k: v for k, v in job.params.items() if k != "overrides"}
    return cfg.from_parameters(profile, {**overrides, **job.params.get("overrides", {})}, data=data,
                               data_root=data_root, init=init, **params)


def notebook_params(config: cfg.RunConfig, run_dir: Path) -> dict:
    """What papermill injects into the training notebook: the resolved config, whole, and the run directory."""
    return {"run_config": config.to_dict(), "run_dir": str(Path(run_dir).resolve())}


def _decide(job: Job, status: dict, config: cfg.RunConfig, run_dir: Path) -> bool:
    """Mark a job skipped (its starting point failed) or reused (finished with this config); else True: run it."""
    if job.depends and status.get(job.depends) not in ("finished", "reused", "submitted"):
        job.status, job.detail = "skipped", f"its starting point {job.depends} did not finish"
        return False
    wanted = json.loads(config.to_json())
    if runs.is_finished(run_dir, wanted) and notebook_complete(job.notebook):
        job.status = "reused"
        return False
    old = storage.read_json(run_dir / "config.json")
    if old is not None and not cfg.same_config(old, wanted):
        (run_dir / runs.CHECKPOINT).unlink(missing_ok=True)  # another config: start over, don't resume
    return True


def notebook_complete(path: Path) -> bool:
    """Whether papermill finished executing this notebook (a runner killed before its last save leaves the
    notebook of the start, or none): such a run is executed again, which retrains nothing after its last
    checkpoint."""
    try:
        meta = json.loads(Path(path).read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError, AttributeError):
        return False
    return bool(meta.get("end_time")) and not meta.get("exception")


class Slot:
    """One place the runs of a study execute in turn: a kernel of the project's environment that stays alive
    from one run to the next, so the kernel start and the imports are paid once per slot, not once per run.
    Before each run the kernel's namespace is cleared (``%reset -f``) and its figures closed; only the loaded
    modules remain. ``env`` pins the slot to one GPU or to its share of the CPU threads."""

    def __init__(self, env: dict[str, str]):
        self.env, self.km = env, None

    def kernel(self):
        from jupyter_client.manager import KernelManager

        if self.km is not None and self.km.is_alive():
            kc = self.km.client()
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=60)
                kc.execute_interactive("get_ipython().run_line_magic('reset', '-f')\n"
                                       "import matplotlib.pyplot as _plt; _plt.close('all'); del _plt", timeout=60)
            finally:
                kc.stop_channels()
            return self.km
        self.close()  # a kernel that died (e.g. out of memory) is replaced
        self.km = KernelManager(kernel_name=KERNEL)
        self.km.start_kernel(cwd=str(NOTEBOOKS), env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # its errors reach the notebook, not the study's log
        return self.km

    def run(self, job: Job, params: dict) -> None:
        """Execute the job's training notebook here; record finished or failed (never raise)."""
        import papermill
        from papermill.exceptions import PapermillExecutionError

        t0 = time.time()
        try:
            job.notebook.parent.mkdir(parents=True, exist_ok=True)
            papermill.execute_notebook(str(NOTEBOOKS / "train.ipynb"), str(job.notebook), parameters=params,
                                       kernel_name=KERNEL, km=self.kernel(), progress_bar=False,
                                       log_output=False, request_save_on_cell_execute=False)
            job.status = "finished"
        except PapermillExecutionError as exc:
            job.status, job.detail = "failed", f"{exc.ename}: {str(exc.evalue).splitlines()[0][:200]}"
        except Exception as exc:  # a kernel that died, a missing notebook: record it, keep going
            job.status, job.detail = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            job.seconds = time.time() - t0

    def close(self) -> None:
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:  # already gone
                pass
            self.km = None


def default_jobs(slots_per_gpu: int = 1) -> int:
    """``slots_per_gpu`` configurations per GPU (default one); on a CPU, two side by side (each with half the
    cores) when there are at least two cores: on two cores, two one-thread runs get through the grid about 1.35x
    faster than one two-thread run (measured with the quick profile: 38 s for a WBC_10 run on one thread, 26 s
    on two)."""
    import torch

    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count()) * max(1, slots_per_gpu)
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def slot_envs(parallel: int, gpus: int, cpus: int | None = None) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` slots: with GPUs (and more than one slot), slot i runs on GPU
    ``i mod gpus`` (``CUDA_VISIBLE_DEVICES``), and ``WBC_RUNS_PER_DEVICE`` tells its runs how many runs share
    that GPU (what :mod:`wbclib.training.resident` divides its memory by); on a CPU, each slot gets its share of
    the threads (``OMP_NUM_THREADS``). One slot keeps the environment as it is."""
    if parallel == 1:
        return [{}]
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus),
                 "WBC_RUNS_PER_DEVICE": str(len(range(i % gpus, parallel, gpus)))} for i in range(parallel)]
    threads = max(1, (cpus or os.cpu_count() or 1) // parallel)
    return [{"OMP_NUM_THREADS": str(threads)} for _ in range(parallel)]


class SlotExecutor:
    """Where the runs of a study execute by default: ``parallel`` :class:`Slot` s on this machine, spread over its
    GPUs (several runs on one GPU where there are more slots than GPUs, see :func:`slot_envs`), or else each
    with its share of the CPU threads.

    The executor interface that :func:`run_grid` drives (the Slurm one is :class:`wbclib.study.cluster.SlurmExecutor`):
    ``capacity`` jobs at once; ``submit(job, params)`` starts one; ``wait()`` blocks until at least one has ended
    and returns those, each with ``status`` ``finished``, ``failed`` (its notebook raised: not retried), ``died``
    (its process or machine died: started again up to ``retries`` times) or ``submitted`` (left to the cluster);
    ``close()`` ends what this process owns.
    """

    def __init__(self, parallel: int = 1, gpus: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        if gpus is None:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.slots = [Slot(env) for env in slot_envs(parallel, gpus)]
        self.capacity, self.free, self.running = parallel, list(self.slots), {}
        self.pool = ThreadPoolExecutor(parallel)

    def submit(self, job: Job, params: dict) -> None:
        slot = self.free.pop(0)
        self.running[self.pool.submit(slot.run, job, params)] = (job, slot)

    def wait(self) -> list[Job]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(self.running, return_when=FIRST_COMPLETED)
        ended = []
        for future in done:
            job, slot = self.running.pop(future)
            future.result()
            self.free.append(slot)
            if job.status == "failed" and job.detail.startswith("DeadKernelError"):
                job.status = "died"  # the kernel died (out of memory, killed): not the notebook's own error
            ended.append(job)
        return ended

    def close(self) -> None:
        for slot in self.slots:  # first the kernels, so that a run still executing ends now
            slot.close()
        self.pool.shutdown(wait=True)


def run_grid(jobs: list[Job], configs: dict[str, cfg.RunConfig], runs_dir: Path, parallel: int = 1,
             log=print, executor=None, retries: int = 0) -> list[Job]:
    """Execute each job's training notebook, skipping finished runs with the same config; never stop early.

    ``executor`` runs the jobs (default: a :class:`SlotExecutor` of ``parallel`` slots on this machine); a job
    is handed to it once its starting point has finished. A job whose process died is started again up to
    ``retries`` times (it resumes from its checkpoint); one whose notebook raised is reported failed, and the
    jobs that start from it are skipped.
    """
    from tqdm import tqdm

    ensure_kernel()
    executor = executor or SlotExecutor(parallel)
    status: dict[str, str] = {}
    ids = {j.id for j in jobs}
    bar = tqdm(total=len(jobs), desc="study", unit="run", disable=not sys.stderr.isatty())

    def report(job: Job) -> None:
        status[job.id] = job.status
        acc = (storage.read_json(runs_dir / job.id / "metrics.json") or {}).get("accuracy") \
            if job.status in ("finished", "reused") else None
        bar.update(1)
        log(f"  {job.id:32s} {job.status:9s} {job.seconds:6.1f}s" + (f"  accuracy {acc:.4f}" if acc is not None
                                                                       else "")
            + (f"  {job.detail}" if job.detail else ""))

    pending, running = list(jobs), {}
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= executor.capacity:
                    break
                if job.depends in ids and job.depends not in status:
                    continue  # its starting point is still pending or running
                pending.remove(job)
                job.notebook = runs_dir / job.id / "train.ipynb"
                if not _decide(job, status, configs[job.id], runs_dir / job.id):
                    if job.status == "reused":
                        runs.write_structure(runs_dir / job.id, job.structure)  # a study of an older version
                    report(job)
                    continue
                runs.write_structure(runs_dir / job.id, job.structure)
                running[job.id] = notebook_params(configs[job.id], runs_dir / job.id)
                job.attempts += 1
                executor.submit(job, running[job.id])
            if running:
                for job in executor.wait():
                    if job.status == "died" and job.attempts <= retries:
                        log(f"  {job.id:32s} died      {job.seconds:6.1f}s  {job.detail}; starting it again "
                            f"({job.attempts}/{retries}), from its last checkpoint")
                        job.attempts += 1
                        executor.submit(job, running[job.id])
                        continue
                    if job.status == "died":
                        job.status = "failed"
                    running.pop(job.id)
                    report(job)
    finally:
        executor.close()
        bar.close()
    return jobs


def time_breakdown(jobs: list[Job], runs_dir: Path, book_seconds: float, wall: float) -> dict:
    """Seconds spent in each part of the study by the runs it trained now (reused runs cost nothing), the
    notebook around each run (kernel start-up, figures) and the pages. Runs side by side add up, so the
    parts are shares of the work done, which can exceed the wall time."""
    parts = dict.fromkeys(TIME_PARTS, 0.0)
    for j in jobs:
        m = storage.read_json(runs_dir / j.id / "metrics.json") if j.status == "finished" else None
        if not m or "timing_s" not in m:
            continue
        for key in TIME_PARTS:  # data_wait is a part of train_steps, not a part of its own
            parts[key] += m["timing_s"].get(key, 0.0)
        parts["notebook"] += max(0.0, j.seconds - m.get("wall_time_s", 0.0))
    parts["book"] = book_seconds
    work = sum(parts.values())
    return {"wall_s": wall, "work_s": work, "parts_s": parts,
            "shares": {k: (v / work if work else 0.0) for k, v in parts.items()}}


def describe_time(breakdown: dict) -> str:
    """The breakdown as the lines ``wbc study`` ends with."""
    head = f"time: {breakdown['wall_s']:.0f} s wall, {breakdown['work_s']:.0f} s of work (parallel runs add up):"
    lines = [head]
    for key, name in TIME_PARTS.items():
        seconds = breakdown["parts_s"].get(key, 0.0)
        lines.append(f"  {name:40s} {seconds:7.1f} s  {100 * breakdown['shares'].get(key, 0.0):5.1f} %")
    return "\n".join(lines)


def summary(jobs: list[Job]) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("finished", "reused", "failed", "skipped", "submitted")}
    lines = [(f"study: {counts['finished']} finished, {counts['reused']} reused, {counts['failed']} failed, "
              f"{counts['skipped']} skipped") + (f", {counts['submitted']} submitted" if counts["submitted"] else "")]
    for j in jobs:
        if j.status == "failed":
            lines.append(f"  FAILED {j.id}: {j.detail}\n         notebook: {j.notebook}")
        elif j.status == "skipped":
            lines.append(f"  skipped {j.id}: {j.detail}")
    return "\n".join(lines)


def data_sources(probe: cfg.RunConfig, data_root: str | None, data: str) -> tuple[dict, dict]:
    """The folder each dataset of the study is read from, and where its images come from in words
    (generating the synthetic stand-in where it is needed)."""
    from wbclib.data.datasets import data_root as root_of
    from wbclib.data.datasets import data_source, describe_source

    roots, words = {}, {}
    for dataset in ("wbc", "cam16", "prcc"):
        config = probe.replace(dataset=dataset, data=data, data_root=data_root)
        source = data_source(config)
        roots[dataset] = root_of(config, progress=sys.stderr.isatty())
        words[dataset] = describe_source(source, dataset)
        if source == "synthetic":
            words[dataset] += f" ({synthetic_scales(probe)})"
    return roots, words


def synthetic_scales(config: cfg.RunConfig) -> str:
    cam = config.synthetic_cam16_scale or config.synthetic_scale
    return f"scale {config.synthetic_scale:g}, CAM16 scale {cam:g}"


@dataclass
class Options:
    """What a study is asked for: ``wbc study`` fills it from its flags."""

    profile: str = "quick"
    data: str = "embedded"  # without data_root: embedded | synthetic
    data_root: str | None = None
    seeds: int | None = None  # None: 1 for quick, 3 for paper
    only: str | None = None  # glob over run ids
    runs_dir: str = "runs"
    jobs: int | None = None  # configurations side by side (None: default_jobs())
    external: list[str] | None = None  # class-folder sets to evaluate on (None: the embedded ones)
    overrides: dict = field(default_factory=dict)  # config fields for every run
    no_book: bool = False
    book_root: str | None = None
    dry_run: bool = False
    walkthrough_steps: int | None = None  # training steps of the walkthrough page (0: a stub page)
    smear_chain: bool = False  # also the chain pretrained on blood-smear tiles (WBC_1, WBC_10)
    executor: str = "local"  # local: kernel slots on this machine; slurm: one Slurm job per run (wbclib.study.cluster)
    slurm: dict = field(default_factory=dict)  # wbclib.study.cluster.load_settings arguments (config file and flags)
    retries: int | None = None  # times a run whose process died is started again (None: 2 on Slurm, 0 locally)
    detach: bool = False  # with slurm: submit the grid with afterok dependencies and exit
    slots_per_gpu: int = 1  # local: runs side by side on each GPU (the default --jobs is GPUs x this)


def run(args: Options, log=print) -> int:
    """Run (or reuse) every configuration of the grid, then the analysis and the book; 0 when every run
    finished. ``log`` receives each line of the study's report."""
    t0 = time.time()
    require_checkout()
    seeds = args.seeds or (3 if args.profile == "paper" else 1)
    overrides = args.overrides
    runs_dir = Path(args.runs_dir).resolve()
    # The domain-shift runs (shift-*) are opt-in: only a pattern given with --only can select them.
    from wbclib.results import shift

    shift_jobs = jobs_of(("shift",), list(range(args.seeds or shift.SEEDS))) if args.only else []
    jobs = select(grid(list(range(seeds)), args.smear_chain) + shift_jobs, args.only)
    data_root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    # Every config resolved once, before anything runs (a bad --set fails here, once).
    configs = {j.id: job_config(j, args.profile, data_root, runs_dir, overrides, args.data) for j in jobs}
    log(f"study: {len(jobs)} run(s), profile {args.profile}, {seeds} seed(s), runs in {runs_dir}")
    if args.dry_run:
        for j in jobs:
            log(f"  {j.id}" + (f"  (starts from {j.depends})" if j.depends else ""))
        return 0
    external = [str(Path(e).resolve()) for e in args.external] if args.external else None
    from wbclib.data.datasets import EMBEDDED, cache_dir

    read = [data_root, *(external or []), *([] if data_root else [EMBEDDED, cache_dir()])]  # the data it reads
    storage.refuse_inside(runs_dir, read, "--runs-dir")
    if args.book_root and not args.no_book:
        storage.refuse_inside(args.book_root, read, "--book-root")
    with storage.FolderLock(runs_dir, "runs folder") as lock:
        if lock.note:
            log(lock.note)
        storage.remove_stale_temps(runs_dir)
        return _study(args, t0, configs, runs_dir, jobs, data_root, external, log)


def _study(args: Options, t0, configs, runs_dir, jobs, data_root, external, log) -> int:
    probe = configs[jobs[0].id]
    t = time.time()
    roots, sources = data_sources(probe, data_root, args.data)
    for key, name in (("wbc", "WBC"), ("prcc", "pRCC stage"), ("cam16", "CAM16 stage")):
        log(f"data: {name}: {sources[key].replace('**', '').replace('`', '')} ({roots[key]})")
    log(f"data: ready in {time.time() - t:.1f}s" + ("; numbers are not real results" if args.data == "synthetic"
                                                     and not data_root else ""))
    from wbclib import CAM16_CLASSES
    from wbclib.data.datasets import external_sets
    from wbclib.data.readers import holds_classes

    if external is None and not data_root and args.data == "embedded":
        external = [str(p) for p in external_sets()] + [str(p) for p in external_sets(CAM16_CLASSES)]
    # CAM16-class sets (the CAMELYON16 patches) test the CAM16 models (Table 1); the others the WBC models.
    cam16_external = {Path(e).name: e for e in external or [] if holds_classes(Path(e), CAM16_CLASSES)}
    external = [e for e in external or [] if Path(e).name not in cam16_external] or None
    executor, parallel = None, args.jobs or default_jobs(args.slots_per_gpu)
    if args.executor == "slurm":
        from wbclib.study import cluster

        executor = cluster.SlurmExecutor(runs_dir, cluster.load_settings(**args.slurm), args.detach, log)
    elif parallel > 1:
        log(f"study: up to {parallel} configurations at a time")
    retries = args.retries if args.retries is not None else 2 if args.executor == "slurm" else 0
    run_grid(jobs, configs, runs_dir, parallel, log, executor=executor, retries=retries)
    log(summary(jobs))
    if any(j.status == "submitted" for j in jobs):
        return 0  # detached: the study that collects the runs builds the book
    failed = any(j.status in ("failed", "skipped") for j in jobs)
    book_seconds = 0.0
    if not args.no_book:
        book_root = prepare_book_root(args.book_root)
        gen = generated(book_root)
        named = {data_root: "<data-root>"}
        if os.environ.get("WBC_CACHE"):
            from wbclib.data.datasets import cache_dir

            named[cache_dir()] = "$WBC_CACHE"
        shown = path_replacements(book_root, runs_dir.parent, named=named)
        publish_runs(jobs, book_root, shown)
        write_data_summary(book_root, roots, sources)
        write_performance_page(book_root)
        t = time.time()
        def analyse():
            execute(NOTEBOOKS / "analysis.ipynb", gen / "results.ipynb",
                    {"runs_dir": str(runs_dir), "external": external[0] if external else None,
                     "cam16_external": cam16_external or None}, NOTEBOOKS)
            tidy_for_book(gen / "results.ipynb", gen / "results.ipynb", replacements=shown)

        pages = (("notebooks/analysis.ipynb", analyse),
                 ("the external evaluation", lambda: write_evaluation_page(book_root, runs_dir, external, shown)),
                 ("notebooks/walkthrough.ipynb",
                  lambda: write_walkthrough_page(book_root, args.walkthrough_steps, shown)),
                 ("the domain-shift chapter", lambda: write_shift_page(book_root, runs_dir, external, shown)))
        for what, call in pages:
            log(f"analysis: executing {what}")
            try:
                call()
            except Exception as exc:
                msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
                raise WbcError(f"{what} failed ({type(exc).__name__}: {msg}); see the notebooks in {gen}") from None
        index = build_book(book_root, log)
        book_seconds = time.time() - t
        log(f"analysis and book: {book_seconds:.1f}s")
        log(f"book: {index}")
    breakdown = time_breakdown(jobs, runs_dir, book_seconds, time.time() - t0)
    storage.write_json(runs_dir / "study-time.json", breakdown)
    log(describe_time(breakdown))
    log(f"study: done in {time.time() - t0:.0f}s")
    return 1 if failed else 0
