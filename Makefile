# `make test`: create .venv if missing, install, run the test suite (CPU; GPU tests skip without CUDA).
# `make demo`: the tiny end-to-end pipeline (convert -> preprocess -> SFT -> DPO -> convert back) on CPU.
VENV ?= .venv
PY := $(VENV)/bin/python
# On a CPU box this is the CPU build; an already-installed torch (any >=2.6) is kept as is.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash examples/run_demo.sh

clean:
	rm -rf demo_out runs
