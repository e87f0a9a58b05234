"""The report's grid of runs, executed as papermill notebooks, then the analysis notebook and the book.

Run ids name the configuration: ``prcc``, ``cam16-ce``, ``cam16-ce-prcc``, ``cam16-ce-dice``,
``cam16-ce-prcc-dice`` and ``wbc<N>-<scratch|pretrained>-<nomask|mask>`` (N in ``wbclib.WBC_SUBSETS``), each followed
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

from . import WBC_SUBSETS, WbcError, runs
from . import config as cfg

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
KERNEL = "wbc-study"
#: The pretrained WBC runs start from this CAM16 configuration.
WBC_PRETRAINED_FROM = "cam16-ce-prcc-dice"


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


def make_job(configuration: str, seed: int, params: dict, depends: str | None = None, **structure) -> Job:
    """A job of configuration ``configuration`` and seed ``seed``; ``depends`` names the configuration it
    starts from (same seed)."""
    return Job(runs.run_id(configuration, seed), {**params, "seed": seed},
               runs.run_id(depends, seed) if depends else None,
               {"configuration": configuration, "seed": seed, "chapter": "report", "dataset": params["dataset"],
                "subset": params.get("subset"), "masks": params.get("masks", True), "pretrained": bool(depends),
                **structure})


def grid(seeds: list[int]) -> list[Job]:
    """Every configuration of the report, in dependency order (and the largest WBC subsets first)."""
    jobs = []
    for s in seeds:
        jobs.append(make_job("prcc", s, {"dataset": "prcc", "masks": False}))
        for pre in (False, True):
            for dice in (False, True):
                jobs.append(make_job(runs.cam16_configuration(pre, dice), s, {"dataset": "cam16", "masks": dice},
                                "prcc" if pre else None))
        for n in reversed(WBC_SUBSETS):  # the longest runs first: parallel slots finish together
            for pre in (False, True):
                for mask in (False, True):
                    jobs.append(make_job(runs.wbc_configuration(n, pre, mask), s,
                                    {"dataset": "wbc", "subset": n, "masks": mask},
                                    WBC_PRETRAINED_FROM if pre else None))
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
    if runs.is_finished(run_dir, wanted) and notebook_complete(job.notebook):
        job.status = "reused"
        return False
    old = runs.read_json(run_dir / "config.json")
    if old is not None and old != wanted:
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
        self.km.start_kernel(cwd=str(NOTEBOOKS), env={**os.environ, **self.env})
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


def default_jobs() -> int:
    """One configuration per GPU; on a CPU, two side by side (each with half the cores) when there are at least
    two cores: on two cores, two one-thread runs get through the grid about 1.35x faster than one two-thread run
    (measured with the quick profile: 38 s for a WBC_10 run on one thread, 26 s on two)."""
    import torch

    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_grid(jobs: list[Job], configs: dict[str, cfg.RunConfig], runs_dir: Path, parallel: int = 1,
             log=print) -> list[Job]:
    """Execute each job's training notebook, skipping finished runs with the same config; never stop early.

    ``parallel`` slots (see :class:`Slot`) take the jobs in order; a job starts once its starting point has
    finished. With several slots each is pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or, without GPUs, to
    its share of the CPU threads.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    import torch
    from tqdm import tqdm

    ensure_kernel()
    status: dict[str, str] = {}
    ids = {j.id for j in jobs}
    bar = tqdm(total=len(jobs), desc="study", unit="run", disable=not sys.stderr.isatty())

    def report(job: Job) -> None:
        status[job.id] = job.status
        acc = (runs.read_json(runs_dir / job.id / "metrics.json") or {}).get("accuracy") \
            if job.status in ("finished", "reused") else None
        bar.update(1)
        log(f"  {job.id:32s} {job.status:9s} {job.seconds:6.1f}s" + (f"  accuracy {acc:.4f}" if acc is not None
                                                                       else "")
            + (f"  {job.detail}" if job.detail else ""))

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // parallel)
    slots = [Slot({} if parallel == 1 else {"CUDA_VISIBLE_DEVICES": str(i)} if gpus > 1
                  else {"OMP_NUM_THREADS": str(threads)}) for i in range(parallel)]
    pending, running, free = list(jobs), {}, list(slots)
    with ThreadPoolExecutor(parallel) as pool:
        try:
            while pending or running:
                for job in list(pending):
                    if not free:
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
                    slot = free.pop(0)
                    params = notebook_params(configs[job.id], runs_dir / job.id)
                    running[pool.submit(slot.run, job, params)] = (job, slot)
                if running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job, slot = running.pop(future)
                        future.result()
                        free.append(slot)
                        report(job)
        finally:
            for slot in slots:
                slot.close()
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


def describe(structure: dict) -> str:
    """A run's place in the study in words, e.g. 'WBC_10, pretrained on pRCC + CAM16, with masks, seed 0'."""
    from . import shift

    if structure.get("chapter") == "shift":
        return shift.describe(structure["setting"], structure["seed"])
    dataset, masks, pretrained = structure.get("dataset"), structure.get("masks"), structure.get("pretrained")
    if dataset == "prcc":
        words = ["pRCC pretraining (reconstruction only)"]
    elif dataset == "cam16":
        words = ["CAM16, cross-entropy" + (" after pRCC pretraining" if pretrained else "")
                 + (" + Dice" if masks else "")]
    elif dataset == "wbc":
        words = [f"WBC_{structure['subset']}", "pretrained on pRCC + CAM16" if pretrained else "from scratch",
                 "with masks" if masks else "without masks"]
    else:
        words = [structure.get("configuration", "a run")]
    return ", ".join([*words, f"seed {structure.get('seed', 0)}"])


#: Cell tags the book honours: inputs of code cells are collapsed (shown on a click), parameter cells removed.
#: ``show-input`` (the project's own tag) keeps a cell's code in view, as the walkthrough does for its steps.
HIDE_INPUT, REMOVE_CELL = "hide-input", "remove-cell"
PRESENTATION_TAGS = {HIDE_INPUT, REMOVE_CELL, "remove-input", "remove-output", "hide-cell", "hide-output",
                     "show-input"}


def path_replacements(*roots: str | Path | None, named: dict | None = None) -> list[tuple[str, str]]:
    """(absolute path, what the book shows instead) for the project, the given folders, the ``named`` ones
    (path -> placeholder, e.g. a data root outside the project) and the home directory: the project and the
    folders become relative paths, the home directory ``~``. Longest paths first."""
    pairs = {}
    for root in (ROOT, *roots):
        if root:
            pairs[str(Path(root).resolve())] = "."
    for root, placeholder in (named or {}).items():
        if root:
            pairs.setdefault(str(Path(root).expanduser().resolve()), placeholder)
    home = str(Path.home().resolve())
    if home != "/":
        pairs.setdefault(home, "~")
    out = []
    for path, short in sorted(pairs.items(), key=lambda kv: -len(kv[0])):
        out += [(path + "/", "" if short == "." else short + "/"), (path, short)]
    return out


def scrub(text: str, replacements: list[tuple[str, str]]) -> str:
    """``text`` with every absolute path of :func:`path_replacements` made relative (or ``~``)."""
    for path, short in replacements:
        text = text.replace(path, short)
    return text


def _scrub_value(value, replacements):
    if isinstance(value, str):
        return scrub(value, replacements)
    if isinstance(value, list):
        return [_scrub_value(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, replacements) for k, v in value.items()}
    return value


def present(nb, replacements: list[tuple[str, str]]):
    """Make an executed notebook read like a report: parameter cells (the notebook's own and the one papermill
    injects) get ``remove-cell``, every other code cell ``hide-input`` unless it carries a presentation tag of
    its own, and no absolute path of this machine is left in a source or an output. Idempotent."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            cell.source = scrub(cell.source, replacements)
            continue
        tags = list(cell.metadata.get("tags", []))
        if {"parameters", "injected-parameters"} & set(tags):
            wanted = REMOVE_CELL
        elif PRESENTATION_TAGS & set(tags):
            wanted = None
        else:
            wanted = HIDE_INPUT
        if wanted and wanted not in tags:
            tags.append(wanted)
        if tags:
            cell.metadata["tags"] = tags
        cell.source = scrub(cell.source, replacements)
        for out in cell.get("outputs", []):
            for key in ("text", "evalue", "traceback"):
                if key in out:
                    out[key] = _scrub_value(out[key], replacements)
            if "data" in out:
                out["data"] = {mime: (v if mime.startswith("image/") and mime != "image/svg+xml"
                                      else _scrub_value(v, replacements)) for mime, v in out["data"].items()}
    for key in ("papermill",):  # papermill records the parameters and paths it ran with
        if key in nb.metadata:
            nb.metadata[key] = _scrub_value(nb.metadata[key], replacements)
    return nb


def tidy_for_book(notebook: Path, destination: Path, title: str | None = None, subtitle: str | None = None,
                  replacements: list[tuple[str, str]] | None = None) -> None:
    """Copy an executed notebook for the book: tables and figures first (see :func:`present`) and, for run
    pages, the page titled with the run id."""
    import nbformat

    nb = present(nbformat.read(notebook, as_version=4), replacements or path_replacements())
    if title and nb.cells and nb.cells[0].cell_type == "markdown":
        nb.cells[0].source = f"# {title}\n\n*{subtitle}*\n" if subtitle else f"# {title}\n"
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, destination)


def publish_runs(jobs: list[Job], book_root: Path, replacements: list[tuple[str, str]] | None = None) -> None:
    """Copy the executed training notebooks of finished runs into the book's generated pages."""
    out = generated(book_root) / "runs"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for j in jobs:
        if j.status in ("finished", "reused") and j.notebook and j.notebook.is_file():
            tidy_for_book(j.notebook, out / f"{j.id}.ipynb", j.id, describe(j.structure), replacements)


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
                for n in WBC_SUBSETS],
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
    from .data import data_root as root_of
    from .data import data_source, describe_source

    roots, words = {}, {}
    for dataset in ("wbc", "cam16", "prcc"):
        config = probe.replace(dataset=dataset, data=data, data_root=data_root)
        source = data_source(config)
        roots[dataset] = root_of(config, progress=sys.stderr.isatty())
        words[dataset] = describe_source(source, dataset)
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
                "its own precision's rate that stayed above 100 % when measured twice, which cannot be real:\n\n"
                + "\n".join(steps) +
                "\n\nThe yardstick and the data pipeline:\n\n" + "\n".join(feed))
    else:
        text = "No benchmark has been recorded in `benchmarks/results/` yet."
    runs.write_atomic(generated(book_root) / "performance.md",
                      text + "\n\n" + gpu_check_tables() + "\n\n" + study_time_tables() + "\n")


def gpu_check_tables() -> str:
    """'The paper profile on a GPU', from the files ``benchmarks/gpu_check.sh`` wrote (``gpu-*.json``)."""
    blocks = []
    for p in sorted((ROOT / "benchmarks" / "results").glob("gpu-*.json")):
        r = runs.read_json(p) or {}
        parts, machine = r.get("parts", {}), r.get("parts", {}).get("machine", {})
        mm = parts.get("matmul", {})
        if "bf16_flops_per_s" not in mm:
            continue
        head = (f"**{r.get('device')}**, {r.get('what', 'one run')} (torch {machine.get('torch')}, CUDA "
                f"{machine.get('cuda')}, {machine.get('cpu_cores')} CPU cores; `{p.name}`). Dense matmul: "
                f"{mm['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s in bf16, {mm['tf32_flops_per_s'] / 1e12:.0f} in tf32 "
                f"({mm['n']}³).")
        rows = ["| variant | batch | images/s | model TFLOP/s | share of bf16 peak | peak memory |",
                "|---|---|---|---|---|---|"]
        for v in parts.get("steps", {}).get("variants", []):
            if "images_per_s" in v:
                rows.append(f"| {v['name']} | {v['batch_size']} | {v['images_per_s']:.0f} | "
                            f"{v['model_flops_per_s'] / 1e12:.0f} | {100 * v['share_of_bf16_peak']:.0f} % | "
                            f"{v['peak_memory_gib']:.1f} GiB |")
            else:
                rows.append(f"| {v['name']} | {v['batch_size']} | failed: {v.get('error', '')[:80]} | | | |")
        feed = ["| loader workers | images/s | data wait (share of step time) |", "|---|---|---|"]
        for row in parts.get("epoch", {}).get("rows", []):
            if "data_wait_share" in row:
                feed.append(f"| {row['num_workers']} | {row['train_images_per_s']:.0f} | "
                            f"{100 * row['data_wait_share']:.1f} % |")
        est = r.get("estimate_current_trainer") or parts.get("estimate", {})
        total = (f"Estimated GPU time of the 21-run paper study (one seed, course counts): "
                 f"**{est['total_gpu_hours']:.2f} GPU-hours** ({est.get('note', 'from this run')})."
                 if "total_gpu_hours" in est else "")
        goals = "\n".join(f"- {line}" for line in r.get("verdicts", []))
        blocks.append("\n\n".join(x for x in (head, "\n".join(rows) if len(rows) > 2 else "",
                                                "One epoch of `wbc train --profile paper` on 575 px JPEGs:\n\n"
                                                + "\n".join(feed) if len(feed) > 2 else "", total, goals) if x))
    return ("### The paper profile on a GPU\n\n" + "\n\n".join(blocks)) if blocks else ""


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


def write_evaluation_page(book_root: Path, runs_dir: Path, external: list[str] | None,
                          replacements: list[tuple[str, str]] | None = None) -> None:
    """The external-evaluation page: the executed evaluation notebook, or a note that none was requested."""
    gen = generated(book_root)
    for stale in ("evaluation.md", "evaluation.ipynb"):
        (gen / stale).unlink(missing_ok=True)
    if external:
        execute(NOTEBOOKS / "evaluation.ipynb", gen / "evaluation.ipynb",
                {"runs_dir": str(runs_dir), "external": [str(Path(e).resolve()) for e in external]}, NOTEBOOKS)
        tidy_for_book(gen / "evaluation.ipynb", gen / "evaluation.ipynb", replacements=replacements)
        return
    page = gen / "evaluation.md"
    text = ["# External evaluation", ""]
    text.append("No external set was given to this build. Run `wbc study --external DIR` with a class-folder set "
                "(for example Raabin-WBC Test-A or the BCCD crops) to evaluate the trained models on it, or "
                "`wbc evaluate --checkpoint runs/<id> --data DIR --out OUT` for one model.")
    runs.write_atomic(page, "\n".join(text) + "\n")


def launch_links(notebook: str = "notebooks/walkthrough.ipynb", config_file: Path | None = None) -> str:
    """Markdown links that open ``notebook`` of the repository set in ``_config.yml`` (``repository.url`` and
    ``branch``) on Binder, Colab and, where ``launch_buttons.jupyterhub_url`` is set, a JupyterHub."""
    import urllib.parse

    import yaml

    conf = yaml.safe_load(Path(config_file or ROOT / "_config.yml").read_text()) or {}
    repo = (conf.get("repository") or {}).get("url", "").rstrip("/")
    branch = (conf.get("repository") or {}).get("branch") or "main"
    launch = conf.get("launch_buttons") or {}
    if not repo:
        return ""
    links = []
    gh = repo.split("github.com/", 1)[1] if "github.com/" in repo else None
    if launch.get("binderhub_url") and gh:
        links.append(f"[Binder]({launch['binderhub_url'].rstrip('/')}/v2/gh/{gh}/{branch}?urlpath=lab/tree/{notebook})")
    if launch.get("colab_url") and gh:
        links.append(f"[Colab]({launch['colab_url'].rstrip('/')}/github/{gh}/blob/{branch}/{notebook})")
    if launch.get("jupyterhub_url"):
        query = urllib.parse.urlencode({"repo": repo, "urlpath": f"lab/tree/{repo.rsplit('/', 1)[-1]}/{notebook}",
                                        "branch": branch})
        links.append(f"[JupyterHub]({launch['jupyterhub_url'].rstrip('/')}/hub/user-redirect/git-pull?{query})")
    links.append(f"[the notebook in the repository]({repo}/blob/{branch}/{notebook})")
    return "Open it to run it yourself: " + " · ".join(links) + "."


#: The walkthrough's default number of training steps (its notebook's own default; about 2 min on 2 CPU cores).
WALKTHROUGH_STEPS = 300


def write_walkthrough_page(book_root: Path, steps: int | None = WALKTHROUGH_STEPS,
                           replacements: list[tuple[str, str]] | None = None) -> float:
    """Execute the teaching walkthrough into the book (``steps`` training steps; 0: a page saying how to run
    it instead). Returns the seconds it took."""
    gen = generated(book_root)
    for stale in ("walkthrough.md", "walkthrough.ipynb"):
        (gen / stale).unlink(missing_ok=True)
    t = time.time()
    if steps == 0:
        runs.write_atomic(gen / "walkthrough.md", "# Walkthrough\n\nThis build skipped the walkthrough "
                          "(`wbc study --walkthrough-steps 0`). Open `notebooks/walkthrough.ipynb` in JupyterLab "
                          "(`make lab`) and run it top to bottom.\n")
        return 0.0
    # One thread: the page is built beside other work on a shared CPU, where two threads wait on each other.
    params = {"threads": 1, **({} if steps is None else {"steps": int(steps)})}
    execute(NOTEBOOKS / "walkthrough.ipynb", gen / "walkthrough.ipynb", params, NOTEBOOKS)
    tidy_for_book(gen / "walkthrough.ipynb", gen / "walkthrough.ipynb", replacements=replacements)
    links = launch_links(config_file=Path(book_root) / "_config.yml")
    if links:  # the page's own launch buttons would open the generated copy, which a clone does not have
        import nbformat

        nb = nbformat.read(gen / "walkthrough.ipynb", as_version=4)
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(links, metadata={"tags": ["launch-links"]}))
        nbformat.write(nb, gen / "walkthrough.ipynb")
    return time.time() - t


def write_shift_page(book_root: Path, runs_dir: Path, external: list[str] | None,
                     replacements: list[tuple[str, str]] | None = None) -> Path:
    """The chapter: ``notebooks/domain-shift.ipynb`` executed on the finished ``shift-*`` runs of ``runs_dir``
    (``book/generated/domain-shift.ipynb``), or a page that says how to train them where there are none."""
    from . import shift

    gen = generated(book_root)
    for stale in ("domain-shift.md", "domain-shift.ipynb"):
        (gen / stale).unlink(missing_ok=True)
    if not len(shift.shift_runs(runs_dir)):
        page = gen / "domain-shift.md"
        runs.write_atomic(page, shift.stub_text())
        return page
    page = gen / "domain-shift.ipynb"
    sets = [str(Path(e).resolve()) for e in external] if external else None
    execute(NOTEBOOKS / "domain-shift.ipynb", page, {"runs_dir": str(Path(runs_dir).resolve()), "external": sets},
            NOTEBOOKS)
    tidy_for_book(page, page, replacements=replacements)
    return page


def ensure_shift_page(book_root: Path) -> None:
    """Write the stub page where the chapter is missing (a book built from a study that predates it)."""
    from . import shift

    gen = generated(book_root)
    if not list(gen.glob("domain-shift.*")):
        runs.write_atomic(gen / "domain-shift.md", shift.stub_text())


def notebook_errors(path: Path) -> list[str]:
    """Error outputs stored in an executed notebook (the book refuses to publish those)."""
    nb = json.loads(path.read_text())
    return [f"{path}: cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.get("cells", []))
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def build_book(book_root: Path = ROOT, log=print) -> Path:
    """Build the HTML book from stored outputs (no notebook is executed); fail on warnings or errored pages."""

    gen = generated(book_root)
    ensure_shift_page(book_root)
    errors = [e for p in sorted(gen.rglob("*.ipynb")) for e in notebook_errors(p)]
    if errors:
        raise WbcError("notebooks with errors cannot be published:\n  " + "\n  ".join(errors[:20]))
    missing = [p for p in ("results.ipynb", "data_summary.md", "evaluation", "performance.md", "walkthrough")
               if not (gen / p).exists() and not list(gen.glob(p + ".*"))]
    if missing:
        raise WbcError(f"book/generated/ lacks {', '.join(missing)}: run `wbc study` first")
    import nbformat

    for p in sorted(gen.rglob("*.ipynb")):  # pages written by an older study read like a report too
        nb = nbformat.read(p, as_version=4)
        nbformat.write(present(nb, path_replacements(book_root)), p)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book_root), "-W", "--keep-going", "--quiet"]
    log("book: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=book_root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise WbcError(f"the book build failed (jupyter-book exit {proc.returncode}):\n{tail}")
    return Path(book_root) / "_build" / "html" / "index.html"


def synthetic_scales(config: cfg.RunConfig) -> str:
    cam = config.synthetic_cam16_scale or config.synthetic_scale
    return f"scale {config.synthetic_scale:g}, CAM16 scale {cam:g}"


# -- the command ------------------------------------------------------------------------------------------

def require_checkout() -> None:
    """The study runs the project's notebooks and builds its book: both ship with a checkout, not with the
    installed package (``pip install .`` copies only ``wbclib``)."""
    missing = [p for p in (NOTEBOOKS / "train.ipynb", ROOT / "_config.yml") if not p.is_file()]
    if missing:
        raise WbcError(f"wbc study needs a checkout of the project: {missing[0]} is missing (this wbclib is "
                       f"installed from {Path(__file__).parent}); clone the project and run `make study` there, "
                       "or install it with `pip install -e .` from the checkout")


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


def run(args: Options, log=print) -> int:
    """Run (or reuse) every configuration of the grid, then the analysis and the book; 0 when every run
    finished. ``log`` receives each line of the study's report."""
    t0 = time.time()
    require_checkout()
    seeds = args.seeds or (3 if args.profile == "paper" else 1)
    overrides = args.overrides
    runs_dir = Path(args.runs_dir).resolve()
    # The domain-shift runs (shift-*) are opt-in: only a pattern given with --only can select them.
    from . import shift

    shift_jobs = [make_job(c, s, p, setting=name, chapter="shift") for c, s, p, name in
                  shift.grid(list(range(args.seeds or shift.SEEDS)))] if args.only else []
    jobs = select(grid(list(range(seeds))) + shift_jobs, args.only)
    data_root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    # Every config resolved once, before anything runs (a bad --set fails here, once).
    configs = {j.id: job_config(j, args.profile, data_root, runs_dir, overrides, args.data) for j in jobs}
    log(f"study: {len(jobs)} run(s), profile {args.profile}, {seeds} seed(s), runs in {runs_dir}")
    if args.dry_run:
        for j in jobs:
            log(f"  {j.id}" + (f"  (starts from {j.depends})" if j.depends else ""))
        return 0
    external = [str(Path(e).resolve()) for e in args.external] if args.external else None
    from .data import EMBEDDED, cache_dir

    read = [data_root, *(external or []), *([] if data_root else [EMBEDDED, cache_dir()])]  # the data it reads
    runs.refuse_inside(runs_dir, read, "--runs-dir")
    if args.book_root and not args.no_book:
        runs.refuse_inside(args.book_root, read, "--book-root")
    with runs.FolderLock(runs_dir, "runs folder"):
        runs.remove_stale_temps(runs_dir)
        return _study(args, t0, configs, runs_dir, jobs, data_root, external, log)


def _study(args: Options, t0, configs, runs_dir, jobs, data_root, external, log) -> int:
    probe = configs[jobs[0].id]
    t = time.time()
    roots, sources = data_sources(probe, data_root, args.data)
    for key, name in (("wbc", "WBC"), ("prcc", "pRCC stage"), ("cam16", "CAM16 stage")):
        log(f"data: {name}: {sources[key].replace('**', '').replace('`', '')} ({roots[key]})")
    log(f"data: ready in {time.time() - t:.1f}s" + ("; numbers are not real results" if args.data == "synthetic"
                                                     and not data_root else ""))
    if external is None and not data_root and args.data == "embedded":
        from .data import embedded_external_sets

        external = [str(p) for p in embedded_external_sets()]
    parallel = args.jobs or default_jobs()
    if parallel > 1:
        log(f"study: up to {parallel} configurations at a time")
    run_grid(jobs, configs, runs_dir, parallel, log)
    log(summary(jobs))
    failed = any(j.status in ("failed", "skipped") for j in jobs)
    book_seconds = 0.0
    if not args.no_book:
        book_root = prepare_book_root(args.book_root)
        gen = generated(book_root)
        named = {data_root: "<data-root>"}
        if os.environ.get("WBC_CACHE"):
            from .data import cache_dir

            named[cache_dir()] = "$WBC_CACHE"
        shown = path_replacements(book_root, runs_dir.parent, named=named)
        publish_runs(jobs, book_root, shown)
        write_data_summary(book_root, roots, sources)
        write_performance_page(book_root)
        t = time.time()
        def analyse():
            execute(NOTEBOOKS / "analysis.ipynb", gen / "results.ipynb", {"runs_dir": str(runs_dir),
                                                                           "external": external[0] if external
                                                                           else None}, NOTEBOOKS)
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
    runs.write_json(runs_dir / "study-time.json", breakdown)
    log(describe_time(breakdown))
    log(f"study: done in {time.time() - t0:.0f}s")
    return 1 if failed else 0
