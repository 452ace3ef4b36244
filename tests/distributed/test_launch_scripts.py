"""The training scripts as a user runs them: several nodes (simulated on this machine: two copies of the script
with NNODES=2 and their own NODE_RANK, a shared OUTPUT_BASEPATH as on a shared filesystem) write one log per
node, node 0's log shows progress, the last node's the full lines; set-up mistakes are one line, exit code 2,
before any worker starts; a node left alone stops at the rendezvous timeout with a clear message."""

import glob
import os
import re
import subprocess
import sys

import pytest

from tests.distributed.launch import free_port
from tests.distributed.sft_common import convert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = os.path.join(ROOT, "scripts_megatron", "train", "qwen2_5", "sft_conv.sh")


@pytest.fixture(scope="module")
def inputs(tiny_4layer_dir, tmp_path_factory):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp = tmp_path_factory.mktemp("launch")
    data = str(tmp / "packed")
    write_synthetic_sft(data, 16, 64, packed=True, seed=3)
    return data, convert(tiny_4layer_dir, str(tmp / "mg"))


def script_env(inputs, out, **extra):
    data, ckpt = inputs
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID")}
    bindir = os.path.dirname(sys.executable)
    env.update(PATH=f"{bindir}:{env['PATH']}", PYTHONPATH=ROOT, OMP_NUM_THREADS="1", DATASET_PATH=data,
               PRETRAIN_CHECKPOINT_PATH=ckpt, OUTPUT_BASEPATH=str(out), MODEL_SIZE="auto", GPUS_PER_NODE="1",
               TP="1", PP="1", BATCH_SIZE="1", GLOBAL_BATCH_SIZE="2", SEQ_LEN="64", TRAIN_ITERS="2",
               SAVE_INTERVAL="2", LR="1e-3", MIN_LR="1e-4")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(env, timeout=300):
    return subprocess.run(["bash", SFT], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_setup_mistakes_are_one_line_before_any_worker(inputs, tmp_path):
    out = tmp_path / "out"
    # Several nodes need the rendezvous address and port, the same on every node.
    r = run_script(script_env(inputs, out, NNODES=2, NODE_RANK=1))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "NNODES=2 needs MASTER_ADDR" in r.stderr and "MASTER_PORT" in r.stderr
    r = run_script(script_env(inputs, out, NNODES=2, NODE_RANK=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500))
    assert r.returncode == 2 and r.stderr.strip() == "error: NODE_RANK=2: expected 0..1 for NNODES=2"
    # A typo among the flags: one line from the flag check, no torchrun, no log. With SLURM_JOB_ID the port
    # is derived (the same on every node of the job).
    r = run_script(script_env(inputs, out, NNODES=2, NODE_RANK=0, MASTER_ADDR="127.0.0.1", SLURM_JOB_ID=4242,
                              EXTRA_ARGS="--wandb-projekt x"))
    assert "MASTER_PORT=24242 (derived from SLURM_JOB_ID 4242" in r.stdout
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("error: unrecognized arguments: --wandb-projekt x "
                                "(all flags: python -m megatron_autoalign.training.train --help)")
    assert "torch.distributed.run" not in r.stdout and not glob.glob(str(out / "log" / "*.log"))


@pytest.mark.timeout(300)
def test_a_node_alone_times_out_at_the_rendezvous_with_a_clear_line(inputs, tmp_path):
    port = free_port()
    r = run_script(script_env(inputs, tmp_path / "out", NNODES=2, NODE_RANK=0, MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=port, RDZV_TIMEOUT=3))
    assert r.returncode != 0
    assert f"node 0 of 2: waiting up to 3s (RDZV_TIMEOUT) for all nodes at 127.0.0.1:{port}" in r.stdout
    assert r.stderr.strip(), r.stdout[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: node 0: the rendezvous at 127.0.0.1:{port} timed out after 3s: not all 2 nodes joined (run the "
        "same command on every node with the same MASTER_ADDR, MASTER_PORT and NNODES and its own NODE_RANK)")


@pytest.mark.timeout(400)
def test_two_nodes_write_one_log_each_and_node0_shows_progress(inputs, tmp_path):
    out, port = tmp_path / "out", free_port()
    nodes = [subprocess.Popen(["bash", SFT], env=script_env(inputs, out, NNODES=2, NODE_RANK=rank,
                                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=380)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    logs = sorted(glob.glob(str(out / "log" / "*.log")))
    assert [re.sub(r".*\.(node\d)\.log$", r"\1", p) for p in logs] == ["node0", "node1"], logs
    node0, node1 = (open(p).read() for p in logs)
    # The last node holds the last pipeline stage: full iteration lines and the summary with the checkpoint.
    full = re.findall(r"^\[[^]]+\] iteration (\d)/2 \| consumed samples: \d+ \| elapsed time per iteration .*"
                      r"\| lm loss: ([0-9.E+-]+) \|", node1, re.M)
    assert [it for it, _ in full] == ["1", "2"], node1[-3000:]
    assert re.search(r"training done: iteration 2/2 \(2 in this run\) \| tokens: [\d,]+ \| wall time .* \| "
                     r"checkpoint: .*/iter_0000002$", node1, re.M)
    # Node 0: a compact progress line per log point (no loss there), and the summary too.
    compact = re.findall(r"^\[[^]]+\] iteration (\d)/2 \| elapsed time per iteration \(ms\): [\d.]+ \| tokens/s: "
                         r"[\d,]+ \| grad norm: [\d.]+ \| ETA [\d:]+ \| \(loss: see the last node's log\)$", node0, re.M)
    assert compact == ["1", "2"], node0[-3000:]
    assert "lm loss" not in node0 and "training done: iteration 2/2" in node0
    # Each node's stdout is its own log (what the user watching that node sees).
    assert outputs[1].count("lm loss:") == 2 and outputs[0].count("loss: see the last node's log") == 2
