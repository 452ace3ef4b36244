#!/usr/bin/env bash
# Upstream-compatible wrapper over `python -m megatron_autoalign.data.preprocess_sft`.
# Usage: run_build_idxmap_sft_conv_dataset.sh INPUT_JSON KEY TOKENIZER_CLASS SEQ_LEN OUTPUT_PREFIX \
#            HF_MODEL_PATH EXTRA_VOCAB_SIZE TEMPLATE [extra flags for preprocess_sft, e.g. --workers 4 --no-packing]
set -euo pipefail
if [ "$#" -lt 8 ]; then
    echo "usage: $0 INPUT_JSON KEY TOKENIZER_CLASS SEQ_LEN OUTPUT_PREFIX HF_MODEL_PATH EXTRA_VOCAB_SIZE TEMPLATE [flags]" >&2
    exit 2
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m megatron_autoalign.data.preprocess_sft \
    --input "$1" --key "$2" --tokenizer-class "$3" --seq-len "$4" --output-prefix "$5" \
    --hf-model-path "$6" --extra-vocab-size "$7" --template "$8" "${@:9}"
