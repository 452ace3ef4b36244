#!/usr/bin/env bash
# Set up a working environment for megatron_autoalign on a GPU box (or a CPU box for smoke runs).
#
#   bash scripts_megatron/env_install.sh            # uses ./.venv (created if missing)
#   VENV=/path/to/env bash scripts_megatron/env_install.sh
#   USE_CONDA=1 bash scripts_megatron/env_install.sh  # install into the active conda env instead
#
# Required: PyTorch (>= 2.6, with CUDA on GPU boxes), megatron-core 0.16.1, transformers, safetensors.
# Optional accelerators, never required (everything works without them):
#   - Transformer Engine: fused LayerNorm+GEMM, fused RoPE, cuDNN attention with packed (thd) sequences,
#     FP8. Install: INSTALL_TE=1 bash scripts_megatron/env_install.sh  (pip install "transformer-engine[pytorch]";
#     needs a CUDA toolkit matching your torch build). Training then picks the TE spec automatically
#     (--transformer-impl auto).
#   - apex: fused Adam / fused norms for megatron-core. Build from source against your torch/CUDA
#     (see README "Troubleshooting"); megatron-core falls back to torch implementations without it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ "${USE_CONDA:-0}" = "1" ]; then
  PY=python
else
  VENV=${VENV:-$ROOT/.venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
fi

# Keep an existing torch (a CUDA build the user chose); install one only when none is importable.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "torch>=2.6"
fi
"$PY" -m pip install -e "$ROOT"

if [ "${INSTALL_TE:-0}" = "1" ]; then
  "$PY" -m pip install --no-build-isolation "transformer-engine[pytorch]" || \
    echo "warning: Transformer Engine did not install; training uses the local spec (slower, same results)"
fi

"$PY" - <<'PY'
import torch, megatron.core
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, megatron-core {megatron.core.__version__}")
try:
    import transformer_engine  # noqa: F401
    print("Transformer Engine: available (TE spec will be used)")
except Exception:
    print("Transformer Engine: not installed (local spec: torch SDPA / FlexAttention)")
PY
echo "environment ready: activate with 'source ${VENV:-<conda env>}/bin/activate'"
