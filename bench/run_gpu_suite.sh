#!/usr/bin/env bash
# Everything this project checks on GPUs, in one command (results and logs under OUT, default ./gpu_out).
#   bash bench/run_gpu_suite.sh tests      # GPU test modules (tests/gpu, or PYTEST_ARGS; 2 GPUs used where present)
#   bash bench/run_gpu_suite.sh sft1       # 1.5B seq 8192, 1 GPU: ours vs the HF peer
#   bash bench/run_gpu_suite.sh scaling    # 1.5B seq 8192 data-parallel 2 and 4 GPUs
#   bash bench/run_gpu_suite.sh 7b         # 7B seq 8192 on 4 GPUs (TP2 x DP2, SP, distributed optimizer)
#   bash bench/run_gpu_suite.sh upstream   # the upstream sft_conv.sh layout TP2 x PP2 (x DP) vs TP1 PP1
#   bash bench/run_gpu_suite.sh samework   # component step on the peer's work (unpacked, full causal, every token) vs HF
#   bash bench/run_gpu_suite.sh profile    # the same step once more with kernel and host profiles
#   bash bench/run_gpu_suite.sh dpo        # DPO 1.5B, pairs up to 2x4096: ours (online, precomputed) vs TRL (needs trl)
#   bash bench/run_gpu_suite.sh ckpt       # torch_dist save and resume time of the 1.5B shape with Adam state
#   bash bench/run_gpu_suite.sh summary    # one table over every JSON in OUT (bench/summarize.py)
# REPEAT=N runs each bench configuration (sft1, scaling, 7b, samework, dpo) N times (the step is host-bound: runs
# spread by up to 20%).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")

REPEAT=${REPEAT:-1}

# bench_sft.py NAME ARGS...: one run, JSON and log under OUT (NAME gets the repeat index when REPEAT > 1).
sft() {
  local name=$1; shift
  for r in $(seq 1 "$REPEAT"); do
    local tag=$name; [ "$REPEAT" -gt 1 ] && tag=${name}_r$r
    python3 bench/bench_sft.py "$@" --json "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
    grep -E "^(ours_|hf_|ratio)" "$OUT/$tag.log" || tail -20 "$OUT/$tag.log"
  done
}

# repeat NAME COMMAND...: the command REPEAT times, with --json OUT/NAME[_rN].json, log beside it.
repeat() {
  local name=$1; shift
  for r in $(seq 1 "$REPEAT"); do
    local tag=$name; [ "$REPEAT" -gt 1 ] && tag=${name}_r$r
    "$@" --json "$OUT/$tag.json" > "$OUT/$tag.log" 2>&1
    grep -E "^(ours_|hf_|trl_|ratio)" "$OUT/$tag.log" || tail -20 "$OUT/$tag.log"
  done
}
STEP="python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/bench_model_step.py --model-size 1.5B --seq-length 8192"

for what in "$@"; do
  case $what in
    tests) python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-tests/gpu} 2>&1 | tail -15 ;;
    sft1) sft sft_1p5b_1gpu --model-size 1.5B --seq-length 8192 --gpus 1 --peer
          # the configuration under 45 GB: SwiGLU output recomputed in the first 14 of 28 layers
          sft sft_1p5b_1gpu_rs14 --model-size 1.5B --seq-length 8192 --gpus 1 --extra="--recompute-swiglu 14" ;;
    scaling) for g in 2 4; do [ "$g" -le "$NGPU" ] || continue
            sft sft_1p5b_${g}gpu --model-size 1.5B --seq-length 8192 --gpus $g
            sft sft_1p5b_${g}gpu_overlap --model-size 1.5B --seq-length 8192 --gpus $g --extra=--overlap-param-gather
            # the same with several hardware queues: do the per-bucket all-gathers still hold up compute?
            CUDA_DEVICE_MAX_CONNECTIONS=8 sft sft_1p5b_${g}gpu_overlap_conn8 --model-size 1.5B --seq-length 8192 \
              --gpus $g --extra=--overlap-param-gather --label conn8
          done ;;
    7b) sft sft_7b_4gpu --model-size 7B --seq-length 8192 --gpus 4 --tp 2 --steps 5 --warmup 2 ;;
    upstream) bash bench/upstream_layout.sh "$OUT" ;;
    samework) repeat step_1p5b_samework $STEP --peer ;;
    profile) mkdir -p "$OUT/profile"  # a folder of its own: summary counts only the repeats
             $STEP --peer --profile --host-profile --json "$OUT/profile/step_1p5b.json" > "$OUT/profile/step_1p5b.log" 2>&1
             grep -E "^(ours_|step |host syncs|  )" "$OUT/profile/step_1p5b.log" | head -40 ;;
    # DPO_PACK: our rows hold 2 x DPO_PACK tokens of whole pairs (default 8192: rows of 16384)
    dpo) python3 bench/bench_dpo.py --model-size 1.5B --seq-len 4096 --pack-seq-len "${DPO_PACK:-8192}" --peer \
           --repeat "$REPEAT" --json "$OUT/dpo_1p5b.json" > "$OUT/dpo_1p5b.log" 2>&1
         grep -E "^(ours_|trl_|ratio)" "$OUT/dpo_1p5b.log" || tail -20 "$OUT/dpo_1p5b.log" ;;
    ckpt) python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/bench_checkpoint_save.py \
            --model-size 1.5B --json "$OUT/ckpt_1p5b.json" > "$OUT/ckpt_1p5b.log" 2>&1; tail -8 "$OUT/ckpt_1p5b.log" ;;
    summary) python3 bench/summarize.py "$OUT" | sed '/^\[/,$d' ;;
    *) echo "unknown: $what" >&2 ;;
  esac
done
