# The two commands a newcomer needs: `make up` (run the service locally) and `make test` (every check).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Local runs and CI use torch's CPU build, pinned in requirements/dev.txt; its home is the PyTorch CPU index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CPU := $(shell grep -m1 '^torch==' requirements/dev.txt)

.PHONY: install lock up demo test lint typecheck scan scan-template scan-deps unit clean sam-build

install: $(STAMP)

# Everything comes from the lock (--no-deps: nothing unlocked sneaks in; pip check proves it is complete).
# torch first and offline when a wheel of it lies in pip's find-links: a machine that cannot reach the CPU
# index (CI) then never waits on it; elsewhere the CPU index serves it (PyPI's Linux torch is the CUDA build).
# The client (client/, a distribution of its own) needs only locked packages and is built by the lock's
# setuptools (--no-build-isolation), so its step needs no index.
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps --no-index '$(TORCH_CPU)' 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps --retries 1 --timeout 30 --index-url $(TORCH_CPU_INDEX) '$(TORCH_CPU)'
	$(PY) -m pip install -q --no-deps -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps --no-build-isolation -e ./client
	$(PY) -m pip check
	touch $(STAMP)

# Refresh the locks from pyproject.toml's ranges (keeps current pins; `make lock UPGRADE=1` takes the newest).
# Resolved against PyPI only, whatever pip's local configuration says, plus one local folder holding the CPU torch
# wheel (fetched like `install` does): pip would query a CPU index or find-links URL once per package, and an
# unreachable one costs about 8 s of retries each. dev (the superset) is resolved first and its versions
# constrain the other two, so a package has one version in all three locks.
TORCH_CPU_PIN := $(shell grep -m1 '^torch==' requirements/dev.in)
LOCK_WHEELS := build/lock-wheels
LOCK_FLAGS = --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade)
PIP_COMPILE = env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null $(VENV)/bin/pip-compile $(LOCK_FLAGS)
lock: install
	rm -rf $(LOCK_WHEELS) && mkdir -p $(LOCK_WHEELS)
	$(PY) -m pip download -q --no-deps --no-index -d $(LOCK_WHEELS) '$(TORCH_CPU_PIN)' 2>/dev/null \
	  || $(PY) -m pip download -q --no-deps --retries 1 --timeout 30 --index-url $(TORCH_CPU_INDEX) \
	       -d $(LOCK_WHEELS) '$(TORCH_CPU_PIN)'
	$(PIP_COMPILE) --find-links $(LOCK_WHEELS) --extra dev -o requirements/dev.txt pyproject.toml requirements/dev.in
	sed -i '/^sdq @ /,+1d' requirements/dev.txt  # dev's "sdq[worker,local]": a path on this machine, not a pin
	grep -v '^torch==' requirements/dev.txt > $(LOCK_WHEELS)/dev-pins.txt
	$(PIP_COMPILE) -c $(LOCK_WHEELS)/dev-pins.txt -o requirements/lambda.txt pyproject.toml
	$(PIP_COMPILE) -c $(LOCK_WHEELS)/dev-pins.txt --extra worker -o requirements/worker.txt \
	  pyproject.toml requirements/worker.in
	# The scanners' own lock: not constrained by dev's pins (checkov needs an older boto3 than the project's).
	$(PIP_COMPILE) -o requirements/scan.txt requirements/scan.in

# `make up PORT=8100`: the API on another port (the local cloud on the next one).
up: install
	$(VENV)/bin/sdq up $(if $(PORT),--port $(PORT))

demo: install
	$(VENV)/bin/sdq demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy shared handlers workflows localcloud cli benchmarks client/sdq_client

# The security scans (docs/security.md), each failing on any finding not fixed or suppressed with a reason:
# checkov over template.yaml (suppressions: `Metadata: checkov: skip:` on the resource, each with a comment) and
# pip-audit over every lock file (PyPI's vulnerability data; a pin PyPI has no data for is reported, not failed).
# The scanners live in a venv of their own, from their own lock (requirements/scan.txt, written by `make lock`).
SCAN_VENV ?= build/scan-venv
SCAN_STAMP := $(SCAN_VENV)/.installed
$(SCAN_STAMP): requirements/scan.txt
	rm -rf $(SCAN_VENV) && python3 -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install -q --no-deps -r requirements/scan.txt
	$(SCAN_VENV)/bin/python -m pip check
	touch $(SCAN_STAMP)

scan: scan-template scan-deps

scan-template: $(SCAN_STAMP)
	$(SCAN_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --quiet --compact

# One run per lock: the locks pin some packages differently (scan.txt's boto3), which one run refuses.
scan-deps: $(SCAN_STAMP)
	set -e; for lock in requirements/*.txt; do echo "pip-audit $$lock"; \
	  $(SCAN_VENV)/bin/pip-audit --disable-pip --no-deps --progress-spinner off --requirement $$lock; done

# The suite on every core: one pytest worker per core, each file on one worker (its local stack fixtures are
# per module). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: lint typecheck scan
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --durations=20

clean:
	rm -rf $(VENV) $(SCAN_VENV) .mypy_cache .ruff_cache .pytest_cache .sdq

# The Lambda bundle. `sam build` runs build-<LogicalId> for each function (template.yaml: BuildMethod makefile;
# samconfig.toml: build in source, so SAM never copies .venv to a scratch folder). A bundle holds the Lambda code
# only: shared/, handlers/, workflows/ without generation/ (the GPU worker's), playground/ (the API serves it),
# plus requirements/lambda.txt installed as wheels for the Lambda runtime (python3.12, x86_64, glibc 2.34).
LAMBDA_PYTHON ?= 3.12
LAMBDA_PLATFORMS ?= manylinux2014_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64
LAMBDA_PIP ?= python3 -m pip
build-%Function:
	test -n "$(ARTIFACTS_DIR)"
	$(LAMBDA_PIP) install -q --disable-pip-version-check --no-compile --no-deps --only-binary=:all: \
	  --implementation cp --python-version $(LAMBDA_PYTHON) $(addprefix --platform ,$(LAMBDA_PLATFORMS)) \
	  --target "$(ARTIFACTS_DIR)" -r requirements/lambda.txt
	cp -R shared handlers workflows playground "$(ARTIFACTS_DIR)/"
	rm -rf "$(ARTIFACTS_DIR)/workflows/generation" "$(ARTIFACTS_DIR)/handlers/worker.py"
	find "$(ARTIFACTS_DIR)/shared" "$(ARTIFACTS_DIR)/handlers" "$(ARTIFACTS_DIR)/workflows" \
	  -name __pycache__ -prune -exec rm -rf {} +

# Kept for muscle memory: plain `sam build` does the same.
sam-build:
	sam build
