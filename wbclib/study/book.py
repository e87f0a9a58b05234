"""The book: the pages the study writes from its runs (the executed notebooks, tidied to read like a report;
the data, performance, evaluation, walkthrough and domain-shift pages) and the Jupyter Book build. Also the
papermill helpers every executed page uses. It reads run directories and never trains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wbclib import WBC_SUBSETS, WbcError
from wbclib.core import grid, storage

ROOT = Path(__file__).resolve().parents[2]


NOTEBOOKS = ROOT / "notebooks"


BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")


KERNEL = "wbc-study"


def ensure_kernel() -> None:
    """Register the ``wbc-study`` kernel in this environment if it is missing (e.g. after a plain pip install)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL, display_name="Python (wbc-study)", prefix=sys.prefix)


def kernel_manager_config():
    """The traitlets config under which the study starts its kernels: an encrypted connection (CurveZMQ keys that
    jupyter_client provisions for a kernelspec declaring support, as ipykernel's does). A kernel on a plain TCP
    connection prints "Kernel is running over TCP without encryption" to the terminal at every start (ipykernel
    7.4 and later), in the middle of the study's log; its other messages still come through."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """Run a notebook with papermill in the project's kernel."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
                               cwd=str(cwd), progress_bar=False, log_output=False, request_save_on_cell_execute=False,
                               config=kernel_manager_config())


#: Where a study's time goes, in the order printed: the keys of a run's timing_s, then the runner's own parts.
TIME_PARTS = {"train_steps": "training steps", "validation": "validation during training",
              "checkpoints": "checkpoints and history", "setup": "data checks and set-up",
              "final_evaluation": "final evaluation and export", "notebook": "notebook kernels and figures",
              "book": "analysis, external evaluation and book"}


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
    from wbclib.results import shift

    if structure.get("chapter") == "shift":
        return shift.describe(structure["setting"], structure["seed"])
    dataset, masks, pretrained = structure.get("dataset"), structure.get("masks"), structure.get("pretrained")
    stage = "blood-smear" if structure.get("chain") == "smears" else "pRCC"
    if dataset == "prcc":
        words = [f"{stage} pretraining (reconstruction only)"]
    elif dataset == "cam16":
        words = ["CAM16, cross-entropy" + (f" after {stage} pretraining" if pretrained else "")
                 + (" + Dice" if masks else "")]
    elif dataset == "wbc":
        words = [f"WBC_{structure['subset']}", f"pretrained on {stage} + CAM16" if pretrained else "from scratch",
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


#: A Markdown link's target: ``[text](target)`` or ``[text](target#anchor)``.
MARKDOWN_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def rebase_links(nb, page: Path, book_root: Path):
    """The notebook's Markdown links, which are written relative to ``notebooks/`` as plain Markdown (so that
    they open in JupyterLab and on a code host as they are), made relative to ``page``, where the book shows
    the notebook: ``../book/method.md`` from ``notebooks/`` is ``../method.md`` from ``book/generated/``, a
    page the book resolves. Web addresses and links out of the project are left alone."""
    def rebase(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return m.group(0)
        try:
            inside = (NOTEBOOKS / target).resolve().relative_to(ROOT)
        except ValueError:
            return m.group(0)
        new = Path(os.path.relpath(Path(book_root) / inside, Path(page).parent)).as_posix()
        return f"{m.group(1)}{new}{m.group(3) or ''}{m.group(4)}"

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = MARKDOWN_LINK.sub(rebase, cell.source)
    return nb


def publish_runs(jobs: list, book_root: Path, replacements: list[tuple[str, str]] | None = None) -> None:
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
    from wbclib import CAM16_CLASSES, WBC_CLASSES
    from wbclib.data import readers

    lines = [f"- **{name}**: {sources[key]}" for key, name in (("wbc", "WBC"), ("prcc", "pRCC stage"),
                                                              ("cam16", "CAM16 stage"))]
    rows = ["| split | images | with mask | per class |", "|---|---|---|---|"]

    def add(name, records, classes):
        counts = {c: sum(r.label == i for r in records) for i, c in enumerate(classes)}
        per = ", ".join(f"{c} {n}" for c, n in counts.items()) if classes else "unlabeled"
        rows.append(f"| {name} | {len(records)} | {sum(r.mask_path is not None for r in records)} | {per} |")

    wbc, cam, prcc = roots["wbc"], roots["cam16"], roots["prcc"]
    splits = [*[(f"WBC_{n} train", (lambda n=n: readers.wbc_records(wbc, n, "train", check=False)), WBC_CLASSES)
                for n in WBC_SUBSETS],
              ("WBC val", lambda: readers.wbc_records(wbc, 100, "val", check=False), WBC_CLASSES),
              *[(f"CAM16 {s}", (lambda s=s: readers.cam16_records(cam, s, check=False)), CAM16_CLASSES)
                for s in ("train", "val", "test")],
              ("pRCC train", lambda: readers.prcc_records(prcc, "train", check=False), ()),
              ("pRCC val", lambda: readers.prcc_records(prcc, "val", check=False), ())]
    for split, fn, classes in splits:
        try:
            add(split, fn(), classes)
        except WbcError:
            rows.append(f"| {split} | missing | | |")
    text = "This build used:\n\n" + "\n".join(lines) + "\n\n" + "\n".join(rows) + "\n"
    storage.write_atomic(generated(book_root) / "data_summary.md", text)


def write_performance_page(book_root: Path) -> None:
    """The performance page's tables, from the benchmark JSON files (if any were recorded)."""
    steps = ["| device | profile | variant | train images/s | model GFLOP/s | % of fp32 matmul | % of bf16 matmul |",
             "|---|---|---|---|---|---|---|"]
    feed = ["| device | profile | matmul GFLOP/s (bf16) | GFLOP per image | loader images/s | loader ÷ step |",
            "|---|---|---|---|---|---|"]
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        r = storage.read_json(p) or {}
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
    storage.write_atomic(generated(book_root) / "performance.md",
                      text + "\n\n" + gpu_check_tables() + "\n\n" + study_time_tables() + "\n")


def gpu_check_tables() -> str:
    """'The paper profile on a GPU', from the files ``benchmarks/gpu_check.sh`` wrote (``gpu-*.json``)."""
    blocks = []
    for p in sorted((ROOT / "benchmarks" / "results").glob("gpu-*.json")):
        r = storage.read_json(p) or {}
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
        total = (f"Estimated GPU time of the {grid.size()}-run paper study (one seed, course counts): "
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
        r = storage.read_json(p) or {}
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
    storage.write_atomic(page, "\n".join(text) + "\n")


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
        storage.write_atomic(gen / "walkthrough.md", "# Walkthrough\n\nThis build skipped the walkthrough "
                          "(`wbc study --walkthrough-steps 0`). Open `notebooks/walkthrough.ipynb` in JupyterLab "
                          "(`make lab`) and run it top to bottom.\n")
        return 0.0
    # One thread: the page is built beside other work on a shared CPU, where two threads wait on each other.
    params = {"threads": 1, **({} if steps is None else {"steps": int(steps)})}
    execute(NOTEBOOKS / "walkthrough.ipynb", gen / "walkthrough.ipynb", params, NOTEBOOKS)
    tidy_for_book(gen / "walkthrough.ipynb", gen / "walkthrough.ipynb", replacements=replacements)
    import nbformat

    nb = rebase_links(nbformat.read(gen / "walkthrough.ipynb", as_version=4), gen / "walkthrough.ipynb", book_root)
    links = launch_links(config_file=Path(book_root) / "_config.yml")
    if links:  # the page's own launch buttons would open the generated copy, which a clone does not have
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(links, metadata={"tags": ["launch-links"]}))
    nbformat.write(nb, gen / "walkthrough.ipynb")
    return time.time() - t


def write_shift_page(book_root: Path, runs_dir: Path, external: list[str] | None,
                     replacements: list[tuple[str, str]] | None = None) -> Path:
    """The chapter: ``notebooks/domain-shift.ipynb`` executed on the finished ``shift-*`` runs of ``runs_dir``
    (``book/generated/domain-shift.ipynb``), or a page that says how to train them where there are none."""
    from wbclib.results import shift

    gen = generated(book_root)
    for stale in ("domain-shift.md", "domain-shift.ipynb"):
        (gen / stale).unlink(missing_ok=True)
    if not len(shift.shift_runs(runs_dir)):
        page = gen / "domain-shift.md"
        storage.write_atomic(page, shift.stub_text())
        return page
    page = gen / "domain-shift.ipynb"
    sets = [str(Path(e).resolve()) for e in external] if external else None
    execute(NOTEBOOKS / "domain-shift.ipynb", page, {"runs_dir": str(Path(runs_dir).resolve()), "external": sets},
            NOTEBOOKS)
    tidy_for_book(page, page, replacements=replacements)
    return page


def ensure_shift_page(book_root: Path) -> None:
    """Write the stub page where the chapter is missing (a book built from a study that predates it)."""
    from wbclib.results import shift

    gen = generated(book_root)
    if not list(gen.glob("domain-shift.*")):
        storage.write_atomic(gen / "domain-shift.md", shift.stub_text())


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


def require_checkout() -> None:
    """The study runs the project's notebooks and builds its book: both ship with a checkout, not with the
    installed package (``pip install .`` copies only ``wbclib``)."""
    missing = [p for p in (NOTEBOOKS / "train.ipynb", ROOT / "_config.yml") if not p.is_file()]
    if missing:
        raise WbcError(f"wbc study needs a checkout of the project: {missing[0]} is missing (this wbclib is "
                       f"installed from {Path(__file__).parent}); clone the project and run `make study` there, "
                       "or install it with `pip install -e .` from the checkout")
