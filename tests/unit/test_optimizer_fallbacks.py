"""The for-each multi-tensor ops that replace megatron-core's host-synchronising local stand-ins."""

import torch

from megatron_autoalign.runtime.optimizer_fallbacks import (
    foreach_l2_norm,
    foreach_scale,
    use_foreach_multi_tensor_ops,
)


def _tensors():
    torch.manual_seed(0)
    return [torch.randn(7, 3), torch.randn(11), torch.randn(2, 5, 4) * 100, torch.zeros(3)]


def test_l2_norm_is_the_norm_of_all_elements():
    tensors = _tensors()
    flag = torch.zeros(1, dtype=torch.int)
    total, per = foreach_l2_norm(2048, flag, [tensors], True)
    expected = torch.cat([t.flatten().double() for t in tensors]).norm()
    assert total.shape == (1,) and total.dtype == torch.float32
    torch.testing.assert_close(total.double(), expected.reshape(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(per, torch.stack([t.norm() for t in tensors]))
    assert foreach_l2_norm(2048, flag, [tensors], False)[1] is None
    assert foreach_l2_norm(2048, flag, [[]], False)[0].item() == 0.0


def test_scale_in_place_copy_and_cast():
    src = _tensors()
    expected = [t * 0.25 for t in src]
    foreach_scale(2048, None, [src, src], 0.25)  # in place, as gradient clipping calls it
    for got, want in zip(src, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    dst = [torch.empty_like(t, dtype=torch.bfloat16) for t in src]
    foreach_scale(2048, None, [src, dst], 1.0)  # fp32 main params -> bf16 model params
    for got, want in zip(dst, src):
        torch.testing.assert_close(got, want.bfloat16(), rtol=0, atol=0)
    foreach_scale(2048, None, [src, dst], 2.0)
    for got, want in zip(dst, src):
        torch.testing.assert_close(got, (want * 2).bfloat16(), rtol=0, atol=0)


def test_megatron_clipping_uses_them_and_agrees():
    from megatron.core.optimizer import clip_grads

    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    use_foreach_multi_tensor_ops()
    assert clip_grads.l2_norm_impl is foreach_l2_norm  # neither apex nor TE on this machine
    grads = _tensors()
    norm = clip_grads.get_grad_norm_fp32(grads)
    expected = torch.cat([t.flatten().double() for t in grads]).norm().item()
    assert abs(norm - expected) / expected < 1e-6
