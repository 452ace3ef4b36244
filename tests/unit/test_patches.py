"""The patch registry (runtime/patches.py) and the CPU layer switched on and off by choice."""

import pytest
import torch

from megatron_autoalign.runtime import cpu_compat, destroy_distributed, init_distributed, patches

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is for machines without CUDA")


@cpu_only
def test_cpu_layer_is_on_only_inside_its_scope():
    original_current_device = torch.cuda.current_device
    assert not cpu_compat.is_enabled() and patches.applied() == []
    with pytest.raises((RuntimeError, AssertionError)):  # no CUDA and no redirect
        torch.zeros(2, device="cuda")
    with cpu_compat.enabled():
        t = torch.zeros(2, device="cuda")
        assert t.device.type == "cpu" and t.type() == "torch.cuda.FloatTensor"
        assert torch.cuda.current_device() == torch.device("cpu")
        assert patches.applied() == ["torch-function-mode", "cuda-device", "cuda-rng", "gloo-reduce-scatter",
                                     "gloo-barrier"]
    assert not cpu_compat.is_enabled() and patches.applied() == []
    assert torch.cuda.current_device is original_current_device
    assert torch.zeros(2).type() == "torch.FloatTensor"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")


@cpu_only
def test_cpu_layer_lives_as_long_as_the_process_groups():
    import torch.distributed as dist
    from megatron.core.tensor_parallel import mappings

    original = mappings.dist_reduce_scatter_func
    init_distributed(1, 1)
    assert cpu_compat.is_enabled() and mappings.dist_reduce_scatter_func is not original
    destroy_distributed()
    assert not cpu_compat.is_enabled() and not dist.is_initialized()
    assert mappings.dist_reduce_scatter_func is original


def test_fallbacks_are_registered_and_restored():
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads

    from megatron_autoalign.runtime.optimizer_fallbacks import foreach_l2_norm, use_foreach_multi_tensor_ops

    if clip_grads.l2_norm_impl is not utils.local_multi_tensor_l2_norm:
        pytest.skip("apex or Transformer Engine provides the multi-tensor ops")
    assert use_foreach_multi_tensor_ops()
    assert clip_grads.l2_norm_impl is foreach_l2_norm and patches.applied() == ["foreach-multi-tensor-ops"]
    patches.restore()
    assert clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm and patches.applied() == []


def test_every_patch_target_exists_in_this_megatron_core():
    for p in patches.PATCHES:
        for spec in p.targets:
            if p.group == "gpu-fallback" and spec.endswith(":fused_weight_gradient_mlp_cuda"):
                continue  # set only when apex's extension is missing
            if spec.startswith("torch.overrides:"):
                continue
            obj, attribute = patches.target(spec)
            assert hasattr(obj, attribute), f"{p.name}: {spec} is gone"


def test_other_megatron_core_versions_are_refused(monkeypatch):
    monkeypatch.setattr(patches, "_checked", False)
    monkeypatch.setattr(patches, "megatron_core_version", lambda: "0.99.0")
    monkeypatch.delenv("MA_UNTESTED_MEGATRON_CORE", raising=False)
    with pytest.raises(patches.MegatronCoreVersionError) as e:
        patches.replace("gloo-barrier", object(), "x", 1)
    assert "megatron-core 0.99.0 is installed" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("MA_UNTESTED_MEGATRON_CORE", "1")
    patches.check_megatron_core_version()
    with pytest.raises(KeyError, match="unregistered patch"):
        patches.replace("not-a-patch", object(), "x", 1)
