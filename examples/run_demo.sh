#!/usr/bin/env bash
# The tiny end-to-end pipeline on CPU (no GPU, no network): every step of the README, with the README's
# scripts, on a tiny random Qwen2 model, a real Qwen2.5 tokenizer built offline and the data in examples/.
#   convert HF -> Megatron -> preprocess chats -> SFT 30 steps -> preprocess preferences -> DPO
#   -> convert Megatron -> HF -> load with transformers and generate.
# Outputs: demo_out/ (DEMO_OUT to change). Takes a few minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${DEMO_OUT:-$ROOT/demo_out}
rm -rf "$OUT" && mkdir -p "$OUT"
export PYTHONWARNINGS=ignore
step() { printf '\n=== %s ===\n' "$*"; }

step "0. a tiny random Qwen2 model and the Qwen2.5 tokenizer (offline)"
python - "$OUT/hf_base" <<'PY'
import sys
from megatron_autoalign.testing.tiny_models import make_tiny_qwen2
from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer
out = sys.argv[1]
make_tiny_qwen2(out, tied=True, num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
build_qwen2_tokenizer(out)
print("wrote", out)
PY

step "1. HF -> Megatron (torch_dist, TP1 PP2)"
bash toolkits/model_checkpoints_convertor/qwen/hf2mcore_qwen2.5_convertor.sh \
    auto "$OUT/hf_base" "$OUT/mg_base" 1 2 fp32 false false

step "2. chat conversations -> idx/bin"
bash toolkits/sft_conv_data_preprocessing/run_build_idxmap_sft_conv_dataset.sh \
    examples/chat_sft.json conversations Qwen2Tokenizer 512 "$OUT/data/sft" "$OUT/hf_base" 293 qwen

step "3. SFT: 30 steps, 2 CPU processes, pipeline parallel 2"
DATASET_PATH="$OUT/data/sft" PRETRAIN_CHECKPOINT_PATH="$OUT/mg_base" OUTPUT_BASEPATH="$OUT/sft" \
MODEL_SIZE=auto GPUS_PER_NODE=2 TP=1 PP=2 CP=1 BATCH_SIZE=2 GLOBAL_BATCH_SIZE=8 LR=2e-3 MIN_LR=2e-4 \
SEQ_LEN=512 PAD_LEN=512 TRAIN_ITERS=30 SAVE_INTERVAL=30 WARMUP_FRACTION=0.1 \
    bash scripts_megatron/train/qwen2_5/sft_conv.sh > "$OUT/sft.log" 2>&1 || { tail -30 "$OUT/sft.log"; exit 1; }
grep -E "\] iteration |training done" "$OUT/sft.log"
SFT_CKPT=$(ls -d "$OUT"/sft/checkpoint/*/ | head -1)
python - "$OUT/sft/log" <<'PY'
import glob, re, sys
losses = [float(m.group(1)) for f in glob.glob(sys.argv[1] + "/*.log") for m in re.finditer(r"\] iteration \d+/\d+ \|.* lm loss: ([0-9.E+-]+)", open(f).read(), re.M)]
assert len(losses) >= 30, f"SFT did not run 30 steps ({len(losses)} loss lines)"
print(f"SFT loss: first {losses[0]:.3f} -> last {losses[-1]:.3f}")
assert losses[-1] < 0.7 * losses[0], "SFT loss did not fall"
PY

step "4. preference pairs -> idx/bin, then DPO (precomputed reference log-probs)"
bash toolkits/dpo_data_preprocessing/run_build_idxmap_dpo_dataset.sh \
    examples/preference.json conversations Qwen2Tokenizer 256 "$OUT/data/dpo" "$OUT/hf_base" 293 qwen
DATASET_PATH="$OUT/data/dpo" PRETRAIN_CHECKPOINT_PATH="$SFT_CKPT" OUTPUT_BASEPATH="$OUT/dpo" \
MODEL_SIZE=auto GPUS_PER_NODE=2 TP=1 PP=2 CP=1 BATCH_SIZE=4 GLOBAL_BATCH_SIZE=16 LR=1e-3 MIN_LR=1e-4 \
SEQ_LEN=256 PAD_LEN=256 TRAIN_ITERS=20 SAVE_INTERVAL=20 BETA=0.1 LOSS_TYPE=sigmoid REF=precomputed \
VALID_DATASET_PATH="$OUT/data/dpo" EVAL_INTERVAL=10 \
    bash scripts_megatron/train/qwen2_5/dpo_conv.sh > "$OUT/dpo.log" 2>&1 || { tail -30 "$OUT/dpo.log"; exit 1; }
grep -E "\] iteration |^validation|training done" "$OUT/dpo.log"
DPO_CKPT=$(ls -d "$OUT"/dpo/checkpoint/*/ | head -1)
python - "$OUT/dpo.log" <<'PY'
import re, sys
acc = [float(x) for x in re.findall(r"^validation at iteration \d+: .*rewards/accuracy: ([0-9.]+)", open(sys.argv[1]).read(), re.M)]
assert acc, "DPO printed no validation reward accuracy"
print(f"DPO reward accuracy on the preference data: {acc[-1]:.3f}")
assert acc[-1] > 0.9, "DPO reward accuracy did not exceed 0.9"
PY

step "5. Megatron -> HF"
bash toolkits/model_checkpoints_convertor/qwen/hf2mcore_qwen2.5_convertor.sh \
    auto "$DPO_CKPT" "$OUT/hf_final" 1 2 fp32 false true "$OUT/hf_base"

step "6. load with transformers and generate"
python - "$OUT/hf_final" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 tokenize=False, add_generation_prompt=True)
ids = tok(prompt, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=24, do_sample=False)
print("generated:", repr(tok.decode(out[0, ids.shape[1]:])))
PY
echo
echo "demo finished: outputs in $OUT"
