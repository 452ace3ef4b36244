import os

import pytest

from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer

CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    """A real Qwen2.5 tokenizer built offline (cached across runs)."""
    return build_qwen2_tokenizer(os.path.join(CACHE, "tokenizer"))
