#!/usr/bin/env bash
# DPO of Qwen2.5 on megatron-core: sft_conv.sh's variable block plus BETA, LOSS_TYPE and REF. Every
# variable can be edited here or overridden from the environment, e.g.
#   `LOSS_TYPE=ipo BETA=0.5 REF=precomputed TP=1 PP=1 GPUS_PER_NODE=2 bash dpo_conv.sh`.
# REF=online: a frozen reference model (same TP/PP) loaded from the starting checkpoint.
# REF=precomputed: a scoring pass first writes per-pair reference log-probs next to the dataset (skipped
# when the manifest already records them for the same checkpoint and precision); training then needs no
# reference model. LOSS_TYPE=simpo is reference-free (REF is ignored).
# Without a GPU it runs on CPU under gloo, and GPUS_PER_NODE then means processes.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
PYTHON=${PYTHON:-python}

# Paths
DATASET_PATH=${DATASET_PATH:-${TOKENIZED_DATA_PATH:-}}           # prefix written by run_build_idxmap_dpo_dataset.sh
PRETRAIN_CHECKPOINT_PATH=${PRETRAIN_CHECKPOINT_PATH:-${MG_MODEL_PATH:-}}  # converted (or SFT-trained) Megatron checkpoint
REF_CHECKPOINT_PATH=${REF_CHECKPOINT_PATH:-}                      # reference model (default: PRETRAIN_CHECKPOINT_PATH)
OUTPUT_BASEPATH=${OUTPUT_BASEPATH:-${OUTPUT_CHECKPOINT_PATH:-./output_dpo}}
VALID_DATASET_PATH=${VALID_DATASET_PATH:-}                        # optional separate validation prefix

# Hardware Configuration
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-}             # NNODES > 1: node 0's address, the same on every node (default localhost)
MASTER_PORT=${MASTER_PORT:-}             # NNODES > 1: required (or SLURM_JOB_ID); one node: a random free port
RDZV_TIMEOUT=${RDZV_TIMEOUT:-600}        # seconds the nodes wait for each other before a clear error

# Training Parameters
MODEL_SIZE=${MODEL_SIZE:-1.5B}
BATCH_SIZE=${BATCH_SIZE:-1}             # pairs (rows of pairs when the data is packed) per micro-batch
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-16}
LR=${LR:-5e-7}
MIN_LR=${MIN_LR:-0}
SEQ_LEN=${SEQ_LEN:-4096}                # per sequence (chosen or rejected); must match the preprocessing
PAD_LEN=${PAD_LEN:-${SEQ_LEN}}
TRAIN_ITERS=${TRAIN_ITERS:-}            # empty: epochs x samples / GLOBAL_BATCH_SIZE
WARMUP_FRACTION=${WARMUP_FRACTION:-0.1}
LR_DECAY_STYLE=${LR_DECAY_STYLE:-cosine}
SAVE_INTERVAL=${SAVE_INTERVAL:-500}
EVAL_INTERVAL=${EVAL_INTERVAL:-}
PRECISION=${PRECISION:-}                # bf16 | fp16 | fp32; empty: bf16 on GPU, fp32 on CPU
DO=${DO:-true}                          # distributed optimizer
RECOMPUTE=${RECOMPUTE:-none}            # none | selective | full
SEED=${SEED:-1234}
EXTRA_ARGS=${EXTRA_ARGS:-}

# DPO
BETA=${BETA:-0.1}
LOSS_TYPE=${LOSS_TYPE:-sigmoid}         # sigmoid | ipo | hinge | rpo | simpo
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0}   # cDPO epsilon (sigmoid, rpo)
RPO_ALPHA=${RPO_ALPHA:-1.0}
SIMPO_GAMMA=${SIMPO_GAMMA:-0.5}
REF=${REF:-online}                      # online | precomputed

# Parallel Configuration
TP=${TP:-2}
PP=${PP:-2}
SP=${SP:-false}
CP=${CP:-1}

# Dataset Configuration
dataset_option=" \
    --data-path ${DATASET_PATH} \
    --split 100,0,0 \
    --dataset mmap  \
    --epochs 1 "

# ---------------------------------------------------------------------------------------------------
if [ -z "${DATASET_PATH}" ] || [ -z "${PRETRAIN_CHECKPOINT_PATH}" ]; then
    echo "error: set DATASET_PATH (preprocessed preference prefix) and PRETRAIN_CHECKPOINT_PATH (Megatron checkpoint)" >&2
    exit 2
fi
if [ ! -d "${PRETRAIN_CHECKPOINT_PATH}" ]; then
    echo "error: PRETRAIN_CHECKPOINT_PATH=${PRETRAIN_CHECKPOINT_PATH}: no such directory (a converted Megatron checkpoint)" >&2
    exit 2
fi
case ${REF} in
    online|precomputed) ;;
    *) echo "error: REF=${REF}: expected online or precomputed" >&2; exit 2 ;;
esac
HAS_GPU=$(${PYTHON} -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ -z "${PRECISION}" ]; then
    if [ "${HAS_GPU}" = "1" ]; then PRECISION=bf16; else PRECISION=fp32; fi
fi
case ${PRECISION} in
    bf16) precision_option="--bf16" ;;
    fp16) precision_option="--fp16" ;;
    fp32) precision_option="" ;;
    *) echo "error: PRECISION=${PRECISION}: expected bf16, fp16 or fp32" >&2; exit 2 ;;
esac
parallel_option="--tensor-model-parallel-size ${TP} --pipeline-model-parallel-size ${PP} --context-parallel-size ${CP}"
[ "${SP}" = "true" ] && parallel_option="${parallel_option} --sequence-parallel"
model_parallel_option="${parallel_option}"   # the scoring pass has no optimizer
[ "${DO}" = "true" ] && parallel_option="${parallel_option} --use-distributed-optimizer"
case ${RECOMPUTE} in
    none|false) recompute_option="" ;;
    selective) recompute_option="--recompute-granularity selective" ;;
    full|true) recompute_option="--recompute-granularity full --recompute-method uniform --recompute-num-layers 1" ;;
    *) echo "error: RECOMPUTE=${RECOMPUTE}: expected none, selective or full" >&2; exit 2 ;;
esac
iters_option="--lr-warmup-fraction ${WARMUP_FRACTION}"
[ -n "${TRAIN_ITERS}" ] && iters_option="${iters_option} --train-iters ${TRAIN_ITERS}"
[ -n "${EVAL_INTERVAL}" ] && iters_option="${iters_option} --eval-interval ${EVAL_INTERVAL}"
[ -n "${VALID_DATASET_PATH}" ] && dataset_option="${dataset_option} --valid-data-path ${VALID_DATASET_PATH}"
ref_option="--reference ${REF}"
[ -n "${REF_CHECKPOINT_PATH}" ] && ref_option="${ref_option} --ref-load ${REF_CHECKPOINT_PATH}"
dpo_option="--loss-type ${LOSS_TYPE} --beta ${BETA} --label-smoothing ${LABEL_SMOOTHING} \
    --rpo-alpha ${RPO_ALPHA} --simpo-gamma ${SIMPO_GAMMA} ${ref_option}"

NAME="dpo-${LOSS_TYPE}-qwen2.5-${MODEL_SIZE}-beta-${BETA}-ref-${REF}-lr-${LR}-bs-${BATCH_SIZE}-gbs-${GLOBAL_BATCH_SIZE}-seqlen-${SEQ_LEN}-pr-${PRECISION}-tp-${TP}-pp-${PP}-cp-${CP}-sp-${SP}"
SAVE_PATH="${OUTPUT_BASEPATH}/checkpoint/${NAME}"
mkdir -p "${SAVE_PATH}" "${OUTPUT_BASEPATH}/tensorboard" "${OUTPUT_BASEPATH}/log"

source "${REPO_ROOT}/scripts_megatron/train/launch_common.sh"
resolve_rendezvous   # sets torchrun_option
[ "${HAS_GPU}" = "1" ] || export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
common_option="${dataset_option} --pretrained-checkpoint ${PRETRAIN_CHECKPOINT_PATH} \
    --micro-batch-size ${BATCH_SIZE} --global-batch-size ${GLOBAL_BATCH_SIZE} \
    --seq-length ${SEQ_LEN} --max-padding-length ${PAD_LEN} ${precision_option} --seed ${SEED}"

# --load SAVE_PATH resumes this run's own latest checkpoint when there is one; otherwise the
# starting checkpoint gives the weights (and the HF config/tokenizer copied next to it).
train_flags="${common_option} \
    --load ${SAVE_PATH} --save ${SAVE_PATH} --save-interval ${SAVE_INTERVAL} \
    --model-size ${MODEL_SIZE} \
    --lr ${LR} --min-lr ${MIN_LR} --lr-decay-style ${LR_DECAY_STYLE} ${iters_option} \
    --weight-decay 0.0 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 \
    ${parallel_option} ${recompute_option} ${dpo_option} \
    --log-interval 1 --tensorboard-dir ${OUTPUT_BASEPATH}/tensorboard/${NAME} \
    ${EXTRA_ARGS}"

eval "check_flags dpo ${train_flags}"   # a bad flag: one line here, before any worker starts

if [ "${REF}" = "precomputed" ] && [ "${LOSS_TYPE}" != "simpo" ]; then
    # Same TP/PP/CP, precision and micro-batch size as training: the same kernels compute the log-probs.
    score_cmd="${PYTHON} -m torch.distributed.run ${torchrun_option} -m megatron_autoalign.dpo.score_reference \
        ${common_option} ${model_parallel_option} ${ref_option} --reuse-existing"
    run_logged "$(node_log "${NAME}.score")" "${score_cmd}"
fi
run_logged "$(node_log "${NAME}")" \
    "${PYTHON} -m torch.distributed.run ${torchrun_option} -m megatron_autoalign.dpo.train ${train_flags}"
