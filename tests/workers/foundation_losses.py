"""torchrun worker: train a Qwen2 GPTModel a few steps with plain megatron-core at a given TP/PP.

The foundation's acceptance check (runtime + builder, independent of our training loop): initial
weights come from one dist checkpoint written at TP1, so every layout starts from the same numbers.
Usage: torchrun --nproc_per_node N foundation_losses.py HF_DIR CKPT_DIR OUT_JSON TP PP SP DIST_OPT DTYPE
"""

import json
import os
import sys

import torch


def main():
    hf_dir, ckpt, out = sys.argv[1:4]
    tp, pp = int(sys.argv[4]), int(sys.argv[5])
    sp, dist_opt = sys.argv[6] == "1", sys.argv[7] == "1"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[8]]

    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_autoalign.models import build_gpt_model, load_hf_config, pipeline_split
    from megatron_autoalign.models import transformer_config_from_hf
    from megatron_autoalign.runtime import device, init_distributed

    init_distributed(tp, pp)
    cfg = load_hf_config(hf_dir)
    tconfig = transformer_config_from_hf(
        cfg,
        params_dtype=dtype,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sp,
        **pipeline_split(cfg["num_hidden_layers"], pp),
    )
    model = build_gpt_model(cfg, tconfig)
    if torch.cuda.is_available():
        model.cuda()
    if not os.path.exists(os.path.join(ckpt, "metadata.json")):
        os.makedirs(ckpt, exist_ok=True)
        dist_checkpointing.save(model.sharded_state_dict(), ckpt)
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt))

    tconfig.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=dist_opt, grad_reduce_in_fp32=True)
    ddp = DistributedDataParallel(tconfig, ddp_config, model)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=1e-3, use_distributed_optimizer=dist_opt, clip_grad=1.0,
        bf16=dtype == torch.bfloat16, params_dtype=dtype,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp])

    seq, micro, n_micro, steps = 32, 2, 2, 3
    gen = torch.Generator().manual_seed(0)
    batches = iter([torch.randint(0, 1000, (micro, seq + 1), generator=gen) for _ in range(steps * n_micro)])

    def forward_step(data, model):
        batch = next(data).to(device())
        positions = torch.arange(seq, device=batch.device).expand(micro, seq)
        per_token = model(batch[:, :-1], positions, None, labels=batch[:, 1:])

        def loss_func(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach()}

        return per_token, loss_func

    losses = []
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        reports = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=batches, model=[ddp],
            num_microbatches=n_micro, seq_length=seq, micro_batch_size=micro, forward_only=False,
        )
        optimizer.step()
        if ps.is_pipeline_last_stage():
            losses.append(sum(r["loss"].item() for r in reports) / n_micro)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if rank == world - 1:
        with open(out, "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    main()
