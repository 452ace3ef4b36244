"""Session-wide fixtures: tiny random Qwen2 HF checkpoints and the offline Qwen2.5 tokenizer.

Built once per machine into a cache directory (MA_TEST_CACHE), not per test.
"""

import os
import sys

import pytest

CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")


def _cached(name: str) -> str:
    path = os.path.join(CACHE, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def unpatched_process():
    """Every test starts and ends without process groups and without any patch of ``runtime/patches.py``
    (the CPU layer included): a test that needs them sets them up (``init_distributed``, which enables the
    CPU layer on a machine without CUDA, or ``with cpu_compat.enabled():``), so no result depends on which
    test ran before (CI runs the tests in random order)."""
    yield
    if "megatron_autoalign.runtime" in sys.modules:
        from megatron_autoalign.runtime import destroy_distributed, patches

        destroy_distributed()
        patches.restore()


@pytest.fixture(scope="session")
def tiny_tied_dir():
    """Tied embeddings (like 0.5B-3B), GQA 4 heads / 2 KV heads, 2 layers, fp32."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(_cached("tiny_tied"), tied=True, num_layers=2)


@pytest.fixture(scope="session")
def tiny_untied_dir():
    """Untied embeddings (like 7B+), 3 layers: an odd count for uneven pipeline splits."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(_cached("tiny_untied"), tied=False, num_layers=3, seed=1)


@pytest.fixture(scope="session")
def tiny_4layer_dir():
    """Tied, 4 layers, 4 KV heads (TP up to 4): the default model for distributed training tests."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(_cached("tiny_4layer"), tied=True, num_layers=4, num_kv_heads=4, seed=2)


@pytest.fixture(scope="session")
def tiny_qwen3_dir():
    """Qwen3: q/k norms, no qkv bias, head_dim 32 != hidden/heads 16; tied, 4 layers, 2 KV heads (TP2)."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen3

    return make_tiny_qwen3(_cached("tiny_qwen3"), tied=True, num_layers=4, seed=3)


@pytest.fixture(scope="session")
def tiny_qwen3_untied_dir():
    """Qwen3, untied embeddings (like 8B+), 3 layers: an odd count for uneven pipeline splits."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen3

    return make_tiny_qwen3(_cached("tiny_qwen3_untied"), tied=False, num_layers=3, seed=4)
