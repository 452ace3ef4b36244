# `make test`: create .venv if missing, install, run the test suite (CPU; GPU tests skip without CUDA).
# `make demo`: the tiny end-to-end pipeline (convert -> preprocess -> SFT -> DPO -> convert back) on CPU.
# Both install through scripts_megatron/env_install.sh, the README's install command (TORCH_BUILD=auto|cpu|cuda|keep
# picks the PyTorch build; an already-installed torch is kept).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo clean

$(VENV)/.installed: setup.py scripts_megatron/env_install.sh
	VENV=$(VENV) EXTRAS=demo,test bash scripts_megatron/env_install.sh

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash examples/run_demo.sh

clean:
	rm -rf demo_out runs
