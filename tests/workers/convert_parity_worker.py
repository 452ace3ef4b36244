"""torchrun worker (TP2·PP2, 4 CPU processes): load converted checkpoints into a live model and compare.

Usage: convert_parity_worker.py OUT_JSON HF_DIR:CKPT_DIR[:LEGACY_SPELLING] ...
For each case: (1) every local tensor equals what ``load_hf_weights_into_model`` puts there;
(2) for a legacy checkpoint written at this TP/PP, this rank's state_dict equals its mp_rank file
(the explicit legacy TP rules agree with megatron's own sharding); (3) logits of a forward-only
pipeline pass match HF's (fp32).
"""

import json
import os
import sys

import torch


def main():
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_autoalign.checkpoint import load_megatron_checkpoint_weights
    from megatron_autoalign.checkpoint.verify import hf_logits, sample_tokens
    from megatron_autoalign.models import build_gpt_model, load_hf_config, pipeline_split, transformer_config_from_hf
    from megatron_autoalign.checkpoint.sharded import load_hf_weights_into_model
    from megatron_autoalign.runtime import init_distributed

    out, cases = sys.argv[1], sys.argv[2:]
    init_distributed(2, 2)
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    results = []
    for case in cases:
        hf_dir, ckpt, *legacy = case.split(":")
        cfg = load_hf_config(hf_dir)
        tc = transformer_config_from_hf(cfg, torch.float32, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                        **pipeline_split(cfg["num_hidden_layers"], 2))
        model, reference = build_gpt_model(cfg, tc), build_gpt_model(cfg, tc)
        fmt = load_megatron_checkpoint_weights([model], ckpt)
        load_hf_weights_into_model(reference, hf_dir)
        got, want = model.state_dict(), reference.state_dict()
        same = all(torch.equal(got[k], v) for k, v in want.items() if torch.is_tensor(v))
        file_matches = None
        if legacy:
            path = os.path.join(ckpt, "release", f"mp_rank_{tp_rank:02d}_{pp_rank:03d}", "model_optim_rng.pt")
            saved = torch.load(path, weights_only=False)["model"]
            file_matches = set(saved) == set(got) and all(
                torch.equal(saved[k], v) for k, v in got.items() if torch.is_tensor(v)
            )
        tokens = sample_tokens(cfg["vocab_size"], batch=2, seq_len=16)
        model.eval()

        def forward_step(data, m):
            ids = tokens
            logits = m(ids, torch.arange(ids.shape[1]).expand_as(ids), None)

            def collect(output, non_loss_data=False):
                return gather_from_tensor_model_parallel_region(output)

            return logits, collect

        with torch.no_grad():
            collected = get_forward_backward_func()(
                forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
                collect_non_loss_data=True,
            )
        max_abs = None
        if ps.is_pipeline_last_stage():
            mg = collected[0].float()
            hf = hf_logits(hf_dir, tokens, torch.float32, "cpu")
            max_abs = (mg - hf).abs().max().item()
        results.append({"case": case, "format": fmt, "weights_equal": same, "file_matches": file_matches, "max_abs": max_abs})
    with open(f"{out}.{torch.distributed.get_rank()}", "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
