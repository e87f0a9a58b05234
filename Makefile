# Two commands for a fresh clone with only python3: `make study` and `make test`.
# Both create .venv when it is missing and install into it once; later runs reuse it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KERNEL := wbc-study
PYTEST_ARGS ?=

.PHONY: study test test-fast lab install install-dev book benchmark slurm-up slurm-down clean

study: $(VENV)/.installed
	$(BIN)/wbc study $(STUDY_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier: every module, without the tests marked slow (those that train more than a few steps or build a
# book); the rule is in pyproject.toml. Under two minutes on two cores.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# JupyterLab on the notebooks, with the project's kernel (the one the study's papermill runs use); it serves the
# whole checkout, so that the notebooks' links to the book's pages (../book/*.md) open. Jupyter refuses
# to start as root (a container, a cloud VM, a CI machine) without --allow-root: as root it is passed for you.
# Extra options go in LAB_ARGS, e.g. `make lab LAB_ARGS="--no-browser --port 8890"`.
ALLOW_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(VENV)/.installed
	$(BIN)/jupyter lab --notebook-dir=. --LabApp.default_url=/lab/tree/notebooks $(ALLOW_ROOT) $(LAB_ARGS)

# Rebuild the book from stored outputs (jupyter-book build -W --keep-going: any warning fails the build).
book: $(VENV)/.installed
	$(BIN)/wbc book

benchmark: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py --profile quick --json benchmarks/results/cpu-quick-epyc.json

# A one-node Slurm with accounting on this machine (Debian, as root): tests/test_cluster.py's chain then runs on
# it instead of skipping. `make slurm-down` stops its daemons.
slurm-up:
	bash .ci/slurm-up.sh

slurm-down:
	bash .ci/slurm-down.sh

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The stamps are newer than pyproject.toml once installed: nothing is reinstalled until it changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (wbc-study)" >/dev/null
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (wbc-study)" >/dev/null
	touch $@ $(VENV)/.installed

clean:
	rm -rf _build book/generated
