"""torchrun worker: several DPO runs (training-loop runs and reference scoring passes) in ONE launch.

Usage: torchrun --nproc_per_node N dpo_runs.py SPEC_JSON
SPEC_JSON: [{"kind": "train" | "score", "argv": [...flags...]}, ...], run in order; the process group is
kept between runs (each run re-initialises megatron's model-parallel groups for its own TP/PP/CP).
Training runs report through their --log-json file.
"""
import json
import sys


def main():
    from megatron_autoalign.dpo.score_reference import score
    from megatron_autoalign.dpo.task import DPOTask
    from megatron_autoalign.runtime import destroy_distributed
    from megatron_autoalign.training.loop import Trainer

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    for run in spec:
        if run["kind"] == "score":
            score(run["argv"])
        else:
            Trainer(DPOTask, run["argv"]).train()
    destroy_distributed()


if __name__ == "__main__":
    main()
