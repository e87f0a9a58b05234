"""Publishing the book: the workflow, the buttons and launch links, strict builds, and pages that read like a
report (parameter cells removed, code folded, no absolute path of the build machine)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

from wbclib.study import book, runner

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines(job: dict) -> list[str]:
    return [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines() if line.strip()]


def test_the_workflow_builds_with_the_readme_command_and_deploys_the_html():
    wf = workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "main" in triggers["push"]["branches"] and "workflow_dispatch" in triggers
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    assert run_lines(build)[-1] == "make study"  # from a clean clone: the README's one command
    uses = [s.get("uses", "") for s in build["steps"]]
    assert uses[0].startswith("actions/checkout@")
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["steps"][0]["uses"].startswith("actions/deploy-pages@")
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    readme = (ROOT / "README.md").read_text()
    assert "make study" in readme and ".github/workflows/book.yml" in readme and "GitHub Pages" in readme


def test_the_workflow_points_the_one_repository_setting_at_its_repository(tmp_path):
    """Run the workflow's own substitution on a copy of _config.yml: the URL and the branch must change."""
    step = next(s for s in workflow()["jobs"]["build"]["steps"] if "_config.yml" in s.get("run", ""))
    config = tmp_path / "_config.yml"
    config.write_text((ROOT / "_config.yml").read_text())
    env = {"REPOSITORY_URL": "https://github.com/someone/fork", "BRANCH": "main", "JUPYTERHUB_URL": "https://hub.test",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, check=True)
    conf = yaml.safe_load(config.read_text())
    assert conf["repository"]["url"] == "https://github.com/someone/fork"
    assert conf["launch_buttons"]["jupyterhub_url"] == "https://hub.test"
    links = book.launch_links(config_file=config)
    assert "mybinder.org/v2/gh/someone/fork/main?urlpath=lab/tree/notebooks/walkthrough.ipynb" in links
    assert "colab.research.google.com/github/someone/fork/blob/main/notebooks/walkthrough.ipynb" in links
    assert "[JupyterHub](https://hub.test/hub/user-redirect/git-pull?" in links


def test_config_has_the_buttons_and_one_repository_url():
    conf = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert conf["repository"]["url"].startswith("https://")
    assert conf["html"]["use_repository_button"] and conf["html"]["use_issues_button"]
    assert conf["launch_buttons"]["binderhub_url"] and conf["launch_buttons"]["colab_url"]
    assert "jupyterhub_url" in conf["launch_buttons"]
    url = conf["repository"]["url"]  # no other file names it: the workflow derives it from the forge
    assert url not in WORKFLOW.read_text() and url not in (ROOT / "README.md").read_text()


def test_book_builds_fail_on_warnings(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, "", "")

    gen = book.generated(tmp_path)
    gen.mkdir(parents=True)
    for name in ("results.ipynb", "data_summary.md", "evaluation.md", "performance.md", "walkthrough.md"):
        (gen / name).write_text("{}" if name.endswith("ipynb") else "# x\n")
    (gen / "results.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    book.build_book(tmp_path)
    assert seen["cmd"][1:3] == ["build", str(tmp_path)] and "-W" in seen["cmd"] and "--keep-going" in seen["cmd"]
    assert re.search(r"^book:.*\n\t\$\(BIN\)/wbc book$", (ROOT / "Makefile").read_text(), re.M)


def executed_like_papermill(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    home = str(Path.home())
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Run"),
        nbformat.v4.new_code_cell('run_dir = None', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f'run_dir = "{book.ROOT}/runs/wbc1-s0"\ndata_root = "/data/course"',
                                  metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("display(table)", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_code_cell("train.fit(config)"),
    ]
    nb.cells[4].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"data: synthetic stand-in at {home}/.cache/wbc-study/x\n"
                               f"init: loaded from {book.ROOT}/runs/prcc-s0\nroot {book.ROOT}\n"
                               "course data in /data/course/WBC_1\n"),
        nbformat.v4.new_output("display_data", data={"text/markdown": f"Run directory: `{book.ROOT}/runs/a`",
                                                     "image/png": "iVBORw0KGgo="}),
    ]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    return path


def test_pages_drop_parameters_fold_code_and_carry_no_machine_path(tmp_path):
    out = tmp_path / "page.ipynb"
    shown = book.path_replacements(named={"/data/course": "<data-root>"})
    book.tidy_for_book(executed_like_papermill(tmp_path), out, "wbc1-s0", "WBC_1, seed 0", shown)
    nb = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2]  # both parameter cells
    assert tags[3] == ["remove-input"] and tags[4] == ["hide-input"]
    text = out.read_text()
    assert str(book.ROOT) not in text and str(Path.home()) + "/" not in text and "/data/course" not in text
    stream = nb.cells[4].outputs[0]["text"]
    assert "at ~/.cache/wbc-study/x" in stream and "loaded from runs/prcc-s0" in stream and "root .\n" in stream
    assert "<data-root>/WBC_1" in stream
    assert nb.cells[4].outputs[1]["data"]["text/markdown"] == "Run directory: `runs/a`"
    assert nb.cells[0].source.startswith("# wbc1-s0")
    book.tidy_for_book(out, tmp_path / "again.ipynb", replacements=shown)  # idempotent
    assert nbformat.read(tmp_path / "again.ipynb", as_version=4).cells[4].metadata["tags"] == ["hide-input"]


def test_the_walkthrough_is_a_page_with_parameters_and_no_library_code():
    toc = (ROOT / "_toc.yml").read_text()
    assert "book/generated/walkthrough" in toc
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and re.search(r"^steps = \d+", params[0].source, re.M)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class) ", code, re.M)  # helpers live in wbclib.study.walkthrough
    assert "Exercises" in "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("name", ["analysis.ipynb", "train.ipynb", "evaluation.ipynb", "walkthrough.ipynb"])
def test_notebooks_have_no_library_code(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class) ", code, re.M)
