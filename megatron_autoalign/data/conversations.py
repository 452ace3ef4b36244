"""Streaming input readers (JSON array or JSONL) and conversation validation.

Record numbers are 1-based: the position in the JSON array, or the line number in a JSONL file.
"""
from __future__ import annotations

import codecs
import hashlib
import itertools
import json
from typing import Iterator

ROLE_ALIASES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Reasons that mean "bad input" (count toward the error threshold); policy drops are listed separately.
INVALID_REASONS = ("malformed_json", "not_an_object", "missing_key", "bad_message", "unknown_role",
                   "empty_text", "non_string_text", "no_assistant_turn", "wrong_order")
POLICY_REASONS = ("too_long", "no_trained_tokens", "template_error")


class DataError(Exception):
    """Fatal input problem: reported as a one-line error, exit code 2."""


class InputReader:
    """Yields (record_number, record_or_None, reason_or_None) and hashes the input bytes as it streams.

    JSONL: one record per line; a malformed line is a skippable record. JSON array: parsed incrementally
    with JSONDecoder.raw_decode over a buffered read (never the whole file in memory); a syntax error
    there cannot be resynchronized, so it is fatal."""

    def __init__(self, path: str, chunk_size: int = 1 << 20, raw: bool = False):
        # raw=True yields each record's JSON text instead of the object: cheaper to ship to workers,
        # which parse it themselves (see `load_record`).
        self.path, self.chunk_size, self.raw = path, chunk_size, raw
        self.sha256 = hashlib.sha256()

    def _chunks(self) -> Iterator[str]:
        dec = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(self.path, "rb") as f:
                while True:
                    raw = f.read(self.chunk_size)
                    self.sha256.update(raw)
                    text = dec.decode(raw, final=not raw)
                    if text:
                        yield text
                    if not raw:
                        return
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}: not valid UTF-8 ({e.reason} at byte {e.start} of a chunk)") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror})") from None

    def __iter__(self):
        chunks = self._chunks()
        first = ""
        for first in chunks:
            if first.strip():
                break
        if first.lstrip().startswith("\ufeff"):
            first = first.lstrip()[1:]
        if first.lstrip().startswith("["):
            yield from self._json_array(first, chunks)
        else:
            yield from self._jsonl(first, chunks)

    def _jsonl(self, buf: str, chunks) -> Iterator:
        lineno, rest = 0, ""
        for chunk in itertools.chain([buf], chunks):
            *lines, rest = (rest + chunk).split("\n")
            for line in lines:
                lineno += 1
                if line.strip():  # blank lines are not records
                    yield self._line(lineno, line)
        if rest.strip():
            yield self._line(lineno + 1, rest)

    def _line(self, lineno: int, line: str):
        if self.raw:
            return lineno, line, None
        try:
            return lineno, json.loads(line), None
        except json.JSONDecodeError:
            return lineno, None, "malformed_json"

    def _json_array(self, buf: str, chunks) -> Iterator:
        decoder = json.JSONDecoder()
        buf = buf.lstrip()[1:]  # drop "["
        pos, recno, need_comma, done = 0, 0, False, False
        while not done:
            # skip whitespace and separators
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) and buf[pos] == "," and need_comma:
                    pos, need_comma = pos + 1, False
                    continue
                break
            if pos >= len(buf):
                more = next(chunks, None)
                if more is None:
                    raise DataError(f"{self.path}: record {recno + 1}: unexpected end of file in JSON array")
                buf, pos = buf[pos:] + more, 0
                continue
            if buf[pos] == "]":
                done = True
                break
            if need_comma:
                raise DataError(f"{self.path}: record {recno + 1}: malformed JSON (expected ',' or ']')")
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # Only a value cut at the end of the buffer can continue in the next chunk; an error
                # earlier is a syntax error, reported without reading the rest of the file.
                cut = e.msg.startswith("Unterminated string") or e.pos >= len(buf) - 64
                more = next(chunks, None) if cut else None
                if more is None:
                    raise DataError(f"{self.path}: record {recno + 1}: malformed JSON ({e.msg})") from None
                buf, pos = buf[pos:] + more, 0
                continue
            # A bare number may be cut at a chunk border ("2." of "2.5"): accept it only when followed by , or ]
            if not isinstance(obj, (dict, list, str)) and buf[end:].lstrip()[:1] not in (",", "]"):
                more = next(chunks, None)
                if more is not None:
                    buf, pos = buf[pos:] + more, 0
                    continue
            recno += 1
            start, pos, need_comma = pos, end, True
            record = buf[start:end] if self.raw else obj
            if pos > self.chunk_size:
                buf, pos = buf[pos:], 0
            yield recno, record, None
        tail = buf[pos + 1:] + "".join(chunks)
        if tail.strip():
            raise DataError(f"{self.path}: trailing data after the JSON array")


def load_record(text: str):
    """(record, None) or (None, "malformed_json") for a raw record from InputReader(raw=True)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        return None, "malformed_json"


def parse_conversation(record, key: str) -> tuple[list[tuple[str, str]] | None, str | None]:
    """record -> ([(role, text)], None) or (None, reason). Accepts sharegpt (`from`/`value` under `key`)
    and OpenAI (`role`/`content` under `messages`)."""
    if not isinstance(record, dict):
        return None, "not_an_object"
    msgs = record.get(key)
    if msgs is None and key != "messages":
        msgs = record.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None, "missing_key"
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            return None, "bad_message"
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        if not isinstance(role, str):
            return None, "bad_message"
        role = ROLE_ALIASES.get(role.lower())
        if role is None:
            return None, "unknown_role"
        if not isinstance(text, str):
            return None, "non_string_text" if text is not None or "value" in m or "content" in m else "bad_message"
        if not text.strip():
            return None, "empty_text"
        out.append((role, text))
    roles = [r for r, _ in out]
    if "assistant" not in roles:
        return None, "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    # After an optional leading system turn: user, assistant, user, assistant, ... ending on assistant.
    if not body or len(body) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)):
        return None, "wrong_order"
    return out, None
