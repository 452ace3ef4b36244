"""On GPU (the fused F.rms_norm kernels): the local spec's RMSNorm against HF's, as in the CPU test."""

import pytest
import torch

from tests.unit.test_norm import check_against_hf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_rms_norm_matches_hf_on_gpu():
    check_against_hf("cuda")
