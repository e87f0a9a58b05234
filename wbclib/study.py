"""The report's grid of runs, executed as papermill notebooks, then the analysis notebook and the book.

Run ids name the configuration: ``prcc``, ``cam16-ce``, ``cam16-ce-prcc``, ``cam16-ce-dice``,
``cam16-ce-prcc-dice`` and ``wbc<N>-<scratch|pretrained>-<nomask|mask>`` (N = 1, 10, 50, 100), each followed
by ``-s<seed>``. Pretrained CAM16 runs start from ``prcc``; pretrained WBC runs start from the CAM16 model
that saw pRCC pretraining and every loss (``cam16-ce-prcc-dice``). Dependencies run first.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import WbcError, runs
from . import config as cfg

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
KERNEL = "wbc-study"
WBC_SUBSETS = (1, 10, 50, 100)
#: The pretrained WBC runs start from this CAM16 configuration.
WBC_PRETRAINED_FROM = "cam16-ce-prcc-dice"


@dataclass
class Job:
    """One configuration of the grid: its id, notebook parameters and the run it starts from."""

    id: str
    params: dict
    depends: str | None = None
    status: str = "pending"
    detail: str = ""
    seconds: float = 0.0
    notebook: Path | None = field(default=None, repr=False)


def grid(seeds: list[int]) -> list[Job]:
    """Every configuration of the report, in dependency order (and the largest WBC subsets first)."""
    jobs = []
    for s in seeds:
        jobs.append(Job(f"prcc-s{s}", {"dataset": "prcc", "masks": False, "seed": s}))
        for pre in (False, True):
            for dice in (False, True):
                name = "cam16-ce" + ("-prcc" if pre else "") + ("-dice" if dice else "")
                jobs.append(Job(f"{name}-s{s}", {"dataset": "cam16", "masks": dice, "seed": s},
                                f"prcc-s{s}" if pre else None))
        for n in reversed(WBC_SUBSETS):  # the longest runs first: parallel slots finish together
            for pre in (False, True):
                for mask in (False, True):
                    rid = f"wbc{n}-{'pretrained' if pre else 'scratch'}-{'mask' if mask else 'nomask'}-s{s}"
                    jobs.append(Job(rid, {"dataset": "wbc", "subset": n, "masks": mask, "seed": s},
                                    f"{WBC_PRETRAINED_FROM}-s{s}" if pre else None))
    order = {"prcc": 0, "cam16": 1, "wbc": 2}
    return sorted(jobs, key=lambda j: order[j.params["dataset"]])


def select(jobs: list[Job], pattern: str | None) -> list[Job]:
    """Jobs whose id matches the glob, plus everything they depend on (in dependency order)."""
    if not pattern:
        return jobs
    by_id = {j.id: j for j in jobs}
    wanted = {j.id for j in jobs if fnmatch.fnmatch(j.id, pattern)}
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


def notebook_params(job: Job, profile: str, data_root: str | None, runs_dir: Path, overrides: dict,
                    data: str = "embedded") -> dict:
    """The parameters papermill injects into the training notebook for this job."""
    init = str((runs_dir / job.depends).resolve()) if job.depends else None
    # Every parameter of the notebook is passed, so none of its interactive defaults leaks into a run.
    return {"profile": profile, "run_dir": str((runs_dir / job.id).resolve()), "data": data, "data_root": data_root,
            "init": init,
            "subset": 100, "epochs": None, **job.params, "overrides": {**overrides, **job.params.get("overrides", {})}}


def job_config(job: Job, profile: str, data_root: str | None, runs_dir: Path, overrides: dict,
               data: str = "embedded") -> cfg.RunConfig:
    """The RunConfig the notebook builds from this job's parameters (the very call it makes)."""
    params = notebook_params(job, profile, data_root, runs_dir, overrides, data)
    params.pop("run_dir")
    return cfg.from_parameters(**params)


def ensure_kernel() -> None:
    """Register the ``wbc-study`` kernel in this environment if it is missing (e.g. after a plain pip install)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL, display_name="Python (wbc-study)", prefix=sys.prefix)


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """Run a notebook with papermill in the project's kernel."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
                               cwd=str(cwd), progress_bar=False, log_output=False, request_save_on_cell_execute=False)


def _decide(job: Job, status: dict, config: cfg.RunConfig, run_dir: Path) -> bool:
    """Mark a job skipped (its starting point failed) or reused (finished with this config); else True: run it."""
    if job.depends and status.get(job.depends) not in ("finished", "reused"):
        job.status, job.detail = "skipped", f"its starting point {job.depends} did not finish"
        return False
    wanted = json.loads(config.to_json())
    if runs.is_finished(run_dir, wanted) and job.notebook.is_file():
        job.status = "reused"
        return False
    old = runs.read_json(run_dir / "config.json")
    if old is not None and old != wanted:
        (run_dir / runs.CHECKPOINT).unlink(missing_ok=True)  # another config: start over, don't resume
    return True


def _run_here(job: Job, params: dict) -> None:
    """Execute the job's notebook in a kernel started from this process."""
    from papermill.exceptions import PapermillExecutionError

    try:
        execute(NOTEBOOKS / "train.ipynb", job.notebook, params, NOTEBOOKS)
        job.status = "finished"
    except PapermillExecutionError as exc:
        job.status, job.detail = "failed", f"{exc.ename}: {str(exc.evalue).splitlines()[0][:200]}"
    except Exception as exc:  # a kernel that died, a missing notebook: record it, keep going
        job.status, job.detail = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _run_apart(job: Job, params: dict, env: dict) -> None:
    """Execute the job's notebook with the papermill command in its own process (parallel runs, one GPU each)."""
    job.notebook.parent.mkdir(parents=True, exist_ok=True)
    param_file = job.notebook.parent / ".parameters.json"  # JSON is YAML, which papermill -f reads
    param_file.write_text(json.dumps(params))
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "train.ipynb"), str(job.notebook), "-f",
           str(param_file), "-k", KERNEL, "--cwd", str(NOTEBOOKS), "--no-progress-bar"]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        job.status = "finished"
        return
    errors = notebook_errors(job.notebook) if job.notebook.is_file() else []
    last = errors[0].split(": ", 2)[-1] if errors else (proc.stderr.strip().splitlines() or ["papermill failed"])[-1]
    job.status, job.detail = "failed", last[:200]


def default_jobs() -> int:
    """One configuration per GPU; on a CPU, two side by side (each with half the cores) when there are at least
    two cores: on two cores, two one-thread runs get through the grid about 1.35x faster than one two-thread run
    (measured with the quick profile: 38 s for a WBC_10 run on one thread, 26 s on two)."""
    import torch

    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_grid(jobs: list[Job], profile: str, data_root: str | None, runs_dir: Path, overrides: dict,
             parallel: int = 1, log=print, data: str = "embedded") -> list[Job]:
    """Execute each job's training notebook, skipping finished runs with the same config; never stop early.

    With ``parallel`` > 1, independent configurations run side by side (a job starts once its starting point
    has finished), each in its own process pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or, without GPUs,
    to its share of the CPU threads.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm import tqdm

    ensure_kernel()
    status: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="study", unit="run", disable=not sys.stderr.isatty())

    def report(job: Job) -> None:
        status[job.id] = job.status
        acc = (runs.read_json(runs_dir / job.id / "metrics.json") or {}).get("accuracy") \
            if job.status in ("finished", "reused") else None
        bar.update(1)
        log(f"  {job.id:32s} {job.status:9s} {job.seconds:6.1f}s" + (f"  accuracy {acc:.4f}" if acc is not None
                                                                       else "") + (f"  {job.detail}" if job.detail else ""))

    def start(job: Job) -> bool:
        job.notebook = runs_dir / job.id / "train.ipynb"
        config = job_config(job, profile, data_root, runs_dir, overrides, data)
        if _decide(job, status, config, runs_dir / job.id):
            return True
        report(job)
        return False

    if parallel <= 1:
        for job in jobs:
            if start(job):
                t0 = time.time()
                _run_here(job, notebook_params(job, profile, data_root, runs_dir, overrides, data))
                job.seconds = time.time() - t0
                report(job)
        bar.close()
        return jobs

    import torch

    gpus = torch.cuda.is_available() and torch.cuda.device_count() > 1
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending, running, free = list(jobs), {}, list(range(parallel))

    def timed(job, env):
        t0 = time.time()
        _run_apart(job, notebook_params(job, profile, data_root, runs_dir, overrides, data), env)
        job.seconds = time.time() - t0

    with ThreadPoolExecutor(parallel) as pool:
        while pending or running:
            for job in list(pending):
                if not free:
                    break
                if job.depends and job.depends not in status:
                    continue  # its starting point is still pending or running
                pending.remove(job)
                if start(job):
                    slot = free.pop(0)
                    env = {"CUDA_VISIBLE_DEVICES": str(slot)} if gpus else {"OMP_NUM_THREADS": str(threads)}
                    running[pool.submit(timed, job, env)] = (job, slot)
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job, slot = running.pop(future)
                    future.result()
                    free.append(slot)
                    report(job)
    bar.close()
    return jobs


#: Where a study's time goes, in the order printed: the keys of a run's timing_s, then the runner's own parts.
TIME_PARTS = {"train_steps": "training steps", "validation": "validation during training",
              "checkpoints": "checkpoints and history", "setup": "data checks and set-up",
              "final_evaluation": "final evaluation and export", "notebook": "notebook kernels and figures",
              "book": "analysis, external evaluation and book"}


def time_breakdown(jobs: list[Job], runs_dir: Path, book_seconds: float, wall: float) -> dict:
    """Seconds spent in each part of the study by the runs it trained now (reused runs cost nothing), the
    notebook around each run (kernel start-up, figures) and the pages. Runs side by side add up, so the
    parts are shares of the work done, which can exceed the wall time."""
    parts = dict.fromkeys(TIME_PARTS, 0.0)
    for j in jobs:
        m = runs.read_json(runs_dir / j.id / "metrics.json") if j.status == "finished" else None
        if not m or "timing_s" not in m:
            continue
        for key, seconds in m["timing_s"].items():
            parts[key] = parts.get(key, 0.0) + seconds
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
    counts = {s: sum(j.status == s for j in jobs) for s in ("finished", "reused", "failed", "skipped")}
    lines = [(f"study: {counts['finished']} finished, {counts['reused']} reused, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")]
    for j in jobs:
        if j.status == "failed":
            lines.append(f"  FAILED {j.id}: {j.detail}\n         notebook: {j.notebook}")
        elif j.status == "skipped":
            lines.append(f"  skipped {j.id}: {j.detail}")
    return "\n".join(lines)


# -- the book ---------------------------------------------------------------------------------------------

def generated(book_root: Path) -> Path:
    """Where the study writes the book's generated pages."""
    return Path(book_root) / "book" / "generated"


def prepare_book_root(book_root: str | Path | None) -> Path:
    """The project's book sources, or a copy of them in ``book_root`` (so a test or a second study can build
    its own book without touching the project's)."""
    book_root = Path(book_root).resolve() if book_root else ROOT
    if book_root != ROOT:
        for name in BOOK_SOURCES:
            src, dst = ROOT / name, book_root / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("generated"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return book_root


def describe(job_id: str) -> str:
    """A run id in words, e.g. 'WBC_10, pretrained, with masks, seed 0'."""
    from . import shift

    if shift.setting_of(job_id):
        return shift.describe(job_id)
    config, _, seed = job_id.rpartition("-s")
    parts = config.split("-")
    if parts[0] == "prcc":
        words = ["pRCC pretraining (reconstruction only)"]
    elif parts[0] == "cam16":
        words = ["CAM16, cross-entropy" + (" after pRCC pretraining" if "prcc" in parts else "")
                 + (" + Dice" if "dice" in parts else "")]
    else:
        words = [f"WBC_{parts[0][3:]}", "pretrained on pRCC + CAM16" if parts[1] == "pretrained" else "from scratch",
                 "with masks" if parts[2] == "mask" else "without masks"]
    return ", ".join([*words, f"seed {seed}"])


def tidy_for_book(notebook: Path, destination: Path, title: str | None = None, subtitle: str | None = None) -> None:
    """Copy an executed notebook for the book: drop the default-parameters cell (the injected cell shows the
    values used) and, for run pages, title the page with the run id."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    nb.cells = [c for c in nb.cells if "parameters" not in c.metadata.get("tags", [])]
    if title and nb.cells and nb.cells[0].cell_type == "markdown":
        nb.cells[0].source = f"# {title}\n\n*{subtitle}*\n" if subtitle else f"# {title}\n"
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, destination)


def publish_runs(jobs: list[Job], book_root: Path) -> None:
    """Copy the executed training notebooks of finished runs into the book's generated pages."""
    out = generated(book_root) / "runs"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for j in jobs:
        if j.status in ("finished", "reused") and j.notebook and j.notebook.is_file():
            tidy_for_book(j.notebook, out / f"{j.id}.ipynb", j.id, describe(j.id))


def write_data_summary(book_root: Path, roots: dict[str, Path], sources: dict[str, str]) -> None:
    """The data page's 'What this build used' section: where each dataset came from and its counts.

    ``roots`` maps wbc / cam16 / prcc to the folder each was read from, ``sources`` to a sentence on its origin.
    """
    from . import CAM16_CLASSES, WBC_CLASSES
    from . import data as d

    lines = [f"- **{name}**: {sources[key]}" for key, name in (("wbc", "WBC"), ("prcc", "pRCC stage"),
                                                              ("cam16", "CAM16 stage"))]
    rows = ["| split | images | with mask | per class |", "|---|---|---|---|"]

    def add(name, records, classes):
        counts = {c: sum(r.label == i for r in records) for i, c in enumerate(classes)}
        per = ", ".join(f"{c} {n}" for c, n in counts.items()) if classes else "unlabeled"
        rows.append(f"| {name} | {len(records)} | {sum(r.mask_path is not None for r in records)} | {per} |")

    wbc, cam, prcc = roots["wbc"], roots["cam16"], roots["prcc"]
    splits = [*[(f"WBC_{n} train", (lambda n=n: d.wbc_records(wbc, n, "train", check=False)), WBC_CLASSES)
                for n in d.WBC_SUBSETS],
              ("WBC val", lambda: d.wbc_records(wbc, 100, "val", check=False), WBC_CLASSES),
              *[(f"CAM16 {s}", (lambda s=s: d.cam16_records(cam, s, check=False)), CAM16_CLASSES)
                for s in ("train", "val", "test")],
              ("pRCC train", lambda: d.prcc_records(prcc, "train", check=False), ()),
              ("pRCC val", lambda: d.prcc_records(prcc, "val", check=False), ())]
    for split, fn, classes in splits:
        try:
            add(split, fn(), classes)
        except WbcError:
            rows.append(f"| {split} | missing | | |")
    text = "This build used:\n\n" + "\n".join(lines) + "\n\n" + "\n".join(rows) + "\n"
    runs.write_atomic(generated(book_root) / "data_summary.md", text)


def data_sources(probe: cfg.RunConfig, data_root: str | None, data: str) -> tuple[dict, dict]:
    """The folder each dataset of the study is read from, and where its images come from in words
    (generating the synthetic stand-in where it is needed)."""
    from . import train

    roots, words = {}, {}
    for dataset in ("wbc", "cam16", "prcc"):
        config = probe.replace(dataset=dataset, data=data, data_root=data_root)
        source = train.data_source(config)
        roots[dataset] = train.data_root(config, progress=sys.stderr.isatty())
        words[dataset] = train.describe_source(source, dataset)
        if source == "synthetic":
            words[dataset] += f" ({synthetic_scales(probe)})"
    return roots, words


def write_performance_page(book_root: Path) -> None:
    """The performance page's tables, from the benchmark JSON files (if any were recorded)."""
    steps = ["| device | profile | variant | train images/s | model GFLOP/s | % of fp32 matmul | % of bf16 matmul |",
             "|---|---|---|---|---|---|---|"]
    feed = ["| device | profile | matmul GFLOP/s (bf16) | GFLOP per image | loader images/s | loader ÷ step |",
            "|---|---|---|---|---|---|"]
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        r = runs.read_json(p) or {}
        try:
            for v in r["variants"]:
                mark = "**" if v["name"] == r["default_variant"] else ""
                fp32 = v.get("fraction_of_fp32_matmul", v["fraction_of_matmul"])  # older files: one ratio
                bf16_share = v.get("fraction_of_bf16_matmul") or (
                    v["model_flops_per_s"] / r["matmul_bf16_flops_per_s"] if r.get("matmul_bf16_flops_per_s") else None)
                flag = " ⚠" if v.get("flag") else ""
                steps.append(f"| {r['device']} | {r['profile']} | {mark}{v['name']}{mark} | {v['images_per_s']:.1f} | "
                             f"{v['model_flops_per_s'] / 1e9:.0f} | {100 * fp32:.0f} %{flag} | "
                             + (f"{100 * bf16_share:.0f} % |" if bf16_share else "– |"))
            bf16 = f" ({r['matmul_bf16_flops_per_s'] / 1e9:.0f})" if r.get("matmul_bf16_flops_per_s") else ""
            feed.append(f"| {r['device']} | {r['profile']} | {r['matmul_flops_per_s'] / 1e9:.0f}{bf16} | "
                        f"{r['flops_per_image'] / 1e9:.2f} | {r['loader_images_per_s']:.0f} | "
                        f"{r['loader_images_per_s'] / r['train_images_per_s']:.1f}x |")
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    if len(steps) > 2:
        text = ("Training steps (the default variant of each device in bold). Each share is taken against the matmul "
                "FLOP/s measured just before and after that variant (median of five bursts each). A bf16 step is "
                "judged against bf16 matmuls, so its share of the fp32 rate may exceed 100 %; ⚠ marks a share of "
                "its own precision's rate that stayed above 100 % when measured twice, which cannot be real:\n\n" + "\n".join(steps) +
                "\n\nThe yardstick and the data pipeline:\n\n" + "\n".join(feed))
    else:
        text = "No benchmark has been recorded in `benchmarks/results/` yet."
    runs.write_atomic(generated(book_root) / "performance.md", text + "\n\n" + study_time_tables() + "\n")


def study_time_tables() -> str:
    """'Where the study's time goes', from the breakdowns recorded in benchmarks/results/study-*.json."""
    blocks = []
    for p in sorted((ROOT / "benchmarks" / "results").glob("study-*.json")):
        r = runs.read_json(p) or {}
        if "parts_s" not in r:
            continue
        rows = [f"| {name} | {r['parts_s'].get(key, 0.0):.0f} s | {100 * r['shares'].get(key, 0.0):.0f} % |"
                for key, name in TIME_PARTS.items()]
        blocks.append(f"**{r.get('what', p.stem)}** ({r.get('device', 'device not recorded')}): "
                      f"{r['wall_s']:.0f} s wall, {r['work_s']:.0f} s of work.\n\n| part | time | share |\n"
                      "|---|---|---|\n" + "\n".join(rows))
    return ("### Where the study's time goes\n\n" + "\n\n".join(blocks)) if blocks else ""


def write_evaluation_page(book_root: Path, runs_dir: Path, external: list[str] | None) -> None:
    """The external-evaluation page: the executed evaluation notebook, or a note that none was requested."""
    gen = generated(book_root)
    for stale in ("evaluation.md", "evaluation.ipynb"):
        (gen / stale).unlink(missing_ok=True)
    if external:
        execute(NOTEBOOKS / "evaluation.ipynb", gen / "evaluation.ipynb",
                {"runs_dir": str(runs_dir), "external": [str(Path(e).resolve()) for e in external]}, NOTEBOOKS)
        tidy_for_book(gen / "evaluation.ipynb", gen / "evaluation.ipynb")
        return
    page = gen / "evaluation.md"
    text = ["# External evaluation", ""]
    text.append("No external set was given to this build. Run `wbc study --external DIR` with a class-folder set "
                "(for example Raabin-WBC Test-A or the BCCD crops) to evaluate the trained models on it, or "
                "`wbc evaluate --checkpoint runs/<id> --data DIR --out OUT` for one model.")
    runs.write_atomic(page, "\n".join(text) + "\n")


def notebook_errors(path: Path) -> list[str]:
    """Error outputs stored in an executed notebook (the book refuses to publish those)."""
    nb = json.loads(path.read_text())
    return [f"{path}: cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.get("cells", []))
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def build_book(book_root: Path = ROOT, log=print) -> Path:
    """Build the HTML book from stored outputs (no notebook is executed); fail on warnings or errored pages."""
    from . import shift

    gen = generated(book_root)
    shift.ensure_page(book_root)
    errors = [e for p in sorted(gen.rglob("*.ipynb")) for e in notebook_errors(p)]
    if errors:
        raise WbcError("notebooks with errors cannot be published:\n  " + "\n  ".join(errors[:20]))
    missing = [p for p in ("results.ipynb", "data_summary.md", "evaluation", "performance.md")
               if not (gen / p).exists() and not list(gen.glob(p + ".*"))]
    if missing:
        raise WbcError(f"book/generated/ lacks {', '.join(missing)}: run `wbc study` first")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book_root), "--warningiserror",
           "--keep-going", "--quiet"]
    log("book: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=book_root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise WbcError(f"the book build failed (jupyter-book exit {proc.returncode}):\n{tail}")
    return Path(book_root) / "_build" / "html" / "index.html"


def build_book_command(args) -> int:
    index = build_book(prepare_book_root(args.book_root))
    print(f"book: {index}")
    return 0


def synthetic_scales(config: cfg.RunConfig) -> str:
    cam = config.synthetic_cam16_scale or config.synthetic_scale
    return f"scale {config.synthetic_scale:g}, CAM16 scale {cam:g}"


# -- the command ------------------------------------------------------------------------------------------

def main(args) -> int:
    t0 = time.time()
    seeds = args.seeds or (3 if args.profile == "paper" else 1)
    overrides = dict(cfg.parse_assignment(s) for s in args.set)
    runs_dir = Path(args.runs_dir).resolve()
    # The domain-shift runs (shift-*) are opt-in: only a pattern given with --only can select them.
    from . import shift

    jobs = select(grid(list(range(seeds))) + (shift.grid(list(range(args.seeds or shift.SEEDS))) if args.only
                                              else []), args.only)
    data_root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    # Validate every config before anything runs (a bad --set fails here, once).
    for j in jobs:
        job_config(j, args.profile, data_root, runs_dir, overrides, args.data)
    print(f"study: {len(jobs)} run(s), profile {args.profile}, {seeds} seed(s), runs in {runs_dir}")
    if args.dry_run:
        for j in jobs:
            print(f"  {j.id}" + (f"  (starts from {j.depends})" if j.depends else ""))
        return 0
    probe = job_config(jobs[0], args.profile, data_root, runs_dir, overrides, args.data)
    t = time.time()
    roots, sources = data_sources(probe, data_root, args.data)
    for key, name in (("wbc", "WBC"), ("prcc", "pRCC stage"), ("cam16", "CAM16 stage")):
        print(f"data: {name}: {sources[key].replace('**', '').replace('`', '')} ({roots[key]})")
    print(f"data: ready in {time.time() - t:.1f}s" + ("; numbers are not real results" if args.data == "synthetic"
                                                     and not data_root else ""))
    external = [str(Path(e).resolve()) for e in args.external] if args.external else None
    if external is None and not data_root and args.data == "embedded":
        from .train import embedded_external_sets

        external = [str(p) for p in embedded_external_sets()]
    parallel = args.jobs or default_jobs()
    if parallel > 1:
        print(f"study: up to {parallel} configurations at a time")
    run_grid(jobs, args.profile, data_root, runs_dir, overrides, parallel, data=args.data)
    print(summary(jobs))
    failed = any(j.status in ("failed", "skipped") for j in jobs)
    book_seconds = 0.0
    if not args.no_book:
        book_root = prepare_book_root(args.book_root)
        gen = generated(book_root)
        publish_runs(jobs, book_root)
        write_data_summary(book_root, roots, sources)
        write_performance_page(book_root)
        t = time.time()
        def analyse():
            execute(NOTEBOOKS / "analysis.ipynb", gen / "results.ipynb", {"runs_dir": str(runs_dir),
                                                                           "external": external[0] if external
                                                                           else None}, NOTEBOOKS)
            tidy_for_book(gen / "results.ipynb", gen / "results.ipynb")

        for what, call in (("notebooks/analysis.ipynb", analyse),
                           ("the external evaluation", lambda: write_evaluation_page(book_root, runs_dir, external)),
                           ("the domain-shift chapter", lambda: shift.write_page(book_root, runs_dir, external))):
            print(f"analysis: executing {what}")
            try:
                call()
            except Exception as exc:
                msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
                raise WbcError(f"{what} failed ({type(exc).__name__}: {msg}); see the notebooks in {gen}") from None
        index = build_book(book_root)
        book_seconds = time.time() - t
        print(f"analysis and book: {book_seconds:.1f}s")
        print(f"book: {index}")
    breakdown = time_breakdown(jobs, runs_dir, book_seconds, time.time() - t0)
    runs.write_json(runs_dir / "study-time.json", breakdown)
    print(describe_time(breakdown))
    print(f"study: done in {time.time() - t0:.0f}s")
    return 1 if failed else 0
