# steering-explorer: `make run` starts the app on the embedded default model; `make test` runs lint + all tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run run-tiny test test-fast lint format bench precompute-default clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	STEERING_EXPLORER_MODEL=$${STEERING_EXPLORER_MODEL:-default} $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1

run-tiny: install
	STEERING_EXPLORER_MODEL=tiny-random $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration and not browser"

bench: install
	$(PY) bench/run_benchmarks.py

precompute-default: install
	$(PY) -m engine precompute --model default --out assets/directions --name default

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
