# rtopt-lab: two commands on a fresh machine with only python3.
#   make demo   set up .venv, then run the main job
#   make test   set up .venv, then run the whole test suite
# Set-up is incremental: .venv/.installed is rebuilt only when pyproject.toml changes.
# uv is used when it can be installed into the venv (about ten times faster), else pip.
# Dependencies are compiled to bytecode at install (pip does by default, uv with --compile-bytecode):
# where PYTHONDONTWRITEBYTECODE is set (as on the 2-core test machine) every process otherwise (test
# subprocesses, kernels, MLflow's requirement capture) compiles mlflow, pandas... again: ~4 s CPU each.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: demo test lint format bench clean help setup lab

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@if $(PY) -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1 && $(VENV)/bin/uv --version >/dev/null 2>&1; then \
	  echo "installing with uv"; \
	  $(VENV)/bin/uv pip install --python $(PY) -q --compile-bytecode -e '.[$(EXTRAS)]'; \
	else \
	  echo "uv unavailable: installing with pip"; \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'; \
	fi
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project (skipped when up to date)

demo: $(STAMP)  ## the main job: the whole workbench once (logs, replays, gates, promotion, dashboard)
	$(PY) -m rtopt_lab.cli demo

lab: $(STAMP)  ## JupyterLab at the project root (notebooks/, runs/, data/) with the project's kernel, on 127.0.0.1
	$(PY) -m rtopt_lab.workbench.kernel
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

test: $(STAMP)  ## the whole test suite, slow tests included
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff over the package, tests and benchmarks
	$(VENV)/bin/ruff check rtopt_lab tests benchmarks

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix rtopt_lab tests benchmarks
	$(VENV)/bin/ruff format rtopt_lab tests benchmarks

bench: $(STAMP)  ## every benchmark, quick mode
	@for b in benchmarks/[a-z]*.py; do m=$$(basename $$b .py); echo "== $$m"; $(PY) -m benchmarks.$$m --quick || exit 1; done

clean:  ## remove the venv, caches, build files and runs/; keeps data/ (data/sample too) and mlflow/
	@case "$(abspath $(VENV))/" in "$(CURDIR)/"?*) ;; \
	  *) echo "make clean: VENV=$(VENV) is not inside $(CURDIR); remove it yourself"; exit 1;; esac
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info runs
	for d in rtopt_lab tests benchmarks; do [ ! -d $$d ] || find $$d -depth -type d -name __pycache__ -exec rm -rf {} +; done
