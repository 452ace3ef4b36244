"""megatron_autoalign: align Qwen2.5 models (SFT, DPO) on Megatron-Core."""

__version__ = "0.1.0"
