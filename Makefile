# Two commands from a fresh clone (Python 3.11 and nothing else):
#   make book   # set up .venv, run the pipeline (PROFILE=toy by default), build the book into _build/html
#   make test   # set up .venv, run the test suite
PROFILE ?= toy
# JOBS: runs executed at once, each with a share of the cores (default 1: on 2 cores it was slower)
JOBS ?=
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup book pipeline build-book test test-fast lab bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	@# bytecode on every core at once (pip compiles one file at a time: 60 s became 24 + 28 s on 2 cores);
	@# a few packages ship template files that are not Python, which compileall reports and skips
	$(PY) -m compileall -q -j 0 $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true
	$(PY) -c "import torch, transformers, trl, datasets, papermill, jupyter_book, lm_eval, mathjax" # fail loudly if the install did
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (zephyr)" >/dev/null
	touch $(STAMP)

pipeline: setup
	$(PY) -m zephyr_lib run --profile $(PROFILE) $(if $(JOBS),--jobs $(JOBS))

build-book: setup
	$(PY) -m zephyr_lib book --profile $(PROFILE)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "book: $(CURDIR)/_build/html/index.html"

book: pipeline build-book

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Speed, side by side with the TRL defaults (writes bench.json; the book's Performance page shows it).
bench: setup
	$(PY) -m zephyr_lib bench --profile $(PROFILE) --repeats 3 --out bench.json

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=. --allow-root notebooks/

clean:
	rm -rf _build book/stages book/generated
