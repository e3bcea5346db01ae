# The two commands a newcomer runs: `make demo` (a small study: PFL vs focal x 3 seeds -> runs/demo/study.html)
# and `make test`.
# Each creates .venv on first use and installs umop with its dev extras, pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/umop demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/loss_speed.py
	$(PY) benchmarks/train_step_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
