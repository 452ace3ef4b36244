"""Records -> conversations [(role, text)]: the accepted formats, the role rules, and FastChat's trimming.

Formats (detected per record): sharegpt (`from`/`value` turns under KEY, default "conversations"), OpenAI
(`role`/`content` under "messages"), and alpaca (`instruction`, optional `input`, `output`, optional `system`
and `history` = [[instruction, response], ...]; instruction and input are joined with a newline, as
LLaMA-Factory does).

Role rules. After an optional leading system turn, a conversation alternates user, assistant, ... and is
trained on its assistant replies. Real dumps break this (see README, "Data rules"): ShareGPT's split release
cuts long chats into chunks, so about a third start with an assistant turn. By default (FastChat's rule)
such turns are TRIMMED, not skipped:
- leading assistant turns (after the system turn) are dropped: they answer a question that is not there;
- trailing user turns after the last assistant reply are dropped: nothing would be trained on them;
- a turn with empty text ends the conversation there: the exchanges before it are kept, the rest dropped
  (an empty reply would teach the model to answer nothing; an empty question leaves the reply after it
  without context). An empty system turn is dropped.
A record is skipped only when no user -> assistant exchange is left, or when it cannot be read as a
conversation (unknown role, two consecutive turns from one role, ...). ``strict=True`` (--strict-roles;
always for DPO pairs) skips every record that breaks the rules instead of trimming it.
"""
from __future__ import annotations

ROLE_ALIASES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Reasons that mean "bad input" (count toward the error threshold); policy drops are listed separately.
INVALID_REASONS = ("malformed_json", "not_utf8", "not_an_object", "missing_key", "empty_conversation",
                   "bad_message", "unknown_role", "non_string_text", "empty_text", "no_assistant_turn",
                   "starts_with_assistant", "ends_with_user", "wrong_order", "no_exchange")
# truncated_record: the record a cut-off file ends inside, skipped only when asked (--keep-truncated).
POLICY_REASONS = ("too_long", "no_trained_tokens", "template_error", "truncated_record")
# Plain words for reports and errors: "<N%> of records <phrase>".
REASON_WORDS = {
    "malformed_json": "are not valid JSON",
    "not_utf8": "are not valid UTF-8",
    "not_an_object": "are not JSON objects",
    "missing_key": "lack the conversation key",
    "empty_conversation": "have an empty conversation",
    "bad_message": "have a turn that is not a {from, value} or {role, content} object",
    "unknown_role": "use a role other than system, human/user, gpt/assistant",
    "non_string_text": "have a turn whose text is not a string",
    "empty_text": "have a turn with empty text",
    "no_assistant_turn": "have no assistant turn",
    "starts_with_assistant": "start with an assistant turn",
    "ends_with_user": "end with a user turn",
    "wrong_order": "have two consecutive turns from the same role (or a system turn that is not the first)",
    "no_exchange": "have no user turn answered by an assistant turn",
    "truncated_record": "are cut off by the end of the file",
    "too_long": "are longer than --seq-len",
    "no_trained_tokens": "have nothing left to train",
    "template_error": "cannot be rendered by the template",
}
TRIM_KINDS = ("leading_assistant", "trailing_user", "after_empty_text")

Turns = list[tuple[str, str]]


class DataError(Exception):
    """Fatal input problem: reported as a one-line error, exit code 2."""


def detailed(reason: str, detail: str) -> str:
    """A skip reason with a detail the report groups by (e.g. the unknown role's name): "reason:detail"."""
    return f"{reason}:{detail}"


def missing_key(record: dict) -> str:
    """The missing_key reason with the keys the record does have (so a wrong KEY is obvious)."""
    return detailed("missing_key", "keys " + ",".join(sorted(map(str, record))[:8]) if record else "{}")


def read_turns(record, key: str) -> tuple[Turns | None, str | None]:
    """record -> ([(role, text)] with roles normalized, None) or (None, reason). Text may still be empty and
    the order is not checked yet (that is `check_strict` or `trim`)."""
    if not isinstance(record, dict):
        return None, "not_an_object"
    msgs = record.get(key)
    if msgs is None and key != "messages":
        msgs = record.get("messages")
    if msgs is None:
        if "instruction" in record:
            return _alpaca_turns(record)
        return None, missing_key(record)
    if not isinstance(msgs, list):
        return None, "bad_message"
    if not msgs:
        return None, "empty_conversation"
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            return None, "bad_message"
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        if not isinstance(role, str):
            return None, "bad_message"
        norm = ROLE_ALIASES.get(role.lower())
        if norm is None:
            return None, detailed("unknown_role", role[:40])
        if not isinstance(text, str):
            return None, "non_string_text" if text is not None or "value" in m or "content" in m else "bad_message"
        out.append((norm, text))
    return out, None


def _alpaca_turns(record: dict) -> tuple[Turns | None, str | None]:
    fields = {}
    for name, required in (("instruction", True), ("input", False), ("output", True), ("system", False)):
        value = record.get(name)
        if value is None and required:
            return None, detailed("missing_key", f"alpaca record without {name!r}")
        if value is not None and not isinstance(value, str):
            return None, "non_string_text"
        fields[name] = value or ""
    turns = [("system", fields["system"])] if fields["system"] else []
    history = record.get("history") or []
    if not isinstance(history, list):
        return None, "bad_message"
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return None, "bad_message"
        if not all(isinstance(t, str) for t in pair):
            return None, "non_string_text"
        turns += [("user", pair[0]), ("assistant", pair[1])]
    query = fields["instruction"] + ("\n" + fields["input"] if fields["input"] else "")
    return turns + [("user", query), ("assistant", fields["output"])], None


def check_strict(turns: Turns) -> str | None:
    """The reason ``turns`` break the rules (no trimming), or None."""
    if any(not t.strip() for _, t in turns):
        return "empty_text"
    roles = [r for r, _ in turns]
    if "assistant" not in roles:
        return "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    if not body or "system" in body:
        return "wrong_order"
    if body[0] == "assistant":
        return "starts_with_assistant"
    if body[-1] == "user":
        return "ends_with_user"
    if any(a == b for a, b in zip(body, body[1:])):
        return "wrong_order"
    return None


def trim(turns: Turns) -> tuple[Turns | None, str | None, dict]:
    """FastChat's rule and the empty-text cut (module docstring): (kept turns, None, {trim kind: turns
    dropped}) or (None, reason, {})."""
    roles = [r for r, _ in turns]
    if "assistant" not in roles:
        return None, "no_assistant_turn", {}
    system = turns[:1] if roles[0] == "system" else []
    body = turns[len(system):]
    if any(r == "system" for r, _ in body):
        return None, "wrong_order", {}
    dropped = {}
    if system and not system[0][1].strip():
        system, dropped["after_empty_text"] = [], 1
    cut = next((i for i, (_, t) in enumerate(body) if not t.strip()), None)
    if cut is not None:
        dropped["after_empty_text"] = dropped.get("after_empty_text", 0) + len(body) - cut
        body = body[:cut]
    lead = next((i for i, (r, _) in enumerate(body) if r != "assistant"), len(body))
    tail = next((i for i, (r, _) in enumerate(reversed(body)) if r != "user"), len(body))
    if lead + tail >= len(body):
        return None, "empty_text" if cut is not None else "no_exchange", {}
    if lead:
        dropped["leading_assistant"] = lead
    if tail:
        dropped["trailing_user"] = tail
    body = body[lead:len(body) - tail]
    if any(a[0] == b[0] for a, b in zip(body, body[1:])):
        return None, "wrong_order", {}
    return system + body, None, dropped


def conversation(record, key: str, strict: bool = False) -> tuple[Turns | None, str | None, dict]:
    """record -> (turns, None, trims) or (None, reason, {}): the SFT entry point."""
    turns, reason = read_turns(record, key)
    if reason is not None:
        return None, reason, {}
    if strict:
        reason = check_strict(turns)
        return (None, reason, {}) if reason else (turns, None, {})
    return trim(turns)


def parse_conversation(record, key: str) -> tuple[Turns | None, str | None]:
    """record -> (turns, None) or (None, reason) under the strict rules (used for preference pairs)."""
    turns, reason, _ = conversation(record, key, strict=True)
    return turns, reason
