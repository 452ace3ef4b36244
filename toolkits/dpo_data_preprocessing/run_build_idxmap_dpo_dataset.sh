#!/usr/bin/env bash
# Upstream-shaped wrapper over `python -m megatron_autoalign.dpo.preprocess` (same positional arguments
# as the SFT script). Input: preference pairs (sharegpt `conversations` + `chosen`/`rejected`, OpenAI
# `messages` + `chosen`/`rejected`, or whole-conversation `chosen`/`rejected` pairs); JSON array or JSONL.
# Usage: run_build_idxmap_dpo_dataset.sh INPUT_JSON KEY TOKENIZER_CLASS SEQ_LEN OUTPUT_PREFIX \
#            HF_MODEL_PATH EXTRA_VOCAB_SIZE TEMPLATE [extra flags for dpo.preprocess, e.g. --workers 4 --packing]
# SEQ_LEN bounds each sequence (chosen or rejected, prompt included).
set -euo pipefail
if [ "$#" -lt 8 ]; then
    echo "usage: $0 INPUT_JSON KEY TOKENIZER_CLASS SEQ_LEN OUTPUT_PREFIX HF_MODEL_PATH EXTRA_VOCAB_SIZE TEMPLATE [flags]" >&2
    exit 2
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m megatron_autoalign.dpo.preprocess \
    --input "$1" --key "$2" --tokenizer-class "$3" --seq-len "$4" --output-prefix "$5" \
    --hf-model-path "$6" --extra-vocab-size "$7" --template "$8" "${@:9}"
