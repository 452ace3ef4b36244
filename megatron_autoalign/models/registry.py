"""Every model family this toolkit knows, by HF ``model_type``. Adding a family: its folder plus one line here."""

from __future__ import annotations

from . import qwen2, qwen3
from .family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {f.model_type: f for f in (
    qwen2.FAMILY,
    qwen3.FAMILY,
)}
