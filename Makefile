# The two commands a newcomer needs: `make up` (run the service locally) and `make test` (every check).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install up demo test lint typecheck unit clean sam-build

install: $(STAMP)

# torch is pinned to the CPU build for local runs and CI; the worker image brings a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

up: install
	$(VENV)/bin/sdq up

demo: install
	$(VENV)/bin/sdq demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy shared handlers workflows localcloud cli benchmarks

test: lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .sdq

# `sam build` of the Lambdas from a clean copy of the sources (so .venv, tests and caches never reach a zip).
sam-build:
	rm -rf build/lambda && mkdir -p build/lambda
	cp -r shared handlers workflows playground requirements.txt statemachine.asl.json build/lambda/
	find build/lambda -name __pycache__ -prune -exec rm -rf {} +
	sam build --template-file template.yaml --base-dir build/lambda
