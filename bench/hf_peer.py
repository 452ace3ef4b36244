"""The HF transformers peer for the SFT throughput bench.

Qwen2ForCausalLM with SDPA attention, fp32 parameters + bf16 autocast, fused AdamW, gradient clipping:
the set-up most users would write by hand. Same shape, sequence length and tokens per step as ours.
"""

from __future__ import annotations

import time

import torch


def run_hf_peer(hf_config: dict, seq_len: int, micro_batch: int, steps: int, warmup: int, seed: int = 0) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from megatron_autoalign.models.flops import peak_tflops, training_flops_per_token

    torch.manual_seed(seed)
    cfg = Qwen2Config(**{k: v for k, v in hf_config.items() if k not in ("architectures", "torch_dtype", "dtype")})
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens = torch.randint(0, 151643, (micro_batch, seq_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens_per_s = steps * micro_batch * seq_len / elapsed
    tflops = tokens_per_s * training_flops_per_token(hf_config, seq_len) / 1e12
    peak = peak_tflops(torch.cuda.get_device_name())
    result = {
        "system": "hf_transformers_sdpa_fp32params_bf16autocast_fusedadamw",
        "tokens_per_s": tokens_per_s,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "mfu_actual": tflops / peak if peak else None,  # it computes what the formula counts: full rows, every token
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "final_loss": float(loss),
    }
    del model, opt
    torch.cuda.empty_cache()
    return result
