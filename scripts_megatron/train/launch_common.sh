# Sourced by the training scripts (sft_conv.sh, dpo_conv.sh) after their variable blocks: the node set-up
# (rendezvous address, one log per node), the flag check before any worker starts, and the logged launch.
# Uses NNODES NODE_RANK MASTER_ADDR MASTER_PORT RDZV_TIMEOUT GPUS_PER_NODE OUTPUT_BASEPATH PYTHON.

# Several nodes must meet at one address: MASTER_ADDR and MASTER_PORT, the same on every node. A random
# port per node would make them wait for each other forever, so with NNODES > 1 the port is required
# (or derived from SLURM_JOB_ID, which every node of a Slurm job shares).
resolve_rendezvous() {
    RDZV_TIMEOUT=${RDZV_TIMEOUT:-600}
    if ! [ "${NODE_RANK}" -ge 0 ] 2>/dev/null || [ "${NODE_RANK}" -ge "${NNODES}" ]; then
        echo "error: NODE_RANK=${NODE_RANK}: expected 0..$((NNODES - 1)) for NNODES=${NNODES}" >&2
        exit 2
    fi
    if [ "${NNODES}" -gt 1 ]; then
        if [ -z "${MASTER_PORT}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
            MASTER_PORT=$((20000 + SLURM_JOB_ID % 40000))
            echo "MASTER_PORT=${MASTER_PORT} (derived from SLURM_JOB_ID ${SLURM_JOB_ID}, the same on every node)"
        fi
        if [ -z "${MASTER_ADDR}" ] || [ -z "${MASTER_PORT}" ]; then
            echo "error: NNODES=${NNODES} needs MASTER_ADDR (node 0's address) and MASTER_PORT (a free port there)," \
                 "the same on every node, e.g. MASTER_ADDR=node0.cluster MASTER_PORT=29500" >&2
            exit 2
        fi
    else
        MASTER_ADDR=${MASTER_ADDR:-localhost}
        MASTER_PORT=${MASTER_PORT:-$(shuf -n 1 -i 10000-65535)}
    fi
    torchrun_option="--nproc_per_node ${GPUS_PER_NODE} --nnodes ${NNODES} --node_rank ${NODE_RANK} \
    --master_addr ${MASTER_ADDR} --master_port ${MASTER_PORT}"
    [ "${NNODES}" -gt 1 ] && torchrun_option="${torchrun_option} --rdzv_conf timeout=${RDZV_TIMEOUT}"
    return 0
}

# One log file per node (a shared filesystem would interleave the nodes' lines): log/NAME.nodeR.log.
node_log() {
    echo "${OUTPUT_BASEPATH}/log/${1}.node${NODE_RANK}.log"
}

# check_flags TASK FLAGS...: the training flags as the workers will parse them, checked once here.
check_flags() {
    local task=$1
    shift
    ${PYTHON} -m megatron_autoalign.training.check_args --task "${task}" \
        --world-size $((NNODES * GPUS_PER_NODE)) -- "$@" || exit $?
}

# forward_signal SIG TORCHRUN_PID: to the trainer processes, or to torchrun while it has not started them.
forward_signal() {
    echo "${1}: passing it to the trainers and waiting for their checkpoint" >&2
    pkill "-${1}" -P "${2}" -f -- "-m megatron_autoalign[.]" || kill "-${1}" "${2}" 2>/dev/null || true
}

# run_logged LOG COMMAND: print and run COMMAND (a torchrun command line), its output also into LOG, and
# return the trainers' own exit code: 0 = finished, 75 = stopped by a signal after saving a checkpoint
# (run the script again to resume), 2 = bad input. A rendezvous that timed out gets one clear line at the
# end instead of only the launcher's traceback. Stopping (README, "Stopping, resuming, preemption"):
# - SIGTERM, SIGINT, SIGUSR1 and SIGHUP to this script are passed on to the trainers (torchrun's children),
#   and the script waits for them to save and exit. Not to torchrun itself: when the signal went to the
#   whole process group, torchrun got it too and passes it on, and a second one would make torchrun stop
#   waiting for its workers. torchrun passes SIGUSR1 on too (PET_SIGNALS_TO_HANDLE) and kills workers that
#   take longer than PET_SHUTDOWN_TIMEOUT: STOP_TIMEOUT (default 900 s).
# - tee ignores these signals, so a signal to the whole process tree still logs how the run ended; if tee
#   dies anyway, the trainers carry on without it (runtime/pipe_safe.py).
# - torchrun exits 1 whatever code its workers exit with: they write theirs to MA_EXIT_STATUS_FILE.
run_logged() {
    local log=$1 cmd=$2 rc run_dir child tee_pid sig
    echo "${cmd}"
    [ "${NNODES}" -gt 1 ] && echo "node ${NODE_RANK} of ${NNODES}: waiting up to ${RDZV_TIMEOUT}s (RDZV_TIMEOUT) for all nodes at ${MASTER_ADDR}:${MASTER_PORT}"
    run_dir=$(mktemp -d "${TMPDIR:-/tmp}/megatron_autoalign_run.XXXXXX")  # the exit status file and the log pipe
    mkfifo "${run_dir}/out"
    ( trap '' TERM INT USR1 HUP; exec tee "${log}" < "${run_dir}/out" ) &
    tee_pid=$!
    (
        export MA_EXIT_STATUS_FILE="${run_dir}/status"
        export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
        export PET_SHUTDOWN_TIMEOUT=${PET_SHUTDOWN_TIMEOUT:-${STOP_TIMEOUT:-900}}
        eval "exec ${cmd}"
    ) > "${run_dir}/out" 2>&1 &
    child=$!
    for sig in TERM INT USR1 HUP; do
        # shellcheck disable=SC2064  # the child's pid is known now
        trap "forward_signal ${sig} ${child}" "${sig}"
    done
    while true; do
        rc=0
        wait "${child}" || rc=$?
        kill -0 "${child}" 2>/dev/null || break  # still there: a forwarded signal interrupted the wait
    done
    trap - TERM INT USR1 HUP
    wait "${tee_pid}" || true  # the log is complete once tee has read everything
    if [ "${rc}" != "0" ] && [ -s "${run_dir}/status" ]; then
        rc=$(cat "${run_dir}/status")
    fi
    rm -rf "${run_dir}"
    if [ "${rc}" != "0" ] && grep -q -E "DistStoreError: Timed out after|socket has timed out .* trying to connect" "${log}"; then
        echo "error: node ${NODE_RANK}: the rendezvous at ${MASTER_ADDR}:${MASTER_PORT} timed out after" \
             "${RDZV_TIMEOUT}s: not all ${NNODES} nodes joined (run the same command on every node with the same" \
             "MASTER_ADDR, MASTER_PORT and NNODES and its own NODE_RANK)" | tee -a "${log}" >&2
    fi
    return "${rc}"
}
