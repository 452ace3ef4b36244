"""On GPU the chunked linear cross-entropy runs compiled kernels; bf16 must track the fp32 reference."""

import pytest
import torch
import torch.nn.functional as F

from megatron_autoalign.models.linear_cross_entropy import linear_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bf16_loss_and_grads_track_fp32_reference():
    torch.manual_seed(0)
    tokens, hidden_size, vocab = 5000, 256, 151936  # several chunks, the last one partial
    hidden = (torch.randn(tokens, hidden_size, device="cuda") * 0.5).bfloat16().requires_grad_()
    weight = (torch.randn(vocab, hidden_size, device="cuda") * 0.05).bfloat16().requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device="cuda")
    labels[::7] = -100
    losses = linear_cross_entropy(hidden, weight, labels)
    losses.sum().backward()

    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref = F.cross_entropy(h32 @ w32.t(), labels, reduction="none", ignore_index=-100)
    ref.sum().backward()
    assert (losses - ref).abs().max() < 2e-2
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        rel = (got.float() - want).norm() / want.norm()
        assert rel < 1e-2, rel
