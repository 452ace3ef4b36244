#!/usr/bin/env bash
# The one install path of megatron_autoalign (`make test` and `make demo` call it too).
#
#   bash scripts_megatron/env_install.sh                  # ./.venv (created if missing), then `make demo`, `make test`
#   VENV=/path/to/env bash scripts_megatron/env_install.sh
#   USE_CONDA=1 bash scripts_megatron/env_install.sh      # into the active conda env instead
#   TORCH_BUILD=cpu bash scripts_megatron/env_install.sh  # choose the PyTorch build (see below)
#   INSTALL_TE=1 bash scripts_megatron/env_install.sh     # plus Transformer Engine (optional)
#
# PyTorch build, chosen deliberately and printed (TORCH_BUILD):
#   auto (default): keep a torch that already imports (a build you chose); otherwise `cuda` when nvidia-smi
#                   lists a GPU, else `cpu`.
#   cpu:  torch==${TORCH_VERSION}+cpu (~190 MB wheel) from pip's configured indexes, plus TORCH_CPU_INDEX when
#         set (PyTorch's CPU index: TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu). When no index has
#         it, PyPI's default build is installed after a warning: a CUDA build, ~3 GB of wheels, that runs
#         on CPU as well.
#   cuda: PyPI's default torch==${TORCH_VERSION} (a CUDA build on Linux x86_64).
#   keep: install no torch (one must already import).
# Extras (EXTRAS, comma-separated, default demo,test): demo = the offline Qwen tokenizer builder `make demo`
# needs; test = pytest and W&B for `make test`; also wandb, fast (tiktoken BPE for preprocessing), te.
# Optional accelerators, never required (everything works without them):
#   - Transformer Engine: fused LayerNorm+GEMM, fused RoPE, cuDNN attention with packed (thd) sequences,
#     FP8 (INSTALL_TE=1; needs a CUDA toolkit matching your torch build). Training then picks the TE spec.
#   - apex: fused Adam / fused norms for megatron-core. Build from source against your torch/CUDA
#     (see README "Troubleshooting"); megatron-core falls back to torch implementations without it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_BUILD=${TORCH_BUILD:-auto}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-}
EXTRAS=${EXTRAS:-demo,test}

if [ "${USE_CONDA:-0}" = "1" ]; then
  PY=python
else
  VENV=$(realpath -m "${VENV:-$ROOT/.venv}")   # relative to where you ran the script
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
fi
cd "$ROOT"
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

case $TORCH_BUILD in
  auto)
    if "$PY" -c "import torch" 2>/dev/null; then TORCH_BUILD=keep
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then TORCH_BUILD=cuda
    else TORCH_BUILD=cpu
    fi ;;
  cpu|cuda|keep) ;;
  *) echo "error: TORCH_BUILD=$TORCH_BUILD: expected auto, cpu, cuda or keep" >&2; exit 2 ;;
esac
echo "torch: TORCH_BUILD=$TORCH_BUILD (override with TORCH_BUILD=cpu|cuda|keep)"
case $TORCH_BUILD in
  cpu)
    if ! pip_install ${TORCH_CPU_INDEX:+--extra-index-url "$TORCH_CPU_INDEX"} "torch==${TORCH_VERSION}+cpu"; then
      echo "warning: no CPU build torch==${TORCH_VERSION}+cpu on the configured indexes (set TORCH_CPU_INDEX);" \
           "installing PyPI's default build (CUDA, ~3 GB of wheels, runs on CPU too)" >&2
      pip_install "torch==${TORCH_VERSION}"
    fi ;;
  cuda) pip_install "torch==${TORCH_VERSION}" ;;
  keep) "$PY" -c "import torch" || { echo "error: TORCH_BUILD=keep but torch does not import" >&2; exit 2; } ;;
esac

# setup.py never upgrades the torch installed above (torch>=2.6).
pip_install -e "$ROOT${EXTRAS:+[$EXTRAS]}"

if [ "${INSTALL_TE:-0}" = "1" ]; then
  pip_install --no-build-isolation "transformer-engine[pytorch]" || \
    echo "warning: Transformer Engine did not install; training uses the local spec (slower, same results)"
fi

"$PY" - <<'PY'
import megatron_autoalign  # first: it silences megatron-core's known-harmless import warnings
import torch, megatron.core
from megatron_autoalign.quiet import accelerator_line
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"torch {torch.__version__} ({build} build), CUDA available: {torch.cuda.is_available()}, "
      f"megatron-core {megatron.core.__version__}")
print(accelerator_line() or "optional accelerators: Transformer Engine and apex installed (TE spec will be used)")
PY
if [ -n "${VENV:-}" ]; then
  touch "$VENV/.installed"   # `make` reinstalls only when setup.py or this script is newer
  echo "environment ready ($(du -sh "$VENV" | cut -f1)): activate with 'source $VENV/bin/activate'"
else
  echo "environment ready (conda env)"
fi
