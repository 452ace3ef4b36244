#!/usr/bin/env bash
# HF <-> Megatron checkpoint conversion for Qwen2.5 and Qwen3 (thin wrapper; any directory, no GPU needed).
#
#   bash hf2mcore_qwen2.5_convertor.sh MODEL_SIZE SRC DST TP PP PRECISION USE_TE MG2HF [ORIGINAL_HF_PATH]
#
#   MODEL_SIZE  Qwen2.5: 0.5B 1.5B 3B 7B 14B 32B 72B    Qwen3: qwen3-0.6B qwen3-1.7B qwen3-4B qwen3-8B
#               qwen3-14B qwen3-32B    or auto. Checked against config.json, whose model_type picks the family
#   PRECISION   bf16 | fp16 | fp32        USE_TE  true | false (legacy names: match training's --transformer-impl)
#   MG2HF       false: HF -> Megatron (torch_dist, tracker 'release')   true: Megatron -> HF
#   ORIGINAL_HF_PATH  MG2HF=true: where config.json and tokenizer files come from
#
# Extra flags of the Python entry point go in CONVERT_EXTRA_ARGS, e.g.
#   CONVERT_EXTRA_ARGS="--ckpt-format torch --verify"   (legacy mp_rank_TT_PPP layout, then logits parity)
# All flags: python -m megatron_autoalign.checkpoint.convert --help
set -euo pipefail

if [ "$#" -lt 8 ] || [ "$#" -gt 9 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

MODEL_SIZE=$1 SRC=$2 DST=$3 TP=$4 PP=$5 PRECISION=$6 USE_TE=$7 MG2HF=$8 ORIGINAL_HF_PATH=${9:-}

args=(--model-size "$MODEL_SIZE" --load-path "$SRC" --save-path "$DST"
      --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
      --precision "$PRECISION" --use-te "$USE_TE")
case "$MG2HF" in
    true) args+=(--mg2hf); [ -n "$ORIGINAL_HF_PATH" ] && args+=(--hf-ckpt-path "$ORIGINAL_HF_PATH") ;;
    false) ;;
    *) echo "error: MG2HF must be true or false, got '$MG2HF'" >&2; exit 2 ;;
esac

# shellcheck disable=SC2086  # CONVERT_EXTRA_ARGS is a list of flags
exec python -m megatron_autoalign.checkpoint.convert "${args[@]}" ${CONVERT_EXTRA_ARGS:-}
