# Every target sets up .venv itself, so a machine with only Python can run any of them.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MPLBACKEND := Agg

.PHONY: install test export-check nbtest pytest docs index train bench gpu-wheels test-gpu bench-gpu clean

# Python 3.9 cannot install torch 2.13 or nbdev 2's pins (fastcore>=1.12.3): say so before pip fails obscurely.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 10) else f"exp_lib needs Python 3.10 to 3.13 (torch 2.13, nbdev 2.4), but $(PYTHON) is Python {v[0]}.{v[1]}; run make PYTHON=python3.11 (or another 3.10+).")'
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: an unpinned torch resolved by pip would pull a multi-GB CUDA build.
# Everything else in one pip call so the nbdev 2 pins (fastcore<2, execnb<0.2) hold against fastprogress.
$(STAMP): $(BIN)/python setup.py settings.ini
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,docs]"
	$(BIN)/pip install --quiet --no-deps "django-static-mathjax==3.2.2.1"  # MathJax 3's files for the docs site (Django is not needed)
	touch $@

install: $(STAMP)

test: export-check nbtest pytest

export-check: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r exp_lib "$$tmp/before" && \
	$(BIN)/nbdev_export && \
	changed=$$(diff -rq -x __pycache__ "$$tmp/before" exp_lib | sed -e "s|$$tmp/before|exp_lib|g"); \
	rm -rf "$$tmp"; \
	if [ -n "$$changed" ]; then \
	  echo "nbdev_export changed exp_lib/: the notebooks and the package disagree."; \
	  echo "$$changed"; \
	  echo "Edit the notebook, run nbdev_export, and commit notebook and module together."; \
	  exit 1; \
	fi; echo "export check: exp_lib/ matches the notebooks"
	@$(BIN)/python docs/readme_to_index.py --check

# Torch starts a thread per core in every process; two notebooks run at a time, and pytest's kernels and
# subprocesses run side by side: one thread each, or 2 cores oversubscribe (84 s against 8 s for one notebook).
# Each notebook in a process of its own, as Jupyter gives each its own kernel: nbdev_test alone runs several in one
# process, where what one notebook sets (its own classes in `defaults`, a method it patches) would reach the next.
nbtest: $(STAMP)
	@ls nbs/*.ipynb | OMP_NUM_THREADS=1 xargs -P 2 -n 1 $(BIN)/nbdev_test --do_print --timing --path \
	  || { echo "nbtest: a notebook failed (its traceback is above)"; exit 1; }

# The documentation site, offline, into _docs/ (docs/build.py says how); tests/test_docs_site.py checks it, in Chromium where installed.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python docs/build.py

# The landing page: nbs/index.ipynb is written from README.md (export-check fails while they disagree).
index: $(STAMP)
	$(BIN)/python docs/readme_to_index.py

# pytest exits 5 when it collects nothing; that is not a failure while tests/ is empty.
# Two pytest workers, one per core; a file's tests stay on one worker (the kernel test's notebooks run once).
pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rf -n 2 --dist loadfile --durations=8 tests/ || [ $$? -eq 5 ]

train: $(STAMP)
	$(BIN)/exp_lib_train

bench: $(STAMP)
	$(BIN)/python bench/run.py

# The GPU test run, on a machine with a CUDA GPU and no network: every notebook and tests/ with that machine's own Python and torch
# (GPU_PYTHON, default python3), the packages it lacks installed from the wheels in .whl/ (see .ci/test-gpu).
test-gpu:
	GPU_PYTHON=$(GPU_PYTHON) GPU_REHEARSAL=$(GPU_REHEARSAL) .ci/test-gpu

# On a machine that reaches PyPI: the wheels test-gpu needs, for a GPU machine's CPython $(GPU_PY_VERSION) on x86-64 Linux, into .whl/.
GPU_PYTHON ?= python3
GPU_PY_VERSION ?= 3.12
GPU_PLATFORMS := manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64
gpu-wheels:
	rm -rf .whl && $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
	  $(foreach p,$(GPU_PLATFORMS),--platform $(p)) -d .whl -r .ci/gpu-wheels.txt
	@echo "wheels for the GPU test run in .whl/: bring that folder along and run make test-gpu there"

# The GPU rows of the benchmark alone (make bench adds them on a CUDA machine too), with the machine's own Python.
bench-gpu:
	PYTHONPATH=$(CURDIR):$(CURDIR)/.gpu-site $(GPU_PYTHON) bench/run.py --only gpu --reps 5

clean:
	rm -rf $(VENV) build dist *.egg-info .gpu-site
