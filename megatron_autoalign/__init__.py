"""megatron_autoalign: align Qwen2.5 models (SFT, DPO) on Megatron-Core."""

__version__ = "0.1.0"

# Before any entry point imports megatron-core, which warns at import time (quiet.py lists what
# is silenced, each known to be harmless; everything else still prints).
from .quiet import silence_known_warnings as _silence  # noqa: E402

_silence()
