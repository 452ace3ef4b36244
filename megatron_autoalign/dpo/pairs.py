"""Preference records -> (chosen conversation, rejected conversation) sharing one prompt, validated.

Accepted record shapes (KEY is the preprocessing KEY argument, e.g. ``conversations``):
- sharegpt preference: ``{KEY: [prompt turns], "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}``
- OpenAI messages: ``{"messages": [prompt turns], "chosen": {"role": "assistant", "content": ...}, ...}``
- full-conversation pairs: ``{"chosen": [whole conversation], "rejected": [whole conversation]}``; the
  two must agree on every turn but the last (checked; a prompt under KEY, if present, must be their prefix).
A reply may also be a one-message list or a bare string. Every conversation is validated by the SFT
rules (``data.conversations.parse_conversation``): roles, order, non-empty text, ending on the assistant.
"""
from __future__ import annotations

from ..data.conversations import missing_key, parse_conversation

# Reasons added to the SFT set: bad input (counts toward the threshold) / policy drops (do not).
PAIR_INVALID_REASONS = ("prompt_mismatch",)
PAIR_POLICY_REASONS = ("identical_replies",)


def _as_messages(value):
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [value]
    return value  # a list (validated below) or garbage (rejected by parse_conversation)


def _prompt_of(record: dict, key: str):
    for k in (key, "messages", "prompt"):
        if k in record:
            value = record[k]
            return [{"role": "user", "content": value}] if isinstance(value, str) else value
    return None


def parse_pair(record, key: str):
    """-> ((chosen [(role, text)], rejected [(role, text)]), None) or (None, reason)."""
    if not isinstance(record, dict):
        return None, "not_an_object"
    if "chosen" not in record or "rejected" not in record:
        return None, missing_key(record)
    prompt = _prompt_of(record, key)
    if prompt is not None and not isinstance(prompt, list):
        return None, "bad_message"
    convs = []
    for side in ("chosen", "rejected"):
        reply = _as_messages(record[side])
        if not isinstance(reply, list) or not reply:
            return None, "bad_message"
        full = len(reply) > 1  # a whole conversation rather than one reply
        msgs = reply if full or prompt is None else list(prompt) + reply
        conv, reason = parse_conversation({"m": msgs}, "m")
        if reason:
            return None, reason
        if full and prompt:
            head, reason = _parse_prompt(prompt)
            if reason:
                return None, reason
            if conv[:len(head)] != head:
                return None, "prompt_mismatch"
        convs.append(conv)
    chosen, rejected = convs
    if chosen[:-1] != rejected[:-1]:
        return None, "prompt_mismatch"
    if chosen[-1] == rejected[-1]:
        return None, "identical_replies"  # the loss would be a constant: nothing to learn
    return (chosen, rejected), None


def _parse_prompt(prompt: list):
    """Validate prompt turns alone (they end on a user turn, so add a placeholder reply to reuse the rules)."""
    conv, reason = parse_conversation({"m": list(prompt) + [{"role": "assistant", "content": "x"}]}, "m")
    return (conv[:-1], None) if conv else (None, reason)
