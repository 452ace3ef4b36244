#!/usr/bin/env bash
# The upstream README's training layout (sft_conv.sh: TP2 x PP2, Qwen2.5-1.5B shape, SEQ_LEN 8192,
# GLOBAL_BATCH_SIZE 16, bf16) on the GPUs present, against TP1 x PP1 on one GPU from the SAME converted
# random weights and data: first losses must agree within bf16 tolerance.
#   bash bench/upstream_layout.sh OUT_DIR      (needs >= 4 GPUs; 8 gives the upstream DP2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=${1:-$ROOT/gpu_out}
WORK=$ROOT/.bench_out/upstream
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$WORK" "$OUT"
cd "$ROOT"

# Random Qwen2.5-1.5B-shaped HF checkpoint + tokenizer, converted by our convertor; packed synthetic chats.
python3 - "$WORK" <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
import torch
from megatron_autoalign.testing.tiny_models import make_tiny_qwen2
from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer
from bench_model_step import hf_config_for
work = sys.argv[1]
c = hf_config_for("1.5B")
make_tiny_qwen2(os.path.join(work, "hf"), tied=True, num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                intermediate_size=c["intermediate_size"], num_heads=c["num_attention_heads"],
                num_kv_heads=c["num_key_value_heads"], dtype=torch.bfloat16)
build_qwen2_tokenizer(os.path.join(work, "hf"))
PY
[ -f "$WORK/mg/latest_checkpointed_iteration.txt" ] || \
  bash toolkits/model_checkpoints_convertor/qwen/hf2mcore_qwen2.5_convertor.sh 1.5B "$WORK/hf" "$WORK/mg" 2 2 bf16 true false
if [ ! -f "$WORK/data/sft_manifest.json" ]; then
  python3 -c "import sys; sys.path.insert(0,'bench'); from bench_sft import write_conversations; write_conversations('$WORK/chats.jsonl', 1200)"
  bash toolkits/sft_conv_data_preprocessing/run_build_idxmap_sft_conv_dataset.sh \
      "$WORK/chats.jsonl" conversations Qwen2Tokenizer 8192 "$WORK/data/sft" "$WORK/hf" 293 qwen --no-progress
fi

run() {  # name gpus tp pp iters [extra training flags]
  rm -rf "$WORK/out_$1"
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $(($2 - 1))) DATASET_PATH="$WORK/data/sft" PRETRAIN_CHECKPOINT_PATH="$WORK/mg" \
  OUTPUT_BASEPATH="$WORK/out_$1" GPUS_PER_NODE=$2 TP=$3 PP=$4 SP=$([ "$3" -gt 1 ] && echo true || echo false) \
  MODEL_SIZE=1.5B BATCH_SIZE=1 GLOBAL_BATCH_SIZE=16 SEQ_LEN=8192 PAD_LEN=8192 TRAIN_ITERS=$5 SAVE_INTERVAL=100000 \
  LR=1e-5 MIN_LR=1e-6 EXTRA_ARGS="--log-json $OUT/upstream_$1.jsonl --no-shuffle ${6:-}" \
    bash scripts_megatron/train/qwen2_5/sft_conv.sh > "$OUT/upstream_$1.log" 2>&1
  grep "\] iteration " "$OUT/upstream_$1.log" | tail -3
}
rm -f "$OUT"/upstream_*.jsonl
run tp2pp2 "$NGPU" 2 2 ${ITERS:-20}
# Only the first 3 steps, but on the 20-step run's learning-rate schedule, so the updates are the same.
run tp1pp1 1 1 1 3 "--lr-decay-iters ${ITERS:-20}"
python3 - "$OUT" "$NGPU" <<'PY'
import json, sys
load = lambda n: [json.loads(l) for l in open(f"{sys.argv[1]}/upstream_{n}.jsonl") if '"loss"' in l and '"valid' not in l]
a, b = load("tp2pp2"), load("tp1pp1")
for i in range(len(b)):
    print(f"step {i + 1}: TP2xPP2 {a[i]['loss']:.4f}  TP1xPP1 {b[i]['loss']:.4f}  diff {abs(a[i]['loss'] - b[i]['loss']):.4f}")
m = a[2:]
print(json.dumps({"tokens_per_s_per_gpu": sum(r["tokens_per_s"] for r in m) / len(m) / int(sys.argv[2]),
                  "mfu": sum(r.get("mfu", 0) for r in m) / len(m), "peak_memory_gb": max(r.get("peak_memory_gb", 0) for r in m),
                  "first_loss": a[0]["loss"], "last_loss": a[-1]["loss"]}))
PY
