"""The study's log carries the study's own lines: a notebook the study executes starts its kernel on an
encrypted connection, so ipykernel's "running over TCP without encryption" warning never appears, while what
the kernel writes to its stderr still reaches the terminal."""

from __future__ import annotations

import nbformat

from wbclib.study import book


def test_an_executed_notebook_prints_no_encryption_warning_and_keeps_the_kernels_stderr(tmp_path, capfd):
    book.ensure_kernel()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": book.KERNEL, "language": "python",
                                                           "display_name": "Python (wbc-study)"}})
    nb.cells = [nbformat.v4.new_code_cell("import os\nos.write(2, b'straight to the kernel stderr\\n')\n1 + 1")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    capfd.readouterr()
    book.execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {}, tmp_path)
    err = capfd.readouterr().err
    assert "without encryption" not in err, err
    assert "straight to the kernel stderr" in err  # the kernel's stderr is not hidden
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs[0]["data"]["text/plain"] == "2"
