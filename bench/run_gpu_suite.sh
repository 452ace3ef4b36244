#!/usr/bin/env bash
# Everything this project checks on GPUs, in one command (results and logs under OUT, default ./gpu_out).
#   bash bench/run_gpu_suite.sh tests      # GPU test modules (tests/gpu, or PYTEST_ARGS; 2 GPUs used where present)
#   bash bench/run_gpu_suite.sh sft1       # 1.5B seq 8192, 1 GPU: ours vs the HF peer
#   bash bench/run_gpu_suite.sh scaling    # 1.5B seq 8192 data-parallel 2 and 4 GPUs
#   bash bench/run_gpu_suite.sh 7b         # 7B seq 8192 on 4 GPUs (TP2 x DP2, SP, distributed optimizer)
#   bash bench/run_gpu_suite.sh upstream   # the upstream sft_conv.sh layout TP2 x PP2 (x DP) vs TP1 PP1
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")

for what in "$@"; do
  case $what in
    tests) python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-tests/gpu} 2>&1 | tail -15 ;;
    sft1) python3 bench/bench_sft.py --model-size 1.5B --seq-length 8192 --gpus 1 --peer \
            --json "$OUT/sft_1p5b_1gpu.json" > "$OUT/sft_1p5b_1gpu.log" 2>&1; grep -A6 "^1.5B seq" "$OUT/sft_1p5b_1gpu.log"
          # the configuration under 45 GB: SwiGLU output recomputed in the first 14 of 28 layers
          python3 bench/bench_sft.py --model-size 1.5B --seq-length 8192 --gpus 1 --extra="--recompute-swiglu 14" \
            --json "$OUT/sft_1p5b_1gpu_rs14.json" > "$OUT/sft_1p5b_1gpu_rs14.log" 2>&1; grep -A3 "^1.5B seq" "$OUT/sft_1p5b_1gpu_rs14.log" | tail -1 ;;
    scaling) for g in 2 4; do [ "$g" -le "$NGPU" ] || continue
            for extra in "" "--overlap-param-gather"; do
              tag=${extra:+_overlap}
              python3 bench/bench_sft.py --model-size 1.5B --seq-length 8192 --gpus $g --extra="$extra" \
                --json "$OUT/sft_1p5b_${g}gpu$tag.json" > "$OUT/sft_1p5b_${g}gpu$tag.log" 2>&1
              grep -A3 "^1.5B seq" "$OUT/sft_1p5b_${g}gpu$tag.log" | tail -1; done; done ;;
    7b) python3 bench/bench_sft.py --model-size 7B --seq-length 8192 --gpus 4 --tp 2 --steps 5 --warmup 2 \
            --json "$OUT/sft_7b_4gpu.json" > "$OUT/sft_7b_4gpu.log" 2>&1; grep -A4 "^7B seq" "$OUT/sft_7b_4gpu.log" || tail -20 "$OUT/sft_7b_4gpu.log" ;;
    upstream) bash bench/upstream_layout.sh "$OUT" ;;
    *) echo "unknown: $what" >&2 ;;
  esac
done
