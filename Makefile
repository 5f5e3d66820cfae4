# Every target sets up .venv itself, so a machine with only Python can run any of them.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MPLBACKEND := Agg

.PHONY: install test export-check nbtest pytest train bench clean

# Python 3.9 cannot install torch 2.13 or nbdev 2's pins (fastcore>=1.12.3): say so before pip fails obscurely.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 10) else f"exp_lib needs Python 3.10 to 3.13 (torch 2.13, nbdev 2.4), but $(PYTHON) is Python {v[0]}.{v[1]}; run make PYTHON=python3.11 (or another 3.10+).")'
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: an unpinned torch resolved by pip would pull a multi-GB CUDA build.
# Everything else in one pip call so the nbdev 2 pins (fastcore<2, execnb<0.2) hold against fastprogress.
$(STAMP): $(BIN)/python setup.py settings.ini
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
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

# Torch starts a thread per core in every process; nbdev_test runs one notebook per core, and pytest's kernels and
# subprocesses run side by side: one thread each, or 2 cores oversubscribe (84 s against 8 s for one notebook).
nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --do_print --timing

# pytest exits 5 when it collects nothing; that is not a failure while tests/ is empty.
# Two pytest workers, one per core; a file's tests stay on one worker (the kernel test's notebooks run once).
pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rf -n 2 --dist loadfile --durations=8 tests/ || [ $$? -eq 5 ]

train: $(STAMP)
	$(BIN)/exp_lib_train

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info
