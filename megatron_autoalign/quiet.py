"""A quiet start: the warnings megatron-core and torch print on every rank of every run, which are known to
be harmless here, are silenced, and rank 0 says once which optional accelerators are absent instead.

``silence_known_warnings()`` must run before megatron-core is imported (most of these are raised at import
time); the entry points call it first. Warnings not listed here still print.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings

# (category, start of the message): each is printed once per rank per run and changes nothing.
KNOWN_HARMLESS = (
    # apex / Transformer Engine absent: megatron-core falls back to torch (said once by accelerator_line()).
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    (UserWarning, r"Apex is not installed"),
    # megatron-core's own deprecations inside its code paths (not in anything this project passes).
    (UserWarning, r"full scope is deprecated"),
    (FutureWarning, r"`load_state_dict` is deprecated"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    (FutureWarning, r"`torch.distributed.all_gather_into_tensor` is deprecated"),
    # megatron's pipeline schedule reads .grad of received activations; on CPU (gloo) they are non-leaf views.
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed"),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def silence_known_warnings() -> None:
    for category, message in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # The local layer spec's MLP is megatron's own MLP class wrapped in a spec that megatron does not
    # recognise by identity; it then builds it with default arguments, which is what this project wants.
    logging.getLogger("megatron.core.transformer.transformer_layer").addFilter(_DropMessages(("Unknown MLP type",)))


def absent_accelerators() -> list[str]:
    """Optional accelerators that do not import here (found without importing them)."""
    names = {"Transformer Engine": "transformer_engine", "apex": "apex"}
    return [label for label, module in names.items() if importlib.util.find_spec(module) is None]


def accelerator_line() -> str | None:
    absent = absent_accelerators()
    if not absent:
        return None
    return (f"optional accelerators not installed: {', '.join(absent)} (megatron-core uses its torch "
            "implementations; same results, slower on GPU; see README 'Requirements and installation')")
