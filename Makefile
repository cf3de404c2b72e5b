# monai-llava-med developer commands. Everything installs into .venv (created when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LABEL_VENV ?= .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
DEPLOY_VENV ?= .venv-deploy
DEPLOY_PY := $(DEPLOY_VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install test test-pacs test-label test-deploy test-all fuzz demo bench bench-pacs clean label-venv deploy-venv

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[train,io,dev]"
	touch $@

install: $(VENV)/.installed

# pytest-xdist runs the suite on TEST_WORKERS processes (2: the cores of the reference machine; 0 = serial)
TEST_WORKERS ?= 2
# lint-imports checks the layer contracts of pyproject.toml [tool.importlinter] (docs/architecture.md)
test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not label and not deploy" tests

# PACS node tests against a real Orthanc (tests/pacs, docs/pacs.md). Orthanc 1.10 cannot bind loopback only, so the
# session runs in a private network namespace holding only loopback (root; `apt-get install orthanc orthanc-dicomweb`).
# Under plain `make test` those tests skip (LLAVA_MED_REQUIRE_ORTHANC=1 makes them fail instead, as .ci/run does).
PACS_NETNS := unshare -n bash -c
test-pacs: install
	$(PACS_NETNS) 'ip link set lo up && $(PY) -m pytest -q tests/pacs'

# Long fuzz campaign over the loading entry point (tests/fuzz; make test runs a short one): counts of ok / typed /
# untyped / crash / hang / memory / nonfinite / leak; failing inputs are kept in FUZZ_FAILURES (under .cache/, ignored)
FUZZ_N ?= 5000
FUZZ_SEED ?= 0
FUZZ_SECONDS ?= 3600
FUZZ_FAILURES ?= .cache/fuzz-failures
FUZZ_TIMEOUT ?= 20
FUZZ_MEMORY_MB ?= 1024
fuzz: install
	PYTHONPATH=tests$(if $(PYTHONPATH),:$(PYTHONPATH)) $(PY) -m fuzz --n $(FUZZ_N) --seed $(FUZZ_SEED) \
		--seconds $(FUZZ_SECONDS) --failures $(FUZZ_FAILURES) --timeout $(FUZZ_TIMEOUT) --memory-mb $(FUZZ_MEMORY_MB)

# MONAI Label needs its own venv (numpy<2, pydicom 2.4); recipe verified in ENVIRONMENT notes / docs/monailabel.md
$(LABEL_VENV)/.installed: requirements/label.txt pyproject.toml
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install -q --upgrade pip
	$(LABEL_PY) -m pip install -q torch==2.13.0
	$(LABEL_PY) -m pip install -q -r requirements/label.txt
	$(LABEL_PY) -m pip install -q --no-deps -e .
	$(LABEL_PY) -m pip uninstall -q -y torchvision
	touch $@

label-venv: $(LABEL_VENV)/.installed

test-label: label-venv
	$(LABEL_PY) -m pytest -q -m label tests/label

# MONAI Deploy App SDK 4.0 (holoscan-cu13, cupy, tritonclient; no torch) in its own venv: its tritonclient needs
# protobuf<7 (constraints.txt pins 7.x), and ~540 MiB of GPU runtime stays out of .venv (docs/deploy.md)
$(DEPLOY_VENV)/.installed: requirements/deploy.txt pyproject.toml
	test -x $(DEPLOY_PY) || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_PY) -m pip install -q --upgrade pip
	$(DEPLOY_PY) -m pip install -q torch==2.13.0
	$(DEPLOY_PY) -m pip install -q -r requirements/deploy.txt
	$(DEPLOY_PY) -m pip install -q --no-deps -e .
	touch $@

deploy-venv: $(DEPLOY_VENV)/.installed

test-deploy: deploy-venv
	$(DEPLOY_PY) -m pytest -q -m deploy tests/deploy

test-all: test test-label test-deploy

demo: install
	$(PY) -m monai.bundle run --config_file bundles/llava_med/configs/inference.json --bundle_root bundles/llava_med

bench: install
	$(PY) benchmarks/bench_network.py

bench-pacs: install
	$(PACS_NETNS) 'ip link set lo up && $(PY) benchmarks/bench_pacs.py'

clean:
	rm -rf $(VENV) $(LABEL_VENV) $(DEPLOY_VENV) .cache build *.egg-info
