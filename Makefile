# Two commands: `make demo` and `make test`. Both create .venv when missing and install
# everything from scratch. TORCH pins the CPU wheel on this machine; a GPU user overrides it,
# e.g. `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-exact test test-fast lint format bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The real job: the bundled diffusers teacher (assets/teachers/digits-unet) distilled into a
# one-step SiD student (~6 min on 2 cores), exported as a stock diffusers pipeline; the report
# prints the teacher's samplers by NFE beside the student, samples.png shows both.
demo: $(STAMP)
	rm -rf runs/demo-unet
	$(VENV)/bin/scoredistill distill --preset sid-unet --out runs/demo-unet
	@echo "wrote runs/demo-unet/: report.md, samples.png (teacher vs student), pipeline/ (diffusers)"

# the exact-testbed demo of earlier releases: sampler table and a DMD2 student on exact digits
demo-exact: $(STAMP)
	$(VENV)/bin/scoredistill baseline --testbed digits --out runs/demo-digits
	rm -rf runs/demo-distill
	$(VENV)/bin/scoredistill distill --preset dmd2-digits --steps 600 --out runs/demo-distill

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --durations=25

clean:
	rm -rf $(VENV) runs .pytest_cache

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/teacher_baselines.py
	$(VENV)/bin/python benchmarks/trainer_overhead.py --out runs/bench-overhead

test-fast: $(STAMP) lint
	$(VENV)/bin/python -m pytest -q -m "not slow"
