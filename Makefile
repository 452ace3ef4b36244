# `make test`: create .venv if missing, install, run the test suite (CPU; GPU tests skip without CUDA).
# `make demo`: the tiny end-to-end pipeline (convert -> preprocess -> SFT -> DPO -> convert back) on CPU.
# Both install through scripts_megatron/env_install.sh, the README's install command (TORCH_BUILD=auto|cpu|cuda|keep
# picks the PyTorch build; an already-installed torch is kept).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Tests run in a random order (modules shuffled, and the tests inside each): no result may depend on which
# test ran before. The seed is printed; `make test TEST_SEED=N` repeats an order.
ifeq ($(TEST_SEED),)
TEST_SEED := $(shell od -An -N2 -tu2 /dev/urandom | tr -d ' ')
endif

.PHONY: install test demo clean

$(VENV)/.installed: setup.py scripts_megatron/env_install.sh
	VENV=$(VENV) EXTRAS=demo,test bash scripts_megatron/env_install.sh

install: $(VENV)/.installed

test: install
	@echo "test order: random, seed $(TEST_SEED) (repeat with: make test TEST_SEED=$(TEST_SEED))"
	$(PY) -m pytest -q tests --random-order-bucket=module --random-order-seed=$(TEST_SEED) $(PYTEST_ARGS)

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash examples/run_demo.sh

clean:
	rm -rf demo_out runs
